"""-m chat and -i -: run.c's chat loop held to run.c's own output (tests/data/runc_chat, recorded by
tools/runc_oracle.py), fgets' line reading, the model's own template over several turns with one KV
cache, the story machine, and the refusals."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOLLM2_TEMPLATE, shared_file

from bootllama.chat import render_chat
from bootllama.checkpoint import load_checkpoint, packaged_path, write_legacy
from bootllama.cli import main
from bootllama.conversation import (
    ANSWER,
    LINE_BUFFER,
    chat,
    fgets_lines,
    render_runc_turn,
    runc_chat,
    template_turns,
)
from bootllama.errors import BootllamaError
from bootllama.reference import Reference, Sampler
from bootllama.tokenizer import ByteLevelTokenizer, Tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "runc_chat"
META = json.loads((DATA / "cases.json").read_text())
CASES = {c["name"]: c for c in META["cases"]}


def _oracle_tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("runc_oracle", ROOT / "tools" / "runc_oracle.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["runc_oracle"] = mod  # (its dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


oracle = _oracle_tool()


@pytest.fixture(scope="module")
def chat15m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chat15m") / "chat15M.bin"
    digest = oracle.chat_model(path)
    want = {c["checkpoint_sha256"] for c in META["cases"] if c["model"] == "chat15M"}
    assert want == {digest}, "the 15M-shape checkpoint changed: rerun tools/runc_oracle.py"
    return path


def _paths(case: dict, chat15m_path: Path | None) -> tuple[Path, Path]:
    if case["model"] == "stories260K":
        assert oracle.sha256(packaged_path("stories260K.bin")) == case["checkpoint_sha256"]
        return packaged_path("stories260K.bin"), packaged_path("tok512.bin")
    assert chat15m_path is not None
    return chat15m_path, shared_file("models/tokenizer.bin")


def _generate_chat(argv: list[str], lines: bytes, capfdbinary, monkeypatch) -> bytes:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines)))
    assert main(["generate", *argv]) == 0
    return capfdbinary.readouterr().out


def _cases(slow: bool) -> list:  # type: ignore[type-arg]
    return [pytest.param(name, marks=[pytest.mark.slow] if c["slow"] else []) for name, c in CASES.items()
            if c["slow"] == slow]


def _eof_cut(case: dict, runc: bytes) -> bytes:
    """run.c's output up to the "User: " that met the end of the input, then bootllama's closing newline."""
    lines = (DATA / case["lines"]).read_bytes()
    reads = oracle.user_lines(oracle.Case(case["name"], case["model"], case["args"], lines))
    at = -1
    for _ in range(reads + 1):
        at = runc.index(b"User: ", at + 1)
    return runc[: at + len(b"User: ")] + b"\n"


@pytest.mark.parametrize("name", _cases(False) + _cases(True))
def test_generate_chat_prints_what_runc_prints(name: str, request: pytest.FixtureRequest, capfdbinary,  # type: ignore[no-untyped-def]
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    ckpt, tok = _paths(case, request.getfixturevalue("chat15m") if case["model"] == "chat15M" else None)
    runc = (DATA / case["stdout"]).read_bytes()
    lines = (DATA / case["lines"]).read_bytes()
    out = _generate_chat([str(ckpt), "-z", str(tok), "-m", "chat", *case["args"]], lines, capfdbinary, monkeypatch)
    assert out == (_eof_cut(case, runc) if case["eof"] else runc)


def test_fixtures_hold_conversations() -> None:
    """The recorded cases are ones a wrong loop fails: several turns whose answers differ, a system
    prompt asked for and given, empty system prompts, a 511-byte line, and the step limit."""
    outs = {name: (DATA / c["stdout"]).read_bytes() for name, c in CASES.items()}
    for name, c in CASES.items():
        if c["model"] == "chat15M":
            answers = outs[name].split(b"Assistant: ")[1:]
            assert len(answers) >= 2, name
            assert len(set(answers)) == len(answers), name
    assert outs["chat15M_eof"].count(b"Assistant: ") > 3  # run.c re-sent its last line
    assert outs["chat15M_sampled"] != outs["chat15M_greedy"]
    assert not outs["s260k_y_i"].startswith(b"Enter") and not outs["s260k_y_i"].startswith(b"User")
    assert (DATA / CASES["s260k_topp_511"]["lines"]).read_bytes().split(b"\n")[1] == oracle.LINE_511
    assert META["glibc"].startswith("glibc ")


@pytest.mark.slow
def test_a_wrong_loop_fails_the_fixture(chat15m: Path) -> None:
    """Other seeds, other line orders, a system prompt on every turn or a fresh cache per turn all
    print something else than run.c did for chat15M_sampled_short."""
    case = CASES["chat15M_sampled_short"]
    want = (DATA / case["stdout"]).read_bytes()
    lines = (DATA / case["lines"]).read_bytes()
    model = load_checkpoint(chat15m)
    tok = Tokenizer.load(shared_file("models/tokenizer.bin"), model.config.vocab_size)
    ref = Reference(model)

    def talk(text: bytes, seed: int = 5) -> bytes:
        out, _ = runc_chat(ref, tok, Sampler(32000, 1.0, 1.0, seed), fgets_lines(io.BytesIO(text)), steps=100)
        return out

    assert talk(lines) == want
    assert talk(lines, seed=6) != want
    first, *rest = lines.split(b"\n")
    assert talk(b"\n".join([first, rest[1], rest[0], *rest[2:]])) != want

    class Forgetful(Reference):
        def forward(self, token: int, pos: int, trace=None):  # type: ignore[no-untyped-def]
            if token == 1 and pos > 0:
                self.reset()
            return super().forward(token, pos, trace)

    out, _ = runc_chat(Forgetful(model), tok, Sampler(32000, 1.0, 1.0, 5), fgets_lines(io.BytesIO(lines)), steps=100)
    assert out != want


def test_fgets_lines() -> None:
    data = b"a\n" + b"x" * 511 + b"\n" + b"y" * 600 + b"\nnul\0after\n\ncr\r\nlast"
    read = fgets_lines(io.BytesIO(data))
    got = []
    while (line := read()) is not None:
        got.append(line)
    assert got == [b"a", b"x" * 511, b"", b"y" * 511, b"y" * 89, b"nul", b"", b"cr\r", b"last"]
    assert fgets_lines(None)() is None
    assert LINE_BUFFER == 512


def test_runc_rendering() -> None:
    assert render_runc_turn(b"S", b"U", True) == b"[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]"
    assert render_runc_turn(b"", b"U", True) == render_runc_turn(b"S", b"U", False) == b"[INST] U [/INST]"


def test_end_of_input_ends_cleanly(stories260k: Path, tok512: Path, capfdbinary,  # type: ignore[no-untyped-def]
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    base = [str(stories260k), "-z", str(tok512), "-m", "chat", "-n", "40"]
    assert _generate_chat(base, b"", capfdbinary, monkeypatch) == b"Enter system prompt (optional): \n"
    assert _generate_chat(base, b"sys\n", capfdbinary, monkeypatch) == b"Enter system prompt (optional): User: \n"
    out = _generate_chat([*base, "-y", "x", "-i", "Hi"], b"", capfdbinary, monkeypatch)
    assert out.startswith(b"Assistant: ") and out.endswith(b"\n") and b"User" not in out


def test_chat_refusals(stories260k: Path, tok512: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["generate", str(stories260k), "-z", str(tok512)]
    cases = [
        ([*base, "-m", "chat", "-y", "x" * 512], "-y is 512 bytes; run.c's chat mode holds at most 511"),
        ([*base, "-m", "chat", "-i", "x" * 600], "-i is 600 bytes"),
        ([*base, "-y", "x"], "-y (--system) applies to -m chat and --template"),
        ([*base, "-m", "chat", "--template"], "--template is generate mode's one question"),
        ([*base, "--template", "-i", "Hi"], "--template needs a model with a chat template"),
        ([*base, "--template", "-i", "-"], "--template takes its question from -i"),
        (["web", "-m", "chat"], "-m chat: the page types to the story machine (-i -) only"),
        (["web", "--template"], "the page does not render chat templates"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    with pytest.raises(SystemExit):
        main(["generate", "-m", "talk"])
    assert "invalid choice: 'talk'" in capsys.readouterr().err


def test_story_machine(stories260k: Path, tok512: Path, capfdbinary,  # type: ignore[no-untyped-def]
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """-i -: "Prompt: ", run.c's story for that line (the RNG from the seed each time), again, until the end."""
    base = [str(stories260k), "-z", str(tok512), "-n", "30", "-t", "1", "-s", "9"]
    stories = []
    for prompt in ("Once upon a time", "Tom had a dog", "Once upon a time"):
        assert main(["generate", *base, "-i", prompt]) == 0
        stories.append(capfdbinary.readouterr().out)
    assert stories[0] != stories[1]
    out = _generate_chat([*base, "-i", "-"], b"Once upon a time\nTom had a dog\nOnce upon a time", capfdbinary,
                         monkeypatch)
    assert out == b"Prompt: " + b"Prompt: ".join(stories) + b"Prompt: \n"


# ----------------------------------------------------------------------------------------------
# a model with its own template (the SmolLM2 kind): ChatML, its stop id, one KV cache for all turns


@pytest.fixture(scope="module")
def chatty_bytelevel(bytelevel_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The small SmolLM2-kind model with its stop id's (shared) embedding row scaled by 4, so that it
    ends answers within its 96 positions."""
    ckpt, tok = bytelevel_model
    model = load_checkpoint(ckpt)
    model.token_embedding_table[2] *= np.float32(4.0)
    folder = tmp_path_factory.mktemp("chatty")
    write_legacy(model, folder / "model.bin")
    for name in (tok.name, tok.name + ".json"):
        (folder / name).write_bytes(Path(tok.parent, name).read_bytes())
    return folder / "model.bin", folder / tok.name


class Recording(Reference):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.fed: list[tuple[int, int]] = []

    def forward(self, token: int, pos: int, trace=None):  # type: ignore[no-untyped-def]
        self.fed.append((token, pos))
        return super().forward(token, pos, trace)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_template_chat_keeps_one_cache(chatty_bytelevel: tuple[Path, Path], temperature: float) -> None:
    """What the positions 0, 1, 2, ... are fed is the template's rendering of the whole conversation
    with the model's own answers (a fresh render, not the loop's pieces), and each answer is what
    the model samples at its place."""
    ckpt, tokp = chatty_bytelevel
    model = load_checkpoint(ckpt)
    tok = Tokenizer.load(tokp, model.config.vocab_size)
    assert isinstance(tok, ByteLevelTokenizer)
    ref = Recording(model)
    lines = b"Be brief.\nThe capital of France is\nHi\nWhat?\nOk\n"
    out, end = chat(ref, tok, Sampler(model.config.vocab_size, temperature, 1.0, 3), fgets_lines(io.BytesIO(lines)))
    assert end.why == "steps" and end.positions == model.config.seq_len
    assert [p for _, p in ref.fed] == list(range(model.config.seq_len))
    fed = [t for t, _ in ref.fed]
    turns = out.split(b"Assistant: ")[1:]
    assert len(turns) >= 3 and out.startswith(b"Enter system prompt (optional): User: Assistant: ")
    # rebuild the conversation from the fed ids: each answer runs from after "<|im_start|>assistant\n" to <|im_end|>
    start, stop = 1, 2
    text = "".join(tok.token_text(t) for t in fed)
    pieces = text.split("<|im_start|>assistant\n")
    answers = [p.split("<|im_end|>")[0] for p in pieces[1:-1]]
    users = ["The capital of France is", "Hi", "What?", "Ok"][: len(answers) + 1]
    messages = [{"role": "system", "content": "Be brief."}]
    for user, answer in zip(users, [*answers, None], strict=True):
        messages.append({"role": "user", "content": user})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    rendered = render_chat(SMOLLM2_TEMPLATE, messages)
    assert text.startswith(rendered)
    assert fed[0] == start and fed.count(stop) >= 2 * len(answers)


def test_template_chat_cli_and_template_flag(chatty_bytelevel: tuple[Path, Path], capfdbinary,  # type: ignore[no-untyped-def]
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, tok = chatty_bytelevel
    base = [str(ckpt), "-z", str(tok)]
    out = _generate_chat([*base, "-m", "chat", "-y", "Be brief.", "-i", "Hi", "-n", "60"], b"What?\n", capfdbinary,
                         monkeypatch)
    assert out.startswith(b"Assistant: ") and out.count(b"User: ") == 1
    assert _generate_chat([*base, "--chat", "--system", "Be brief.", "-i", "Hi", "-n", "60"], b"What?\n",
                          capfdbinary, monkeypatch) == out
    # --template: generate mode over the rendered question (the prompt printed, specials as nothing)
    assert main(["generate", *base, "--template", "-y", "Be brief.", "-i", "Hi", "-n", "40"]) == 0
    assert capfdbinary.readouterr().out.startswith(b"system\nBe brief.\nuser\nHi\nassistant\n")


def test_template_chat_says_when_the_context_is_full(chatty_bytelevel: tuple[Path, Path], capfd,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, tok = chatty_bytelevel
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\nHi\nWhat?\nOk\nMore\nAgain\n")))
    assert main(["generate", str(ckpt), "-z", str(tok), "-m", "chat"]) == 0
    err = capfd.readouterr().err
    assert "the conversation has used all 96 positions (the model's context); it ends here" in err


def test_template_that_does_not_append_is_refused(chatty_bytelevel: tuple[Path, Path]) -> None:
    ckpt, tokp = chatty_bytelevel
    tok = Tokenizer.load(tokp, load_checkpoint(ckpt).config.vocab_size)
    assert isinstance(tok, ByteLevelTokenizer)
    tok.chat_template = "{% for m in messages|reverse %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"
    turn = template_turns(tok)
    turn([{"role": "user", "content": "a"}])
    with pytest.raises(BootllamaError, match="does not continue a conversation by appending"):
        turn([{"role": "user", "content": "a"}, {"role": "assistant", "content": ANSWER},
              {"role": "user", "content": "b"}])
