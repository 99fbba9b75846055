"""Talking to the engine end to end: ``bootllama run -m chat`` and ``run -i -`` with lines on
standard input (the harness feeds COM1, then EOT), and a prompt typed on QEMU's keyboard.  The
reference (``bootllama generate``, conversation.py) is the oracle; its own agreement with run.c
is tested in test_conversation.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bootllama import engine, pcs
from bootllama.cli import build_parser

CHAT_LINES = b"You are a poet.\nHi\nMore\n"
STORY_LINES = b"Lily and Tom\nA cat"  # the last line without LF counts, as fgets reads it


def cli(*args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "bootllama.cli", *args], input=stdin, capture_output=True,
                          env=env, timeout=900)


def reference(*args: str, stdin: bytes) -> bytes:
    done = cli("generate", *args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("pc", ["qemu", "v86"])
def test_run_chat_piped(pc: str) -> None:
    """`printf 'You are a poet.\\nHi\\nMore\\n' | bootllama run -m chat`: run.c's chat, byte for byte."""
    args = ("-m", "chat", "-n", "120")
    done = cli("run", *args, "--pc", pc, stdin=CHAT_LINES)
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference(*args, stdin=CHAT_LINES)
    assert b"You are a poet." not in done.stdout  # COM1 carries run.c's stdout only: no echo


def test_run_chat_sampled_with_system() -> None:
    """-y and -i given, a sampled conversation, end of input before the steps are used."""
    args = ("-m", "chat", "-y", "You tell stories.", "-i", "Once", "-t", "0.8", "-s", "7", "-n", "200")
    done = cli("run", *args, stdin=b"A dog\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference(*args, stdin=b"A dog\n")


def test_run_story_machine_piped() -> None:
    args = ("-i", "-", "-n", "60")
    done = cli("run", *args, stdin=STORY_LINES)
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference(*args, stdin=STORY_LINES)
    assert done.stdout.count(b"Prompt: ") == 3


def test_run_empty_input_ends_cleanly() -> None:
    done = cli("run", "-i", "-", "-n", "60", stdin=b"")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"Prompt: \n" == reference("-i", "-", "-n", "60", stdin=b"")


@pytest.mark.slow
def test_run_chat_piped_bochs() -> None:
    args = ("-m", "chat", "-n", "120")
    done = cli("run", *args, "--pc", "bochs", stdin=CHAT_LINES)
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference(*args, stdin=CHAT_LINES)


# (once behind slow: keystrokes sent at a fixed gap overflowed QEMU's 16-byte PS/2 queue when
# the guest was starved of the CPU; QMP.type_text now waits for the BIOS to take each one)
def test_keyboard_prompt_is_the_run_i_story(tmp_path: Path) -> None:
    """A prompt typed on QEMU's keyboard (QMP.type_text, shift for the capitals) at the story
    machine's "Prompt: ", then Ctrl-D: the story is the one `run -i` with that prompt prints."""
    prompt = "Lily and Tom"
    path = tmp_path / "story.img"
    img = engine._build(build_parser().parse_args(["build", "-i", "-", "-n", "60", "-o", str(path)]), path)
    result = pcs.boot("qemu", path, img.layout, timeout=120, keys=prompt + "\n\x04", keys_after=b"Prompt: ")
    once = cli("run", "-i", prompt, "-n", "60", stdin=b"")
    assert once.returncode == 0, once.stderr
    assert result.text == b"Prompt: " + once.stdout + b"Prompt: \n"
    assert result.text == reference("-i", "-", "-n", "60", stdin=prompt.encode() + b"\n")


def test_run_at_a_terminal() -> None:
    """Standard input a terminal (a pty): its lines go to COM1 as typed, Ctrl-D at the start of a
    line ends the run; what we print is COM1 alone (the terminal echoes the typing, we do not)."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "bootllama.cli", "run", "-i", "-", "-n", "40"], stdin=slave,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    try:
        os.write(master, b"Lily and Tom\n")
        os.write(master, b"\x04")  # Ctrl-D: the terminal's end of input
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0, err
    assert out == reference("-i", "-", "-n", "40", stdin=b"Lily and Tom\n")
