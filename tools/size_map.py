"""Draw the engine's bytes per routine against the 512-byte boot-sector budget.

Assembles sector.asm (``image.assemble()``), takes its per-routine size table from the NASM
listing and writes a PNG (default docs/size_map.png): on top, the routines packed end to end
in address order against a 512-byte box, and the same bytes summed per part (image.PARTS:
loader, generate loop, printing, forward pass, sampling); below, one bar per routine, coloured
by its part.

    python tools/size_map.py [-o docs/size_map.png] [-D NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle

from bootllama import image

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 512


def draw(engine: image.Engine, out: Path) -> None:
    sizes = engine.sizes
    used = engine.used
    over = used - BUDGET
    part_of = {name: part for part, names in image.PARTS.items() for name in names}
    parts = image.part_sizes(engine)
    cmap = plt.get_cmap("tab10")
    part_color = {part: cmap(i) for i, part in enumerate(image.PARTS)}
    colors = [part_color[part_of[name]] for name, _ in sizes]

    fig, (strip, bars) = plt.subplots(2, 1, figsize=(11, 3.7 + 0.28 * len(sizes)),
                                      gridspec_kw={"height_ratios": [1.6, 0.3 * len(sizes)]})
    fig.suptitle(f"bootllama engine: {engine.code_bytes} code bytes, the MBR's 440 bytes of boot code and "
                 f"{engine.sectors - 1} more sector{'s' if engine.sectors != 2 else ''} (one 512-byte sector, "
                 f"boxed, would be {over} bytes short)", fontsize=11)

    # the packed strip
    x = 0
    for (name, size), color in zip(sizes, colors, strict=True):
        strip.barh(0, size, left=x, color=color, edgecolor="white", linewidth=0.6, height=0.8)
        if size >= 0.035 * max(used, BUDGET):
            strip.text(x + size / 2, 0, name, ha="center", va="center", fontsize=7, rotation=90)
        x += size
    strip.add_patch(Rectangle((0, -1.55), BUDGET, 2.1, fill=False, edgecolor="crimson", linewidth=2,
                              linestyle="--", zorder=5))
    strip.text(BUDGET, 0.62, " 512-byte budget", color="crimson", fontsize=9, va="bottom", ha="right")
    # the same bytes summed per part, below the routines
    x = 0
    for part, size in parts:
        strip.barh(-1.1, size, left=x, color=part_color[part], edgecolor="white", linewidth=0.6, height=0.8)
        strip.text(x + size / 2, -1.1, f"{part}\n{size}", ha="center", va="center", fontsize=8)
        x += size
    strip.set_xlim(0, max(used, BUDGET) * 1.03)
    strip.set_ylim(-1.6, 0.95)
    strip.set_yticks([0, -1.1], ["routines", "parts"], fontsize=8)
    strip.set_xlabel("bytes: the routines end to end in address order, then summed per part (padding excluded)")

    # one bar per routine, in address order
    names = [n for n, _ in sizes]
    values = [s for _, s in sizes]
    ys = list(range(len(sizes)))[::-1]
    bars.barh(ys, values, color=colors)
    for y, v in zip(ys, values, strict=True):
        bars.text(v + 1, y, str(v), va="center", fontsize=8)
    bars.set_yticks(ys, names, fontsize=8)
    bars.set_xlabel("bytes per routine (local labels fold into their parent; 'signature' is the 0x55AA)")
    bars.set_xlim(0, max(values) * 1.12)
    bars.spines[["top", "right"]].set_visible(False)
    bars.legend(handles=[Patch(color=part_color[p], label=f"{p}: {n} bytes") for p, n in parts],
                loc="lower right", fontsize=8, frameon=False)

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", dest="output", type=Path, default=ROOT / "docs" / "size_map.png")
    parser.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME",
                        help="assemble with -DNAME (repeatable), e.g. -D HALT")
    args = parser.parse_args(argv)
    engine = image.assemble(tuple(args.defines))
    draw(engine, args.output)
    print(f"wrote {args.output}: {engine.used} bytes in {len(engine.sizes)} routines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
