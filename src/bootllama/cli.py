"""The ``bootllama`` command line.

Subcommands here: ``generate`` (the reference, run.c's output byte for byte) and ``convert``.
The engine's commands (``build``, ``run``) come from ``bootllama.engine.add_engine_commands``
when that module exists. Every subcommand sets ``func(args) -> int`` with set_defaults.

Only light modules are imported at the top: ``main`` installs the signal handlers
(bootllama.interrupts) first and imports the rest inside its error handling, so an interrupt at
any moment, the first fraction of a second included, ends with one line and no traceback.
"""

from __future__ import annotations

import sys

import bootllama

if __name__ == "__main__" and bootllama.held_signals is None:  # python -m bootllama.cli
    bootllama.hold_signals()  # (the `bootllama` command does this in bootllama/__init__)

import argparse
import math
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from bootllama import __version__, interrupts
from bootllama.errors import BootllamaError

# what strtod reads as a negative number (-1, -.5, -1e-3, -inf, -nan, -0x1p3): a value, not a flag
_NEGATIVE_NUMBER = re.compile(r"^-(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan"
                              r"|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?)$",
                              re.IGNORECASE)

if TYPE_CHECKING:
    from bootllama.reference import Reference, Sampler
    from bootllama.tokenizer import Tokenizer


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of a usage block, reading ``-t -inf`` and other
    negative numbers strtod accepts as values."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def _parse_optional(self, arg_string: str) -> Any:
        # before argparse's prefix matching, which reads -inf as -i nf and -nan as -n an
        if _NEGATIVE_NUMBER.match(arg_string):
            return None
        return super()._parse_optional(arg_string)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def cmd_generate(args: argparse.Namespace) -> int:
    from bootllama.checkpoint import load_checkpoint
    from bootllama.reference import MathMode, Reference, Sampler, clamp_steps, generate
    from bootllama.runc_args import (
        TYPED,
        check_mode,
        resolve_paths,
        resolve_prompt,
        resolve_seed,
        resolve_temperature,
        resolve_topp,
    )
    from bootllama.tokenizer import Tokenizer

    temperature = resolve_temperature(args.temperature)
    topp = resolve_topp(args.topp)
    checkpoint, tokenizer_path = resolve_paths(args)
    model = load_checkpoint(checkpoint)
    tokenizer = Tokenizer.load(tokenizer_path, model.config.vocab_size)
    check_mode(args)
    typed = args.mode == "chat" or args.prompt == TYPED
    prompt = None if typed else resolve_prompt(args, tokenizer)
    seed, drawn = resolve_seed(args.seed)
    if drawn and temperature > 0:  # greedy output does not depend on the seed
        print(f"seed: {seed}", file=sys.stderr)
    math_mode = MathMode(rope=args.rope, exp=args.exp)
    reference = Reference(model, math_mode)
    sampler = Sampler(model.config.vocab_size, temperature, topp, seed, exp=math_mode.exp)
    if typed:
        return _talk(args, reference, tokenizer, sampler)

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


def _talk(args: argparse.Namespace, reference: Reference, tokenizer: Tokenizer, sampler: Sampler) -> int:
    """generate -m chat (a conversation) or -i - (a story per typed prompt), lines from standard input."""
    from bootllama.conversation import chat, fgets_lines, story_machine
    from bootllama.runc_args import TYPED

    lines = fgets_lines(sys.stdin.buffer if sys.stdin is not None else None)
    if args.mode != "chat":
        story_machine(reference, tokenizer, sampler, lines, sys.stdout.buffer, steps=args.steps)
        return 0
    system = os.fsencode(args.system) if args.system is not None else None
    # -i - (typed) in chat mode is what no -i is: the first turn is read too
    prompt = os.fsencode(args.prompt) if args.prompt not in (None, TYPED) else None
    _, end = chat(reference, tokenizer, sampler, lines, sys.stdout.buffer, steps=args.steps, system=system,
                  prompt=prompt)
    if end.why == "steps":
        limit = "the model's context" if end.steps == reference.config.seq_len else "-n"
        print(f"bootllama: the conversation has used all {end.steps} positions ({limit}); it ends here",
              file=sys.stderr)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    output = args.o or args.output
    if output is None:
        raise BootllamaError("convert needs an output file (OUT or -o OUT)")
    if args.o and args.output:
        raise BootllamaError("give the output once (OUT or -o OUT)")
    from bootllama.checkpoint import load_checkpoint, refuse_inputs, write_legacy
    from bootllama.gguf_convert import convert_gguf, describe, is_gguf
    from bootllama.tokenizer import sidecar_path

    if is_gguf(args.input):
        tok_out = args.tokenizer_out or str(Path(output).with_name(Path(output).stem + "-tokenizer.bin"))
        # every file convert writes, against the input and each other, before anything is written
        refuse_inputs(output, {"input": args.input})
        refuse_inputs(tok_out, {"input": args.input, "checkpoint output": output})
        refuse_inputs(sidecar_path(tok_out), {"input": args.input, "checkpoint output": output})
        if os.path.abspath(tok_out) == os.path.abspath(output):
            raise BootllamaError(f"{tok_out} is both the checkpoint and the tokenizer output: give --tokenizer-out "
                                 "another path")
        conv = convert_gguf(args.input, output, tok_out, seq_len=args.seq_len, progress=True)
        print(describe(conv), file=sys.stderr)
        print(f"wrote {output} (legacy v0) and {tok_out} with its sidecar {tok_out}.json", file=sys.stderr)
        return 0
    if args.tokenizer_out or args.seq_len is not None:
        raise BootllamaError("--tokenizer-out and --seq-len apply to GGUF input only")
    refuse_inputs(output, {"input": args.input})
    model = load_checkpoint(args.input)
    write_legacy(model, output)
    c = model.config
    print(f"wrote {output}: legacy v0, dim {c.dim}, {c.n_layers} layers, vocab {c.vocab_size}",
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
    from bootllama.runc_args import add_generate_arguments

    parser = _Parser(prog="bootllama", description="Llama-2 inference in a boot sector, and its toolkit.")
    parser.add_argument("--version", action="version", version=f"bootllama {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    gen = sub.add_parser("generate", help="run the NumPy reference (prints what llama2.c's run.c prints)")
    add_generate_arguments(gen)
    gen.add_argument("--rope", choices=("runc", "table"), default="runc",
                     help="diagnosis: RoPE factors as run.c computes them (runc, default; with the base a converted "
                          "model's tables encode) or the checkpoint's freq_cis tables")
    gen.add_argument("--exp", choices=("runc", "exact"), default="runc",
                     help="diagnosis: exp as glibc's expf (runc, default) or correctly rounded")
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="write any supported checkpoint (or a llama GGUF) as legacy (version 0)")
    conv.add_argument("input", help="legacy, ak42 v1 or v2 checkpoint, or a GGUF file")
    conv.add_argument("output", nargs="?", help="legacy checkpoint to write (or -o)")
    conv.add_argument("-o", metavar="OUT", help="legacy checkpoint to write")
    conv.add_argument("--tokenizer-out", metavar="TOK", help="GGUF: tokenizer.bin to write, its sidecar beside it "
                      "as TOK.json appended (default: OUT's name with -tokenizer.bin)")
    conv.add_argument("--seq-len", type=int, metavar="N", default=None,
                      help="GGUF: context length to keep (default: the engine's maximum, at most the model's)")
    conv.set_defaults(func=cmd_convert)

    _add_engine_commands(sub)
    from bootllama.web import add_web_command

    add_web_command(sub)
    from bootllama.verify import add_verify_command

    add_verify_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        restore = interrupts.install()  # SIGINT, SIGTERM and SIGHUP all clean up and end in one line
        interrupts.raise_held()  # one that came while the program loaded ends it here
    except KeyboardInterrupt as e:
        return _interrupted(e)
    try:
        return _main(argv)
    except KeyboardInterrupt as e:  # before _main's own handling (a signal while importing)
        return _interrupted(e)
    finally:
        restore()


def _interrupted(e: KeyboardInterrupt) -> int:
    signum = e.signum if isinstance(e, interrupts.Interrupted) else 2
    what = "interrupted" if signum == 2 else f"stopped by {interrupts.NAMES.get(signum, signum)}"
    print(f"bootllama: {what}", file=sys.stderr)
    return 128 + signum


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_usage(sys.stderr)
            return 2
        status = int(args.func(args) or 0)
        interrupts.poll()  # a signal whose Interrupted was dropped on the way (see poll) still counts
        return status
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
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except ImportError:
        # a signal inside an extension module's import (numpy's C init turns the interrupt into
        # an ImportError of its own): the signal, not the import, ended the command
        if interrupts.fired is None:
            raise
        return _interrupted(interrupts.Interrupted(interrupts.fired))
    return 1


if __name__ == "__main__":
    sys.exit(main())
