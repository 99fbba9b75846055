"""Draw the engine's code bytes per build beside the peer's, and the default build per routine.

Assembles every build (``image.assemble()``; the floor from floor.asm), sums each one's routines
per part (image.PARTS: loader, guards, generate loop, printing, forward pass, sampling, top-p,
encoder, talk, input) and writes a PNG (default docs/size_map.png): on top, one bar per build,
stacked by part, from the floor up, with the peer's (sectorllm's) code bytes as a line; below,
one bar per routine of the default (greedy) build, coloured by its part.

    python tools/size_map.py [-o docs/size_map.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from bootllama import image

ROOT = Path(__file__).resolve().parents[1]
PEER_BYTES = 1076  # sectorllm's engine by NASM's count: stories260K only, fixed point, its own text
FLOOR = "floor"

# (label, defines): the builds from the floor up; the floor is floor.asm's
BUILDS: list[tuple[str, tuple[str, ...]]] = [
    ("the floor (--floor): the default story only", (FLOOR,)),
    ("greedy (default)", ()),
    ("486, greedy (--cpu 486)", ("CPU486",)),
    ("temperature sampling (-t 0.8)", ("SAMPLING",)),
    ("486, sampling", ("CPU486", "SAMPLING")),
    ("top-p sampling (-t 1 -p 0.9)", ("SAMPLING", "TOPP")),
    ("story machine / chat (-i -, -m chat)", ("TALK", "ENC_BPE=0")),
    ("everything, byte-level BPE (SmolLM2 chat)", ("SAMPLING", "TOPP", "TALK", "ENC_RUNC=0")),
]


def assemble(defines: tuple[str, ...]) -> image.Engine:
    if defines == (FLOOR,):
        return image.assemble(("FLOOR",), image.asm_source().with_name("floor.asm"))
    return image.assemble(defines)


def draw(builds: list[tuple[str, image.Engine]], out: Path) -> None:
    cmap = plt.get_cmap("tab10")
    part_color = {part: cmap(i) for i, part in enumerate(image.PARTS)}
    part_of = {name: part for part, names in image.PARTS.items() for name in names}
    default = next(e for label, e in builds if label.startswith("greedy"))
    sizes = default.sizes

    fig, (top, bars) = plt.subplots(2, 1, figsize=(11, 4.2 + 0.26 * len(sizes)),
                                    gridspec_kw={"height_ratios": [0.42 * len(builds), 0.26 * len(sizes)]})
    fig.suptitle(f"bootllama's code bytes per build, from the floor up, beside the peer's {PEER_BYTES:,}",
                 fontsize=12)

    # one bar per build, stacked by part; the peer as a line
    ys = list(range(len(builds)))[::-1]
    used: set[str] = set()
    for y, (_, engine) in zip(ys, builds, strict=True):
        x = 0
        for part, n in image.part_sizes(engine):
            top.barh(y, n, left=x, color=part_color[part], edgecolor="white", linewidth=0.6, height=0.72)
            used.add(part)
            x += n
        top.text(x + 15, y, f"{engine.code_bytes:,} bytes, {engine.sectors} sectors", va="center", fontsize=8)
    top.axvline(PEER_BYTES, color="crimson", linestyle="--", linewidth=1.5)
    top.text(PEER_BYTES + 12, ys[0] + 0.55, f"the peer (sectorllm): {PEER_BYTES:,}, stories260K only",
             color="crimson", fontsize=8, va="bottom")
    top.set_yticks(ys, [label for label, _ in builds], fontsize=8)
    top.set_ylim(-0.6, len(builds) - 0.1)
    top.set_xlim(0, max(e.code_bytes for _, e in builds) * 1.22)
    top.set_xlabel("code bytes (padding, the 0x55AA signature and the partition table excluded), by part")
    top.spines[["top", "right"]].set_visible(False)
    top.legend(handles=[Patch(color=part_color[p], label=p) for p in image.PARTS if p in used],
               loc="upper right", fontsize=8, frameon=False, ncol=2)

    # the default build, one bar per routine, in address order
    names = [n for n, _ in sizes]
    values = [s for _, s in sizes]
    ys = list(range(len(sizes)))[::-1]
    bars.barh(ys, values, color=[part_color[part_of[n]] for n in names])
    for y, v in zip(ys, values, strict=True):
        bars.text(v + 1, y, str(v), va="center", fontsize=8)
    bars.set_yticks(ys, names, fontsize=8)
    bars.set_title(f"the default build ({default.code_bytes:,} bytes) per routine, in address order: "
                   "sector 0 (loader, guards, putc), then engine.inc", fontsize=9)
    bars.set_xlabel("bytes per routine (local labels fold into their parent; 'signature' is the 0x55AA)")
    bars.set_xlim(0, max(values) * 1.12)
    bars.spines[["top", "right"]].set_visible(False)

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", dest="output", type=Path, default=ROOT / "docs" / "size_map.png")
    args = parser.parse_args(argv)
    builds = [(label, assemble(defines)) for label, defines in BUILDS]
    draw(builds, args.output)
    print(f"wrote {args.output}: " + ", ".join(f"{e.code_bytes}" for _, e in builds), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
