"""Where the engine's time goes under TCG: the cost of one instruction, found by doubling it.

Each variant of the engine (engine.inc) executes one instruction (or routine) a second time on a scratch
value, so the story is byte-identical to the base engine's and every forward pass does the
same work plus that extra. Booting the variants alternately on the default story and
comparing median rates gives the extra's cost per token, and so its share of the base
engine's time; divided by how often the doubled instruction runs per token (counted from the
model's shape and the story's length), its cost each time. Rates are QEMU's own CPU time per
forward pass (the machine is shared; wall-clock tokens/s are shown beside them).

The variants: exp twice (softmax's calls, or all), a second mulsd and addsd inside exp, the
products' mulss and addss, the whole dot-product loop twice, divmax's fdiv (and an SSE divss
beside it, for comparison), a whole third divmax per attention row (its x87 work per score),
and the element-wise x87 fmuls of rmsnorm and swiglu; "movapd", "movaps" and "fld/fstp"
measure the doublings' own copies. The patches are text replacements that must each match
once (tests/test_cost_probe.py).

    python bench/cost_probe.py               # 3 rounds, writes bench/costs.md
    python bench/cost_probe.py --runs 5
    python bench/cost_probe.py --only 'fdiv,divss' --output /tmp/costs.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bootllama import image
from bootllama.checkpoint import Config, packaged_path, read_legacy_config
from bootllama.errors import BootllamaError
from bootllama.pcs import qemu

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from speedup import GenCpu, cpu_name, loadavg  # noqa: E402  (bench/speedup.py: QEMU's CPU time)

STEP = """    movss xmm1, [esi]
    mulss xmm1, [ebx]
    addss xmm0, xmm1
    add esi, eax
    add ebx, byte 4
"""

# the sites of the element-wise x87 multiplications: rmsnorm's sum of squares and its scaling by
# ss and the weight, swiglu's product with hb2 (fmul, then the x87 copy the doubling works on)
SS = "    fmul st0\n    faddp                       ; ss += x*x\n"
SCALE = "    fmul st1\n    fmul dword [esi+ecx*4-4]\n"
HB2 = "    fmul dword [edi]            ; hb2\n"


def _x87(mul: bool) -> list[tuple[str, str]]:
    """fld st0 / [fmul] / fstp st0 before each element-wise fmul (st(i) operands shift by one)."""
    def twice(op: str) -> str:
        return "    fld st0\n" + (f"    {op}\n" if mul else "") + "    fstp st0\n"
    return [(SS, twice("fmul st0") + SS),
            (SCALE, twice("fmul st2") + "    fmul st1\n" + twice("fmul dword [esi+ecx*4-4]")
             + "    fmul dword [esi+ecx*4-4]\n"),
            (HB2, twice("fmul dword [edi]") + HB2)]


SOFTMAX_EXP = "    call exp                    ; x = expf(x - max)\n"
SWIGLU_EXP = "    call exp                    ; e val\n"
EXP_TWICE = "    push dword [esi]\n    call exp\n    fstp st0\n    pop dword [esi]\n"  # (exp works in place at [esi])
R2 = "    mulsd xmm0, xmm0            ; r2 = r*r\n"
Y = "    addsd xmm0, xmm1            ; y = z*r2 + y\n"

# name -> (what it adds per use, what the per-token count counts (see counts()), [(old, new)] patches)
VARIANTS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "base": ("nothing", "", []),
    "exp (softmax)": ("a second exp per softmax element", "softmax_exp",
                      [(SOFTMAX_EXP, EXP_TWICE + SOFTMAX_EXP)]),
    "exp (all)": ("a second exp per call: softmax and swiglu", "exp",
                  [(SOFTMAX_EXP, EXP_TWICE + SOFTMAX_EXP), (SWIGLU_EXP, EXP_TWICE + SWIGLU_EXP)]),
    "movapd": ("an SSE register copy per exp (the next two rows' own overhead)", "exp",
               [(R2, "    movapd xmm3, xmm0\n" + R2)]),
    "mulsd": ("a second mulsd per exp (r*r into xmm3)", "exp",
              [(R2, "    movapd xmm3, xmm0\n    mulsd xmm3, xmm0\n" + R2)]),
    "addsd": ("a second addsd per exp (z*r2 + y into xmm3)", "exp",
              [(Y, "    movapd xmm3, xmm0\n    addsd xmm3, xmm1\n" + Y)]),
    "products x2": ("every dot product's loop run a second time (result dropped)", "product",
                    [("    loop .col\n    popad\n", "    loop .col\n    popad\n    pushad\n    xorps xmm0, xmm0\n"
                      + ".col2:\n" + STEP + "    loop .col2\n    popad\n")]),
    "addss": ("a second addss per product term", "product",
              [("    addss xmm0, xmm1\n", "    addss xmm2, xmm1\n    addss xmm0, xmm1\n")]),
    # the same product again (w * x into xmm2): squaring the product instead would make some
    # results subnormal, which QEMU computes on a slower path than the engine's own products
    "mulss": ("a second mulss per product term (the same w*x into xmm2)", "product",
              [("    mulss xmm1, [ebx]\n", "    movaps xmm2, xmm1\n    mulss xmm2, [ebx]\n"
                                           "    mulss xmm1, [ebx]\n")]),
    "movaps": ("an SSE register copy per product term (the mulss row's own overhead)", "product",
               [("    mulss xmm1, [ebx]\n", "    movaps xmm2, xmm1\n    mulss xmm1, [ebx]\n")]),
    "fdiv": ("a second x87 division per divmax element", "fdiv",
             [("    fdiv st2\n", "    fld st0\n    fdiv st3\n    fstp st0\n    fdiv st2\n")]),
    "divss": ("an SSE scalar division per divmax element (x / 1e-5 into xmm3), beside the fdiv", "fdiv",
              [("    fdiv st2\n", "    movss xmm3, [esi]\n    divss xmm3, [eps]\n    fdiv st2\n")]),
    "divmax": ("a third divmax per attention row, by 1.0 (exact): its x87 fld, fcomi, fdiv, fstp per score",
               "score", [("    popad\n                                ; fall into divmax: x /= sum\n",
                          "    popad\n    call divmax\n    emms\n    fld1\n")]),
    "fld/fstp": ("an x87 copy and pop per element-wise fmul (the next row's own overhead)", "x87_fmul",
                 _x87(False)),
    "x87 fmul": ("a second x87 fmul per element-wise fmul (rmsnorm, swiglu)", "x87_fmul", _x87(True)),
}


def counts(config: Config, tokens: int) -> dict[str, float]:
    """What each variant's count counts, per forward pass, averaged over positions 0..tokens-1
    (greedy builds: divmax runs on the logits, softmax on each head's scores)."""
    c = config
    hs = c.dim // c.n_heads
    kv_dim = hs * c.n_kv_heads
    att = c.n_layers * c.n_heads * (tokens + 1) / 2  # attention scores per pass: heads x (pos + 1)
    return {
        "softmax_exp": att,
        "score": att,
        "exp": att + c.n_layers * c.hidden_dim,
        "product": c.n_layers * (c.dim * (2 * c.dim + 2 * kv_dim) + 3 * c.dim * c.hidden_dim)
        + c.dim * c.vocab_size + 2 * att * hs,
        "fdiv": c.vocab_size + 2 * att,
        "x87_fmul": 3 * c.dim * (2 * c.n_layers + 1) + c.n_layers * c.hidden_dim,
    }


def variant_source(base: str, patches: list[tuple[str, str]]) -> str:
    src = base
    for old, new in patches:
        if src.count(old) != 1:
            first = old.strip().splitlines()[0]
            raise BootllamaError(f"engine.inc changed: no single {first!r} to patch; update cost_probe.py")
        src = src.replace(old, new)
    return src


def engine_source() -> str:
    """engine.inc's text: the variants patch it."""
    return image.asm_source().with_name("engine.inc").read_text()


def write_variant(dest: Path, base: str, patches: list[tuple[str, str]]) -> Path:
    """sector.asm and sample.inc copied into ``dest`` beside the patched engine.inc; the sector to assemble."""
    dest.mkdir(parents=True, exist_ok=True)
    asm = image.asm_source()
    for name in ("sector.asm", "sample.inc"):
        Path(dest, name).write_text(asm.with_name(name).read_text())
    Path(dest, "engine.inc").write_text(variant_source(base, patches))
    return Path(dest, "sector.asm")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds; each boots every variant once (default 3)")
    ap.add_argument("--only", help="comma-separated variants to run (base is always run); default: all")
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "costs.md", help="the Markdown table")
    args = ap.parse_args(argv)
    if args.runs < 1:
        raise BootllamaError("--runs must be at least 1")
    chosen = list(VARIANTS)
    if args.only:
        chosen = ["base", *(n.strip() for n in args.only.split(",") if n.strip() != "base")]
        unknown = [n for n in chosen if n not in VARIANTS]
        if unknown:
            raise BootllamaError(f"unknown variant {unknown[0]!r}; the variants: {', '.join(VARIANTS)}")
    base_src = engine_source()
    ckpt, tok = packaged_path("stories260K.bin"), packaged_path("tok512.bin")
    load_start = loadavg()
    with tempfile.TemporaryDirectory(prefix="bootllama-costs-") as tmp:
        imgs = {}
        for name in chosen:
            patches = VARIANTS[name][2]
            src = write_variant(Path(tmp, str(len(imgs))), base_src, patches)
            imgs[name] = image.build_image(ckpt, tok, Path(tmp, f"{len(imgs)}.img"),
                                           engine=image.assemble(source=src))
        rates: dict[str, list[float]] = {n: [] for n in chosen}  # wall clock
        cpu_rates: dict[str, list[float]] = {n: [] for n in chosen}  # per QEMU CPU second
        story, tokens = b"", 0  # the base engine's, which boots first in every round
        for r in range(args.runs):
            for name, img in imgs.items():
                gen_cpu = GenCpu()
                res = qemu.boot(img.path, img.layout.memory_mib, img.layout.chunks, accel="tcg", on_bytes=gen_cpu)
                rates[name].append(res.tok_per_s)
                cpu_rates[name].append(gen_cpu.tok_per_s(res.tokens))
                story, tokens = story or res.text, tokens or res.tokens
                if res.text != story:
                    raise BootllamaError(f"variant {name} changed the story in round {r + 1}: "
                                         "the probe is broken")
                print(f"round {r + 1} {name:14} {res.tok_per_s:7.2f} tok/s  {cpu_rates[name][-1]:7.2f} "
                      f"tok per CPU s  (load average {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    load_end = loadavg()
    per_pass = counts(read_legacy_config(ckpt), tokens)
    base_ms = 1000 / statistics.median(cpu_rates["base"])
    wall_ms = 1000 / statistics.median(rates["base"])
    lines = [
        "# Where the time goes (QEMU TCG)",
        "",
        f"Generated by `python bench/cost_probe.py --runs {args.runs}"
        + (f" --only '{args.only}'" if args.only else "") + "` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: the default stories260K story "
        f"(greedy, {len(story)} bytes, {tokens} forward passes, identical in every variant), each variant "
        f"booted once per round, rounds interleaved; medians. {cpu_name()}, {os.cpu_count()} CPUs shared "
        f"with other jobs (load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end), "
        "so times are QEMU's own CPU time (from /proc, between the story's first and last bytes) per "
        f"forward pass; wall clock beside it. Base: {base_ms:.2f} ms of CPU per token ({wall_ms:.2f} ms "
        "wall clock).",
        "",
        "| variant | adds | tok per CPU s (median; runs) | CPU ms per token | extra ms per token "
        "| share of base | per token | ns each | wall tok/s (median) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in chosen:
        what, counted, _ = VARIANTS[name]
        med = statistics.median(cpu_rates[name])
        ms = 1000 / med
        runs = ", ".join(f"{x:.1f}" for x in cpu_rates[name])
        extra = share = n = each = ""
        if name != "base":
            extra, share = f"{ms - base_ms:+.3f}", f"{(ms - base_ms) / base_ms:+.1%}"
            n = f"{per_pass[counted]:,.0f}"
            each = f"{(ms - base_ms) * 1e6 / per_pass[counted]:.1f}"
        lines.append(f"| {name} | {what} | {med:.1f} ({runs}) | {ms:.3f} | {extra} | {share} | {n} | {each} "
                     f"| {statistics.median(rates[name]):.1f} |")
    text = "\n".join(lines) + "\n"
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BootllamaError as e:
        print(f"cost_probe: error: {e}", file=sys.stderr)
        sys.exit(1)
