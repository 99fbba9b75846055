"""The ``bootllama`` command line.

Subcommands here: ``generate`` (the reference, run.c's output byte for byte) and ``convert``.
The engine's commands (``build``, ``run``) come from ``bootllama.engine.add_engine_commands``
when that module exists. Every subcommand sets ``func(args) -> int`` with set_defaults.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from bootllama import __version__
from bootllama.checkpoint import (
    DEFAULT_CHECKPOINT,
    DEFAULT_TOKENIZER,
    load_checkpoint,
    packaged_path,
    write_legacy,
)
from bootllama.errors import BootllamaError

RUNC_TOKENIZER = "tokenizer.bin"  # run.c's -z default when a checkpoint is named


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The run.c-style options shared by ``generate`` (and usable by ``run``)."""
    parser.add_argument("checkpoint", nargs="?", help=f"llama2.c checkpoint (default: packaged {DEFAULT_CHECKPOINT})")
    parser.add_argument("-z", dest="tokenizer", metavar="TOKENIZER",
                        help=f"tokenizer.bin (default: packaged {DEFAULT_TOKENIZER} without a checkpoint, "
                             f"else ./{RUNC_TOKENIZER} as run.c)")
    parser.add_argument("-t", dest="temperature", type=float, default=0.0, metavar="TEMP",
                        help="temperature, 0 = greedy (default 0; negative counts as 0)")
    parser.add_argument("-p", dest="topp", type=float, default=1.0, metavar="TOPP",
                        help="top-p in [0,1], 0 or 1 = off (default 1.0; outside [0,1] means 0.9, as run.c)")
    parser.add_argument("-s", dest="seed", type=int, default=0, metavar="SEED",
                        help="RNG seed (default: the clock, printed on stderr when sampling)")
    parser.add_argument("-n", dest="steps", type=int, default=0, metavar="STEPS",
                        help="number of steps, 0 = seq_len (default 0)")
    parser.add_argument("-i", dest="prompt", default=None, metavar="PROMPT", help="input prompt")


def resolve_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(checkpoint, tokenizer) paths for parsed generate-style arguments."""
    if args.checkpoint is None:
        checkpoint = packaged_path(DEFAULT_CHECKPOINT)
        tokenizer = Path(args.tokenizer) if args.tokenizer else packaged_path(DEFAULT_TOKENIZER)
    else:
        checkpoint = Path(args.checkpoint)
        tokenizer = Path(args.tokenizer or RUNC_TOKENIZER)
    return checkpoint, tokenizer


def resolve_seed(seed: int) -> tuple[int, bool]:
    """run.c's seed: 0 means time(NULL); returns (seed, drawn_from_clock)."""
    seed &= (1 << 64) - 1
    if seed == 0:
        return int(time.time()) & 0xFFFFFFFF, True
    return seed, False


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise BootllamaError(f"{name} must be a finite number, got {value}")
    return value


def resolve_temperature(value: float) -> float:
    """run.c's temperature: a finite number; a negative one counts as 0 (greedy)."""
    return max(0.0, _finite("temperature", value))


def cmd_generate(args: argparse.Namespace) -> int:
    from bootllama.reference import MathMode, Reference, Sampler, clamp_steps, generate
    from bootllama.tokenizer import Tokenizer

    temperature = resolve_temperature(args.temperature)
    topp = _finite("top-p", args.topp)
    if topp < 0.0 or topp > 1.0:
        topp = 0.9
    checkpoint, tokenizer_path = resolve_paths(args)
    model = load_checkpoint(checkpoint)
    tokenizer = Tokenizer.load(tokenizer_path, model.config.vocab_size)
    prompt = os.fsencode(args.prompt) if args.prompt is not None else None
    seed, drawn = resolve_seed(args.seed)
    if drawn and temperature > 0:  # greedy output does not depend on the seed
        print(f"seed: {seed}", file=sys.stderr)
    math_mode = MathMode(rope=args.rope, exp=args.exp)
    reference = Reference(model, math_mode)
    sampler = Sampler(model.config.vocab_size, temperature, topp, seed, exp=math_mode.exp)

    printed = 0
    start = 0.0

    def on_token(_token: int) -> None:
        nonlocal printed, start
        printed += 1
        if printed == 1:
            start = time.perf_counter()

    generate(reference, tokenizer, prompt, steps=args.steps, sampler=sampler,
             out=sys.stdout.buffer, on_token=on_token)
    # run.c counts forward passes: one per printed token, plus the one that produced BOS
    pos = min(printed + 1, clamp_steps(args.steps, model.config.seq_len))
    if pos > 1:
        elapsed = time.perf_counter() - start
        rate = (pos - 1) / elapsed if elapsed > 0 else math.inf
        print(f"achieved tok/s: {rate:f}", file=sys.stderr)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    model = load_checkpoint(args.input)
    write_legacy(model, args.output)
    c = model.config
    print(f"wrote {args.output}: legacy v0, dim {c.dim}, {c.n_layers} layers, vocab {c.vocab_size}",
          file=sys.stderr)
    return 0


def _add_engine_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    try:
        from bootllama.engine import add_engine_commands  # type: ignore[attr-defined]
    except ModuleNotFoundError as e:
        if e.name != "bootllama.engine":
            raise
        return
    add_engine_commands(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bootllama", description="Llama-2 inference in a boot sector, and its toolkit.")
    parser.add_argument("--version", action="version", version=f"bootllama {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    gen = sub.add_parser("generate", help="run the NumPy reference (prints what llama2.c's run.c prints)")
    add_generate_arguments(gen)
    gen.add_argument("--rope", choices=("runc", "table", "exact"), default="runc",
                     help="RoPE factors: glibc (runc, default), checkpoint tables, or correctly rounded")
    gen.add_argument("--exp", choices=("runc", "exact"), default="runc",
                     help="exp: glibc expf (runc, default) or correctly rounded")
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="write any supported checkpoint as legacy (version 0)")
    conv.add_argument("input", help="legacy, ak42 v1 or v2 checkpoint")
    conv.add_argument("output", help="legacy checkpoint to write")
    conv.set_defaults(func=cmd_convert)

    _add_engine_commands(sub)
    from bootllama.web import add_web_command

    add_web_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except BootllamaError as e:
        print(f"bootllama: error: {e}", file=sys.stderr)
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            # the reader went away (e.g. `| head`); leave quietly
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), sys.stdout.fileno())
            return 1
        where = f"{e.filename}: " if e.filename else ""
        print(f"bootllama: error: {where}{e.strerror or e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bootllama: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
