"""The engine's speed against the old engine's (x87 exp with f2xm1), as a ratio in one interleaved run.

Assembles the old engine from git (``git show df54997:src/bootllama/asm/sector.asm``, the last
commit before glibc's expf in SSE2 doubles) and today's sector.asm, builds one image of the
default stories260K story (greedy, no prompt) with each, then boots them alternately under
QEMU TCG, ``--rounds`` times each. Every run's story must be byte-identical to llama2.c's
(``../shared/oracles/stories260K_greedy.txt``). Writes bench/speedup.md and bench/speedup.json:
each engine's median tokens/s (min-max), load seconds, and the ratio new / old of the medians.

The old engine is assembled and its image laid out by the old commit's own image.py (the manifest's
fields move between generations, and each engine reads its own builder's manifest); the data area
holds the same checkpoint and tokenizer bytes in both images (checked). ``--old main`` compares
today's main with this checkout; ``--pc v86`` boots both in v86 instead of QEMU TCG (wall-clock
rates only).

    python bench/speedup.py                 # 5 rounds
    python bench/speedup.py --rounds 9
    python bench/speedup.py --old main --rounds 3 --pc v86
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_engine, beside this script
from bench_engine import cpu_name, log

from bootllama import image
from bootllama.checkpoint import packaged_path
from bootllama.errors import BootllamaError
from bootllama.pcs import qemu, v86

ROOT = Path(__file__).resolve().parents[1]
ORACLE = ROOT.parent / "shared" / "oracles" / "stories260K_greedy.txt"
OLD_COMMIT = "df54997"
ASM = "src/bootllama/asm/sector.asm"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def child_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: QEMU's, which the load of other
    jobs on the machine stretches less than the wall-clock time."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def qemu_cpu_seconds() -> float | None:
    """CPU seconds (user + system) so far of this process's running QEMU child, from /proc."""
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().startswith("qemu"):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                continue
    return None


class GenCpu:
    """on_bytes for qemu.boot: QEMU's CPU seconds at the story's first and last bytes."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None

    def __call__(self, data: bytes) -> None:
        now = qemu_cpu_seconds()
        if self.first is None:
            self.first = now
        self.last = now

    def tok_per_s(self, tokens: int) -> float:
        """Forward passes per CPU second between the first and last story bytes (tokens - 1 passes)."""
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return (tokens - 1) / (self.last - self.first)


def qemu_version() -> str:
    out = subprocess.run([qemu.qemu_binary(), "--version"], capture_output=True, text=True, timeout=30)
    return (out.stdout.splitlines() or ["unknown"])[0].strip()


def old_source(commit: str, dest: Path) -> Path:
    """Write the old engine's sector.asm (and its sample.inc, which greedy builds do not include,
    and its engine.inc where it has one)."""
    for name in ("sector.asm", "sample.inc", "engine.inc"):
        proc = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/bootllama/asm/{name}"],
                              capture_output=True)
        if proc.returncode != 0:
            if name == "engine.inc":
                continue  # (engines before the 32-bit form are one file)
            raise BootllamaError(f"git show {commit}:src/bootllama/asm/{name} failed: "
                                 f"{proc.stderr.decode(errors='replace').strip()}")
        Path(dest, name).write_bytes(proc.stdout)
    return Path(dest, "sector.asm")


def old_builder(commit: str, dest: Path):  # type: ignore[no-untyped-def]
    """The old commit's image.py, imported as a module of its own: the old engine reads the manifest
    its own builder wrote (the fields moved since), so its image is laid out by that builder."""
    proc = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/bootllama/image.py"], capture_output=True)
    if proc.returncode != 0:
        raise BootllamaError(f"git show {commit}:src/bootllama/image.py failed: "
                             f"{proc.stderr.decode(errors='replace').strip()}")
    path = Path(dest, "old_image.py")
    path.write_bytes(proc.stdout)
    spec = importlib.util.spec_from_file_location("bootllama_old_image", path)
    if spec is None or spec.loader is None:
        raise BootllamaError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (its dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def build_old(commit: str, ckpt: Path, tok: Path, dest: Path) -> tuple[image.Engine, image.Image]:
    """The old engine, assembled and laid out by its own commit's image.py."""
    mod = old_builder(commit, dest)
    engine = mod.assemble(source=old_source(commit, dest))
    return engine, mod.build_image(ckpt, tok, Path(dest, "old.img"), engine=engine)


def old_text(dest: Path) -> str:
    """The old engine's assembly sources as written by old_source, one string."""
    return "".join(p.read_text(errors="replace") for p in sorted(dest.glob("*.asm")) + sorted(dest.glob("*.inc")))


def data_area(img: image.Image) -> bytes:
    """The checkpoint and the tokenizer as the engines load them (the manifest's fields, and the
    address table and RoPE values the builder computes, differ between generations)."""
    lay = img.layout
    with open(img.path, "rb") as f:
        f.seek((lay.data_lba + 1) * image.SECTOR)
        return f.read(lay.prompt_addr - lay.checkpoint_addr)


def summary(rates: list[float], loads: list[float], cpu: list[float], cpu_rates: list[float]) -> dict[str, object]:
    return {"tok_per_cpu_s_median": round(statistics.median(cpu_rates), 2),
            "tok_per_cpu_s_runs": [round(x, 2) for x in cpu_rates],
            "qemu_cpu_s_median": round(statistics.median(cpu), 3), "qemu_cpu_s_runs": [round(x, 3) for x in cpu],
            "tok_s_median": round(statistics.median(rates), 2), "tok_s_min": round(min(rates), 2),
            "tok_s_max": round(max(rates), 2), "tok_s_runs": [round(x, 2) for x in rates],
            "load_s_median": round(statistics.median(loads), 3), "load_s_runs": [round(x, 3) for x in loads]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="boots of each engine, alternating (default 5)")
    ap.add_argument("--old", default=OLD_COMMIT, help=f"git commit of the old sector.asm (default {OLD_COMMIT})")
    ap.add_argument("--output-dir", type=Path, default=ROOT / "bench", help="where speedup.md/.json go")
    ap.add_argument("--pc", choices=("tcg", "v86"), default="tcg", help="QEMU TCG (default) or v86")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        raise BootllamaError("--rounds must be at least 1")
    if not ORACLE.is_file():
        raise BootllamaError(f"the oracle {ORACLE} is missing")
    oracle = ORACLE.read_bytes()
    ckpt, tok = packaged_path("stories260K.bin"), packaged_path("tok512.bin")
    command = "python bench/speedup.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    load_start = loadavg()
    with tempfile.TemporaryDirectory(prefix="bootllama-speedup-") as tmp:
        old_dir = Path(tmp, "old")
        old_dir.mkdir()
        old_engine, old_img = build_old(args.old, ckpt, tok, old_dir)
        imgs = {"old": old_img,
                "new": image.build_image(ckpt, tok, Path(tmp, "new.img"))}
        # the status of a finished story: 21 (E_DONE, 10) since golf3, 1 (code 0) before
        done = {"old": qemu.EXIT_DONE if "E_DONE" in old_text(old_dir) else 1, "new": qemu.EXIT_DONE}
        if data_area(imgs["old"]) != data_area(imgs["new"]):
            raise BootllamaError("the two images' data areas differ: the comparison would not be fair")
        rates: dict[str, list[float]] = {k: [] for k in imgs}
        loads: dict[str, list[float]] = {k: [] for k in imgs}
        cpu: dict[str, list[float]] = {k: [] for k in imgs}
        cpu_rates: dict[str, list[float]] = {k: [] for k in imgs}
        tokens: dict[str, int] = {}
        for r in range(args.rounds):
            for name, img in imgs.items():
                cpu0 = child_cpu()
                gen_cpu = GenCpu()
                if args.pc == "v86":
                    res = v86.boot(img.path, img.layout.memory_mib, img.layout.chunks, done=done[name])
                else:
                    res = qemu.boot(img.path, img.layout.memory_mib, img.layout.chunks, accel="tcg",
                                    on_bytes=gen_cpu, done=done[name])
                cpu[name].append(child_cpu() - cpu0)
                cpu_rates[name].append(gen_cpu.tok_per_s(res.tokens))
                if res.text != oracle:
                    raise BootllamaError(f"the {name} engine's story differs from llama2.c's in round {r + 1}")
                rates[name].append(res.tok_per_s)
                loads[name].append(res.load_seconds)
                tokens[name] = res.tokens
                log(f"round {r + 1} {name} {res.tok_per_s:7.2f} tok/s  load {res.load_seconds:.2f} s  "
                    f"QEMU CPU {cpu[name][-1]:.2f} s, "
                    f"{cpu_rates[name][-1]:.1f} tok per CPU s  (load average {os.getloadavg()[0]:.2f})")
    load_end = loadavg()
    pc_name = "QEMU TCG" if args.pc == "tcg" else "v86"
    old, new = (statistics.median(rates[k]) for k in ("old", "new"))
    ratio = new / old
    cpu_ratio = statistics.median(cpu["old"]) / statistics.median(cpu["new"])
    has_cpu = all(cpu_rates["old"])  # (v86 runs in Node: no QEMU CPU times)
    gen_cpu_ratio = statistics.median(cpu_rates["new"]) / statistics.median(cpu_rates["old"]) if has_cpu else 0.0
    # each round's pair, booted back to back, under about the same load
    paired = statistics.median(n / o for n, o in zip(rates["new"], rates["old"], strict=True))
    paired_cpu = statistics.median(n / o for n, o in zip(cpu_rates["new"], cpu_rates["old"], strict=True)) \
        if has_cpu else 0.0
    when = dt.datetime.now(dt.UTC)
    meta = {
        "command": command, "date": f"{when:%Y-%m-%d %H:%M} UTC", "accelerator": args.pc,
        "qemu": qemu_version(), "cpu": cpu_name(), "nproc": os.cpu_count(),
        "load_average": {"start": load_start, "end": load_end},
        "old": f"{args.old}:{ASM} ({old_engine.sectors} sectors"
               + (", x87 exp with f2xm1)" if args.old == OLD_COMMIT else ")"),
        "new": f"{ASM} of this checkout ({imgs['new'].engine.sectors} sectors, glibc's expf in SSE2 doubles)",
        "story": f"stories260K greedy, no prompt: {len(oracle)} bytes, {tokens['new']} forward passes, "
                 "identical to llama2.c's in every run",
        "rounds": args.rounds,
    }
    result = {**meta, "engines": {k: summary(rates[k], loads[k], cpu[k], cpu_rates[k]) for k in imgs},
              "ratio_new_over_old": round(ratio, 3),
              "gen_cpu_ratio_new_over_old": round(gen_cpu_ratio, 3),
              "paired_ratio_median": round(paired, 3), "paired_cpu_ratio_median": round(paired_cpu, 3),
              "boot_cpu_ratio_old_over_new": round(cpu_ratio, 3)}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "speedup.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# The engine against the old one ({pc_name})",
        "",
        f"Generated by `{command}` on {meta['date']}: {meta['story']}; the two engines booted "
        f"alternately, {args.rounds} time{'s' if args.rounds != 1 else ''} each, under {pc_name} "
        f"({meta['qemu'] if args.pc == 'tcg' else 'v86 in Node'}, `-cpu max`) on "
        f"{meta['cpu']} ({meta['nproc']} CPUs, shared with other jobs: load average "
        f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end).",
        "",
        "| engine | tok/s median (min-max) | ms per token | load s (median) | runs (tok/s) "
        "| tok per QEMU CPU s (median) | QEMU CPU s per boot (median) |",
        "|---|--:|--:|--:|---|--:|--:|",
    ]
    for name in imgs:
        s = rates[name]
        lines.append(f"| {name}: {meta[name]} | {statistics.median(s):.1f} ({min(s):.1f}-{max(s):.1f}) | "
                     f"{1000 / statistics.median(s):.2f} | {statistics.median(loads[name]):.2f} | "
                     f"{', '.join(f'{x:.1f}' for x in s)} | {statistics.median(cpu_rates[name]):.1f} "
                     f"| {statistics.median(cpu[name]):.2f} |")
    lines += ["", f"**Ratio new / old (median tokens/s, wall clock): {ratio:.2f}** (the median of each round's "
              f"ratio: {paired:.2f}).", "",
              "Cross-checks less sensitive to the other jobs' load (QEMU's own CPU time from /proc and "
              f"getrusage): forward passes per QEMU CPU second during the story, new / old: {gen_cpu_ratio:.2f} "
              f"(the median of each round's ratio: {paired_cpu:.2f}); "
              f"QEMU CPU seconds per whole boot (BIOS, loading and start-up included), old / new: "
              f"{cpu_ratio:.2f}.", ""]
    text = "\n".join(lines)
    (args.output_dir / "speedup.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BootllamaError as e:
        print(f"speedup: error: {e}", file=sys.stderr)
        sys.exit(1)
