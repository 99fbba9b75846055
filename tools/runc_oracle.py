"""Record llama2.c's ``run.c -m chat`` output for the chat test cases (tests/data/runc_chat/).

CI has no run.c (the project does not carry llama2.c's code), so what run.c prints for each case is
kept as a fixture, and ``tests/test_conversation.py`` holds ``bootllama generate -m chat`` to it byte
for byte. This script regenerates the fixtures from a ``run`` executable you built yourself from
llama2.c's run.c (its Makefile's ``run`` target: gcc -O3 with -lm; the fixtures in the repository
come from llama2.c at commit 350e04f, gcc 12.2.0, Debian glibc 2.36):

    .venv/bin/python tools/runc_oracle.py --run PATH/TO/run [--out tests/data/runc_chat]

For each case it runs, with the case's input file on standard input and stdout captured::

    run CHECKPOINT -z TOKENIZER -m chat ARGS...

``CHECKPOINT`` is either ``stories260K.bin`` with ``-z tok512.bin`` (the shared models folder,
``--models``, default ../shared/models beside the repository), or the 15M-shape checkpoint that
:func:`chat_model` writes, with the 32,000-piece ``tokenizer.bin``. It writes ``NAME.in`` (the
bytes fed), ``NAME.out`` (run.c's standard output) and ``cases.json`` (each case's arguments, the
checkpoint's sha256, the glibc version and the exact command lines).

The 15M-shape checkpoint: ``random_model(Config(dim 288, hidden 768, 6 layers, 6 heads, 6 KV heads,
vocab 32000, seq_len 256), seed=16)`` with the embedding row of EOS (id 2), which the classifier
shares, scaled by 5. A random model almost never samples EOS, and run.c's assistant turn ends only
at EOS: the scaled row makes EOS the likeliest token in some contexts, so conversations run over
several turns within 256 positions (stories260K never says EOS: its conversations are one turn).

A case whose input runs out before its steps do (``"eof": true``) shows run.c's behaviour at end
of input: it re-sends its last line turn after turn. bootllama ends the conversation there, so the
test compares up to that point. Every other case is checked here to have read no further than its
input (run.c printed no more "User: " guides than the input has user lines).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bootllama.checkpoint import Config, random_model, write_legacy
from bootllama.tokenizer import EOS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "runc_chat"
MODELS = ROOT.parent / "shared" / "models"

CHAT_CONFIG = Config(288, 768, 6, 6, 6, 32000, 256)
CHAT_SEED = 16
EOS_SCALE = 5.0


def chat_model(path: str | os.PathLike[str]) -> str:
    """Write the 15M-shape chat checkpoint (see the module's text); returns its sha256."""
    model = random_model(CHAT_CONFIG, seed=CHAT_SEED)
    model.token_embedding_table[EOS] *= np.float32(EOS_SCALE)
    write_legacy(model, path)
    return sha256(path)


def sha256(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _line(n: int) -> bytes:
    """n bytes of plain English, without a newline."""
    text = b"The sea is wide and the sky above it is blue; the poet walks along the shore and counts the waves. "
    return (text * (n // len(text) + 1))[:n]


LINE_511 = _line(511)  # fills fgets' 512-byte buffer: its newline is the next read (an empty turn)
LINE_700 = _line(700)  # split by fgets: 511 bytes, then the other 189 are the next turn


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # "stories260K" or "chat15M"
    args: list[str]
    lines: bytes
    eof: bool = False  # the input runs out before the steps do
    slow: bool = False
    note: str = field(default="")


CASES = [
    Case("s260k_greedy", "stories260K", ["-t", "0", "-n", "200"],
         b"You are a poet.\nTell me a story about a cat.\nMore\nWhy?\n",
         note="system prompt; the first turn reaches the step limit (stories260K never says EOS)"),
    Case("s260k_sampled_empty_system", "stories260K", ["-t", "1", "-p", "1", "-s", "42", "-n", "300"],
         b"\nOnce upon a time\nGo on\nThe end\n", note="empty system prompt typed; plain sampling"),
    Case("s260k_topp_511", "stories260K", ["-t", "1", "-p", "0.9", "-s", "7", "-n", "0"],
         b"Be brief.\n" + LINE_511 + b"\nNext\nLast\n", note="top-p; a user line of 511 bytes"),
    Case("s260k_y_i", "stories260K", ["-t", "0", "-n", "120", "-y", "You are kind.", "-i", "Hello"],
         b"More\nAgain\nWhy?\n", note="-y and -i: no guide for either; the first turn is -i"),
    Case("chat15M_greedy_short", "chat15M", ["-t", "0", "-n", "64"],
         b"You are a poet.\nHi there\n" + LINE_511 + b"\nWhy?\n",
         note="several turns; the 511-byte turn is cut by the step limit mid-prompt"),
    Case("chat15M_sampled_short", "chat15M", ["-t", "1", "-p", "1", "-s", "5", "-n", "100"],
         b"\nHi there\nTell me more about the sea\nWhy?\nAnd then?\nOk\n",
         note="empty system prompt; plain sampling over several turns"),
    Case("chat15M_greedy", "chat15M", ["-t", "0", "-n", "0"],
         b"You are a poet.\nHi there\nTell me more about the sea\n" + LINE_700 + b"\nWhy?\nGo on\n",
         slow=True, note="a line longer than 511 bytes: fgets gives it as two turns; the whole context"),
    Case("chat15M_sampled", "chat15M", ["-t", "1", "-p", "1", "-s", "7", "-n", "0"],
         b"\nHi there\nTell me more about the sea\n" + LINE_511 + b"\nWhy?\nAnd?\n",
         slow=True, note="empty system prompt; the 511-byte line, then its newline as an empty turn"),
    Case("chat15M_topp", "chat15M", ["-t", "1", "-p", "0.9", "-s", "11", "-n", "0", "-y", ""],
         b"Hi there\nTell me more about the sea\nWhy?\nAnd then?\nOk\nGo on\nMore\nStop\n",
         slow=True, note="top-p; -y with an empty system prompt"),
    Case("chat15M_eof", "chat15M", ["-t", "0", "-n", "0"],
         b"You are a poet.\nHi there\nWhy?\n", eof=True,
         note="the input ends first: run.c re-sends 'Why?' until the steps are used up"),
]


def model_paths(case: Case, models: Path, chat15m: Path) -> tuple[Path, Path]:
    if case.model == "stories260K":
        return models / "stories260K.bin", models / "tok512.bin"
    return chat15m, models / "tokenizer.bin"


def user_lines(case: Case) -> int:
    """How many reads of "User: " the input satisfies (fgets splits a line of more than 511 bytes)."""
    reads = 0
    for line in case.lines.split(b"\n")[:-1]:
        reads += 1 + len(line) // 511
    asks_system = "-y" not in case.args
    return reads - (1 if asks_system else 0)


def glibc() -> str:
    return os.confstr("CS_GNU_LIBC_VERSION") or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="llama2.c's run executable (gcc -O3 -lm)")
    parser.add_argument("--models", default=str(MODELS), help="folder with stories260K.bin, tok512.bin, tokenizer.bin")
    parser.add_argument("--out", default=str(DATA), help="fixture folder to write")
    args = parser.parse_args(argv)
    models, out = Path(args.models), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        chat15m = Path(tmp, "chat15M.bin")
        digests = {"chat15M": chat_model(chat15m), "stories260K": sha256(models / "stories260K.bin")}
        record = []
        for case in CASES:
            ckpt, tok = model_paths(case, models, chat15m)
            cmd = [args.run, str(ckpt), "-z", str(tok), "-m", "chat", *case.args]
            proc = subprocess.run(cmd, input=case.lines, capture_output=True, check=True)
            guides = proc.stdout.count(b"User: ")
            if not case.eof and guides > user_lines(case):
                sys.exit(f"{case.name}: run.c read past the end of its input ({guides} guides)")
            if case.eof and guides <= user_lines(case):
                sys.exit(f"{case.name}: marked eof but run.c never read past its input")
            (out / f"{case.name}.in").write_bytes(case.lines)
            (out / f"{case.name}.out").write_bytes(proc.stdout)
            shown = ["run", f"{case.model}.bin", "-z", tok.name, "-m", "chat", *case.args]
            record.append({**asdict(case), "lines": f"{case.name}.in", "stdout": f"{case.name}.out",
                           "command": " ".join(repr(a) if not a or " " in a else a for a in shown)
                           + f" < {case.name}.in", "checkpoint_sha256": digests[case.model]})
            print(f"{case.name}: {len(proc.stdout)} bytes, {proc.stdout.count(b'Assistant: ')} turns", file=sys.stderr)
    meta = {"source": "llama2.c run.c at 350e04f, gcc -O3 -lm (its Makefile's run target)",
            "glibc": glibc(), "cases": record}
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
