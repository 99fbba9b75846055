"""Where the engine's time goes under TCG: the cost of one instruction, found by doubling it.

Each variant of sector.asm executes one instruction (or routine) a second time on a scratch
value, so the story is byte-identical to the base engine's and every forward pass does the
same work plus that extra. Booting the variants alternately on the default story and
comparing median tokens/s gives the extra's cost per token, and so its share of the base
engine's time. One variant is not a doubling: the product's inner loop unrolled twice.

All variants (the base included) take the loader line that reads a tail of any length, so a
variant may outgrow the two sectors without changing the base engine's behaviour.

    python bench/cost_probe.py               # 3 rounds, writes bench/costs.md
    python bench/cost_probe.py --runs 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
from pathlib import Path

from bootllama import image
from bootllama.checkpoint import packaged_path
from bootllama.errors import BootllamaError
from bootllama.pcs import qemu

ROOT = Path(__file__).resolve().parents[1]

# the greedy loader assumes one tail sector; every variant gets the general form
LOADER = ("""%ifdef SAMPLING
    add byte [si+8], TAIL       ; LBA 1 + TAIL: the manifest
%else
    inc byte [si+8]             ; LBA 1 + TAIL (TAIL is 1): the manifest
%endif
""", "    add byte [si+8], TAIL\n")

STEP = """    a32 movss xmm1, [esi]
    a32 mulss xmm1, [ebx]
    addss xmm0, xmm1
    add esi, eax
    add ebx, byte 4
"""

# name -> (what it adds per use, [(old, new)] patches)
VARIANTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "base": ("nothing", []),
    "fld/fstp": ("an x87 copy and pop (the doublings' own overhead)",
                 [("    f2xm1\n", "    fld st0\n    fstp st0\n    f2xm1\n")]),
    "f2xm1": ("a second f2xm1 per exp",
              [("    f2xm1\n", "    fld st0\n    f2xm1\n    fstp st0\n    f2xm1\n")]),
    "exp": ("a second exp per softmax element",
            [("    call exp                    ; x = expf(x - max)\n",
              "    fld st0\n    call exp\n    fstp st0\n    call exp\n")]),
    "fdiv": ("a second division per divmax element",
             [("    fdiv st2\n", "    fld st0\n    fdiv st3\n    fstp st0\n    fdiv st2\n")]),
    "addss": ("a second addss per product term",
              [("    addss xmm0, xmm1\n", "    addss xmm2, xmm1\n    addss xmm0, xmm1\n")]),
    "mulss": ("a second mulss per product term",
              [("    addss xmm0, xmm1\n", "    movaps xmm2, xmm1\n    mulss xmm2, xmm1\n"
                                          "    addss xmm0, xmm1\n")]),
    "unroll x2": ("the product's inner loop unrolled twice (not a doubling)",
                  [("    xorps xmm0, xmm0\n.col:\n" + STEP + "    loop .col\n",
                    "    xorps xmm0, xmm0\n    inc cx\n    shr cx, 1\n    jnc .odd\n.col:\n" + STEP
                    + ".odd:\n" + STEP + "    loop .col\n")]),
}


def variant_source(base: str, patches: list[tuple[str, str]]) -> str:
    src = base
    for old, new in [LOADER, *patches]:
        if src.count(old) != 1:
            first = old.strip().splitlines()[0]
            raise BootllamaError(f"sector.asm changed: no single {first!r} to patch; update cost_probe.py")
        src = src.replace(old, new)
    return src


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds; each boots every variant once")
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "costs.md")
    args = ap.parse_args()
    base_src = image.asm_source().read_text()
    ckpt, tok = packaged_path("stories260K.bin"), packaged_path("tok512.bin")
    with tempfile.TemporaryDirectory(prefix="bootllama-costs-") as tmp:
        imgs = {}
        for name, (_, patches) in VARIANTS.items():
            src = Path(tmp, f"{len(imgs)}.asm")
            src.write_text(variant_source(base_src, patches))
            # (greedy builds only: sample.inc, not beside the copy, is not included)
            imgs[name] = image.build_image(ckpt, tok, Path(tmp, f"{len(imgs)}.img"),
                                           engine=image.assemble(source=src))
        rates: dict[str, list[float]] = {n: [] for n in VARIANTS}
        story = b""  # the base engine's, which boots first in every round
        for r in range(args.runs):
            for name, img in imgs.items():
                res = qemu.boot(img.path, img.layout.memory_mib, img.layout.chunks, accel="tcg")
                rates[name].append(res.tok_per_s)
                story = story or res.text
                if res.text != story:
                    raise BootllamaError(f"variant {name} changed the story in round {r + 1}: "
                                         "the probe is broken")
                print(f"round {r + 1} {name:10} {res.tok_per_s:7.2f} tok/s", file=sys.stderr)
    base_ms = 1000 / statistics.median(rates["base"])
    lines = [
        "# Where the time goes (QEMU TCG)",
        "",
        f"Generated by `python bench/cost_probe.py --runs {args.runs}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: the default stories260K story "
        f"(greedy, {len(story)} bytes, identical in every variant), each variant booted "
        f"once per round, rounds interleaved; medians. Base: {base_ms:.2f} ms per token.",
        "",
        "| variant | adds | tok/s (median; runs) | ms per token | extra ms per token | share of base |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for name, (what, _) in VARIANTS.items():
        med = statistics.median(rates[name])
        ms = 1000 / med
        runs = ", ".join(f"{x:.1f}" for x in rates[name])
        extra = "" if name == "base" else f"{ms - base_ms:+.2f}"
        share = "" if name == "base" else f"{(ms - base_ms) / base_ms:+.0%}"
        lines.append(f"| {name} | {what} | {med:.1f} ({runs}) | {ms:.2f} | {extra} | {share} |")
    text = "\n".join(lines) + "\n"
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BootllamaError as e:
        print(f"cost_probe: {e}", file=sys.stderr)
        sys.exit(1)
