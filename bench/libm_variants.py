"""Count the float32 inputs on which glibc's FMA build of expf/powf/sinf/cosf differs from its
generic build, and check bootllama.libm (the generic algorithm in NumPy) against the generic
build on the same inputs. Writes bench/libm_variants.md (and prints it).

    PYTHONPATH=src python bench/libm_variants.py            # every float in each domain (~30 min)
    PYTHONPATH=src python bench/libm_variants.py --sample 10000000   # a dense random sample instead

Domains: expf over every float32 in [-104, 89] (the softmax's and SiLU's inputs that give
neither 0 nor infinity); powf(10000, e) and powf(100000, e) for every float32 e in [0, 1)
(RoPE's 1/base^(i/head_size)); sinf and cosf over every float32 in [0, 1024] (RoPE's angles
pos * freq for positions up to 1023).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from bootllama import libm
from bootllama.hostlibm import GENERIC_TUNABLES, HostLibm, every_float

HERE = Path(__file__).resolve().parent
F = np.float32


def same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


Case = tuple[str, str, Callable[[], Iterator[np.ndarray]], int, Callable[[HostLibm, np.ndarray], np.ndarray],
             Callable[[np.ndarray], np.ndarray]]


def sampled(lo: float, hi: float, n: int, seed: int) -> Callable[[], Iterator[np.ndarray]]:
    def gen() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        for start in range(0, n, 1 << 24):
            yield rng.uniform(lo, hi, min(1 << 24, n - start)).astype(F)
    return gen


def count_floats(lo: float, hi: float) -> int:
    """How many floats every_float(lo, hi) yields (lo < 0 <= hi, or 0 <= lo <= hi)."""
    a, b = (int(np.array(v, dtype=F).view(np.uint32)) & 0x7FFFFFFF for v in (lo, hi))
    return a + 1 + b + 1 if lo < 0 else b - a + 1


def cases(sample: int | None) -> list[Case]:
    below_one = float(np.nextafter(F(1), F(0)))
    domains = [
        ("expf", "every float32 in [-104, 89]", -104.0, 89.0,
         lambda h, x: h("expf", x), libm.expf),
        ("powf(10000, e)", "every float32 e in [0, 1)", 0.0, below_one,
         lambda h, x: h("powf", F(10000), x), lambda x: libm.powf(F(10000), x)),
        ("powf(100000, e)", "every float32 e in [0, 1)", 0.0, below_one,
         lambda h, x: h("powf", F(100000), x), lambda x: libm.powf(F(100000), x)),
        ("sinf", "every float32 in [0, 1024]", 0.0, 1024.0, lambda h, x: h("sinf", x), libm.sinf),
        ("cosf", "every float32 in [0, 1024]", 0.0, 1024.0, lambda h, x: h("cosf", x), libm.cosf),
    ]
    out: list[Case] = []
    for i, (name, what, lo, hi, host, port) in enumerate(domains):
        if sample:
            desc = f"{sample:,} uniform random float32 in [{lo:g}, {hi:g}]"
            out.append((name, desc, sampled(lo, hi, sample, i), sample, host, port))
        else:
            out.append((name, what, (lambda lo=lo, hi=hi: every_float(lo, hi)), count_floats(lo, hi), host, port))
    return out


def rope_tables(generic: HostLibm, default: HostLibm) -> tuple[int, int, int]:
    """(values, FMA build != generic, libm.rope_values != generic) over run.c's RoPE values."""
    total = fma = port = 0
    for base in (10000.0, 100000.0):
        for hs in range(2, 129, 2):
            head_dim = np.arange(0, hs, 2).astype(F) / F(hs)
            want: list[np.ndarray] = []
            for host in (generic, default):
                freq = F(1.0) / host("powf", F(base), head_dim)
                val = np.arange(1024).astype(F)[:, None] * freq[None, :]
                want.append(np.stack([host("cosf", val), host("sinf", val)]))
            got = np.stack(libm.rope_values(hs, 1024, base))
            total += got.size
            fma += int((~same(want[0], want[1])).sum())
            port += int((~same(got, want[0])).sum())
    return total, fma, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=int, default=None, help="a random sample of this size per domain")
    ap.add_argument("--no-port", action="store_true", help="only compare glibc's two builds (about 3 minutes)")
    ap.add_argument("--only", default=None, help="run the cases whose name starts with this")
    ap.add_argument("--out", type=Path, default=HERE / "libm_variants.md")
    args = ap.parse_args()

    rows = []
    examples: list[str] = []
    with HostLibm(generic=True) as generic, HostLibm(generic=False) as default:
        if not generic.c_loop:
            print("warning: no gcc, one ctypes call per input: this will take hours", file=sys.stderr)
        for name, what, gen, total, host, port in cases(args.sample):
            if args.only and not name.startswith(args.only):
                continue
            t0 = time.time()
            n = fma_diff = port_diff = 0
            first: list[str] = []
            for x in gen():
                g = host(generic, x)
                d = host(default, x)
                bad = ~same(g, d)
                fma_diff += int(bad.sum())
                for v, gv, dv in zip(x[bad][:3], g[bad][:3], d[bad][:3], strict=True):
                    if len(first) < 3:
                        first.append(f"{name}: x = {float(v).hex()}: generic {float(gv).hex()}, FMA {float(dv).hex()}")
                if not args.no_port:
                    port_diff += int((~same(port(x), g)).sum())
                n += x.size
                print(f"\r{name}: {n:,}/{total:,}  FMA!=generic {fma_diff}  port!=generic {port_diff}",
                      end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
            rows.append((name, what, n, fma_diff, None if args.no_port else port_diff, time.time() - t0))
            examples += first
        rope_total, rope_fma, rope_port = rope_tables(generic, default)

    flags = (f" --sample {args.sample}" if args.sample else "") + (" --no-port" if args.no_port else "")

    glibc = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    lines = [
        "# glibc's FMA and generic float functions, and bootllama.libm",
        "",
        f"Host: {glibc}; {platform.machine()}; CPU with FMA and AVX2, so glibc's default is the FMA build.",
        f"Generic build: a child process started with `GLIBC_TUNABLES={GENERIC_TUNABLES}`.",
        f"Command: `PYTHONPATH=src python bench/libm_variants.py{flags}`",
        "",
        "| function | inputs | count | FMA != generic | bootllama.libm != generic | seconds |",
        "| --- | --- | --: | --: | --: | --: |",
    ]
    for name, what, n, fd, pd, secs in rows:
        share = f"{fd} ({fd / n:.2e})" if n else "0"
        lines.append(f"| {name} | {what} | {n:,} | {share} | {'-' if pd is None else pd} | {secs:.0f} |")
    lines += [
        "",
        "run.c's rotation values themselves (cosf/sinf of pos * 1/powf(base, i/head_size), head sizes 2..128,",
        f"positions 0..1023, bases 10000 and 100000; {rope_total:,} values): the FMA build changes {rope_fma}, "
        f"bootllama.libm.rope_values differs from the generic build in {rope_port}.",
    ]
    lines += ["", "Examples (first inputs found where the builds differ):", ""]
    lines += [f"- {e}" for e in examples] or ["- none"]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
