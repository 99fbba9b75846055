"""`bootllama convert MODEL.gguf`: small GGUF files written with gguf's own writer, in every
supported tensor type, read back as legacy checkpoints; the values against gguf's dequantization
(and, for two types, against the block layout decoded by hand); RoPE base, shapes, classifier;
and the refusals, each one line with no file left behind."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import bytelevel_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bootllama.checkpoint import Config, Model, load_checkpoint, random_model
from bootllama.cli import main
from bootllama.errors import BootllamaError
from bootllama.gguf_convert import SUPPORTED_TYPES, convert_gguf, read_gguf, rope_tables_base
from bootllama.tokenizer import ByteLevelTokenizer, Tokenizer, sidecar_path

Q = gguf.GGMLQuantizationType
# quantized blocks are 32 wide along ne[0]: every matrix's input width is a multiple of 32
CONFIG = Config(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=0, seq_len=32)
BASE = 100000.0


@pytest.fixture(scope="module")
def tok() -> ByteLevelTokenizer:
    return bytelevel_tokenizer()


@pytest.fixture(scope="module")
def model(tok: ByteLevelTokenizer) -> Model:
    return random_model(replace(CONFIG, vocab_size=tok.vocab_size, shared_classifier=False), seed=3)


def _stored(arr: np.ndarray, qtype: Q) -> np.ndarray:
    """What gguf stores for ``arr`` in ``qtype`` (norms stay F32, as llama.cpp keeps them)."""
    if qtype == Q.F32 or arr.ndim == 1:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == Q.F16:
        return arr.astype(np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), qtype)


def write_gguf(path: Path, model: Model, tok: ByteLevelTokenizer, qtype: Q = Q.F32, *, tied: bool = True,
               arch: str = "llama", eps: float = 1e-5, dim: int | None = None, tokenizer_model: str = "gpt2",
               context: int = 64, extra_tensor: str | None = None, raw_type: Q | None = None,
               rope_dims: int | None = None, scaling: str | None = None, pre: str = "smollm") -> dict[str, np.ndarray]:
    """A llama GGUF of ``model`` and ``tok`` as llama.cpp lays one out; returns name -> what is stored."""
    c = model.config
    w = gguf.GGUFWriter(path, arch)
    a = f"{arch}."
    w.add_uint32(a + "context_length", context)
    w.add_uint32(a + "embedding_length", dim or c.dim)
    w.add_uint32(a + "feed_forward_length", c.hidden_dim)
    w.add_uint32(a + "block_count", c.n_layers)
    w.add_uint32(a + "attention.head_count", c.n_heads)
    w.add_uint32(a + "attention.head_count_kv", c.n_kv_heads)
    w.add_float32(a + "rope.freq_base", BASE)
    w.add_float32(a + "attention.layer_norm_rms_epsilon", eps)
    w.add_uint32(a + "rope.dimension_count", rope_dims or c.head_size)
    if scaling:
        w.add_string(a + "rope.scaling.type", scaling)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    side = tok.sidecar
    specials = {t["id"]: t["text"] for t in side["special_tokens"]}
    from bootllama.bpe import bytes_to_unicode

    b2u = bytes_to_unicode()
    w.add_token_list([specials.get(i) or "".join(b2u[b] for b in p) for i, p in enumerate(tok.pieces)])
    w.add_token_types([3 if i in specials else 1 for i in range(tok.vocab_size)])
    w.add_token_merges(side["merges"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(side["chat_template"])
    stored: dict[str, np.ndarray] = {}

    def put(name: str, arr: np.ndarray) -> None:
        data = _stored(arr, qtype)
        if raw_type is not None and arr.ndim == 2:
            data = np.zeros((arr.shape[0], gguf.GGML_QUANT_SIZES[raw_type][1] * arr.shape[1] // 256), np.uint8)
            w.add_tensor(name, data, raw_dtype=raw_type)
        elif data.dtype == np.uint8:
            w.add_tensor(name, data, raw_dtype=qtype)
        else:
            w.add_tensor(name, data)
        stored[name] = data

    put("token_embd.weight", model.token_embedding_table)
    for l in range(c.n_layers):
        for short, attr in (("attn_norm", "rms_att_weight"), ("attn_q", "wq"), ("attn_k", "wk"), ("attn_v", "wv"),
                            ("attn_output", "wo"), ("ffn_norm", "rms_ffn_weight"), ("ffn_gate", "w1"),
                            ("ffn_down", "w2"), ("ffn_up", "w3")):
            put(f"blk.{l}.{short}.weight", getattr(model, attr)[l])
    put("output_norm.weight", model.rms_final_weight)
    if not tied:
        put("output.weight", model.wcls)
    if extra_tensor:
        put(extra_tensor, np.ones(c.head_size // 2, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def _deq(stored: np.ndarray, qtype: Q) -> np.ndarray:
    if stored.dtype == np.float32:
        return stored
    if stored.dtype == np.float16:
        return stored.astype(np.float32)
    return gguf.quants.dequantize(stored, qtype)


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES)
def test_every_type_reads_as_gguf_dequantizes_it(tmp_path: Path, model: Model, tok: ByteLevelTokenizer,
                                                 qtype: str) -> None:
    t = Q[qtype]
    stored = write_gguf(tmp_path / "m.gguf", model, tok, t)
    conv = read_gguf(tmp_path / "m.gguf")
    m = conv.model
    c = m.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len) == (
        64, 96, 2, 4, 2, tok.vocab_size, 64)
    assert c.shared_classifier and m.wcls is m.token_embedding_table
    assert np.array_equal(m.token_embedding_table, _deq(stored["token_embd.weight"], t))
    for l in range(2):
        assert np.array_equal(m.wq[l], _deq(stored[f"blk.{l}.attn_q.weight"], t))
        assert np.array_equal(m.wk[l], _deq(stored[f"blk.{l}.attn_k.weight"], t))
        assert np.array_equal(m.w2[l], _deq(stored[f"blk.{l}.ffn_down.weight"], t))
        assert np.array_equal(m.w3[l], _deq(stored[f"blk.{l}.ffn_up.weight"], t))
        assert np.array_equal(m.rms_ffn_weight[l], model.rms_ffn_weight[l])
    # the quantization is lossy but close: the values are the model's, in the right places
    tol = {"F32": 0, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 0.02, "Q5_0": 0.1, "Q5_1": 0.1}.get(qtype, 0.25)
    assert np.abs(m.w1 - model.w1).max() <= tol * np.abs(model.w1).max()
    assert np.abs(m.wo - model.wo).max() <= tol * np.abs(model.wo).max()


def test_q8_0_and_q4_1_blocks_decoded_by_hand(tmp_path: Path, model: Model, tok: ByteLevelTokenizer) -> None:
    """Independent of gguf's dequantize: Q8_0 = f16 d + 32 int8; Q4_1 = f16 d, f16 m + 16 bytes of nibbles
    (low nibbles are values 0..15 of the block, high nibbles 16..31), value = d * q (+ m)."""
    for qtype in (Q.Q8_0, Q.Q4_1):
        stored = write_gguf(tmp_path / f"{qtype.name}.gguf", model, tok, qtype)
        m = read_gguf(tmp_path / f"{qtype.name}.gguf").model
        raw = stored["blk.1.ffn_gate.weight"]  # w1[1]: (96, 64) -> 2 blocks per row
        blocks = raw.reshape(-1, raw.shape[1] // 2)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        if qtype == Q.Q8_0:
            vals = d * blocks[:, 2:].copy().view(np.int8).astype(np.float32)
        else:
            mins = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
            qs = blocks[:, 4:]
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
            vals = d * q + mins
        assert np.array_equal(m.w1[1], vals.reshape(96, 64))


def test_rope_tables_use_the_file_base(tmp_path: Path, model: Model, tok: ByteLevelTokenizer) -> None:
    write_gguf(tmp_path / "m.gguf", model, tok)
    conv = read_gguf(tmp_path / "m.gguf", seq_len=20)
    m = conv.model
    assert conv.rope_base == BASE and m.config.seq_len == 20
    hs = m.config.head_size
    for pos, j in ((0, 0), (1, 1), (7, 3), (19, 7)):
        angle = pos * BASE ** (-2 * j / hs)
        assert m.freq_cis_real[pos, j] == np.float32(math.cos(angle))
        assert m.freq_cis_imag[pos, j] == np.float32(math.sin(angle))
    real, imag = rope_tables_base(20, hs, BASE)
    assert np.array_equal(m.freq_cis_real, real) and np.array_equal(m.freq_cis_imag, imag)


def test_separate_classifier_and_files_on_disk(tmp_path: Path, model: Model, tok: ByteLevelTokenizer) -> None:
    write_gguf(tmp_path / "m.gguf", model, tok, tied=False)
    conv = convert_gguf(tmp_path / "m.gguf", tmp_path / "out.bin", tmp_path / "tok.bin", progress=False)
    back = load_checkpoint(tmp_path / "out.bin")
    assert not back.config.shared_classifier
    assert np.array_equal(back.wcls, model.wcls) and np.array_equal(back.wq, model.wq)
    assert back.config == conv.model.config
    loaded = Tokenizer.load(tmp_path / "tok.bin", back.config.vocab_size)
    assert isinstance(loaded, ByteLevelTokenizer)
    assert loaded.pieces == tok.pieces and loaded.stop_id == 2 and loaded.byte_piece_base is None
    assert loaded.sidecar["merges"] == tok.sidecar["merges"]
    assert loaded.sidecar["special_tokens"] == tok.sidecar["special_tokens"]
    assert loaded.chat_template == tok.chat_template
    assert sidecar_path(tmp_path / "tok.bin") == tmp_path / "tok.bin.json"
    text = "The capital of France is Paris. 1234 <|im_end|> café"
    assert loaded.encode(text) == tok.encode(text)


def test_cli_convert_gguf_and_legacy(tmp_path: Path, model: Model, tok: ByteLevelTokenizer,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    write_gguf(tmp_path / "m.gguf", model, tok, Q.Q8_0)
    assert main(["convert", str(tmp_path / "m.gguf"), "-o", str(tmp_path / "a.bin"),
                 "--tokenizer-out", str(tmp_path / "a-tok.bin"), "--seq-len", "16"]) == 0
    err = capsys.readouterr().err
    assert "RoPE base 100000" in err and "stop id 2" in err
    assert load_checkpoint(tmp_path / "a.bin").config.seq_len == 16
    assert (tmp_path / "a-tok.bin.json").is_file()
    # the default tokenizer name, and -o for a llama2.c checkpoint as well as the positional form
    assert main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "b.bin")]) == 0
    assert (tmp_path / "b-tokenizer.bin").is_file() and (tmp_path / "b-tokenizer.bin.json").is_file()
    assert main(["convert", str(tmp_path / "a.bin"), "-o", str(tmp_path / "c.bin")]) == 0
    assert (tmp_path / "c.bin").read_bytes() == (tmp_path / "a.bin").read_bytes()


REFUSALS = [
    (dict(arch="gptneox"), "architecture 'gptneox' is not supported"),
    (dict(raw_type=Q.Q6_K), "Q6_K, an unsupported type"),
    (dict(dim=2048), "exceed the engine's buffers"),
    (dict(eps=1e-6), "RMSNorm eps 1e-06 is not the engine's 1e-5"),
    (dict(tokenizer_model="llama"), "tokenizer model 'llama' is not supported"),
    (dict(extra_tensor="rope_freqs.weight"), "tensor rope_freqs.weight has no place"),
    (dict(context=8), "--seq-len 16 must be between 1 and 8"),
    (dict(rope_dims=8), "RoPE over 8 of 16 head dimensions cannot be carried"),
    (dict(scaling="yarn"), "RoPE scaling 'yarn' cannot be carried"),
    (dict(pre="qwen2"), "pre-tokenizer 'qwen2' is not supported"),
]


@pytest.mark.parametrize(("kwargs", "message"), REFUSALS, ids=[m for _, m in REFUSALS])
def test_refusals_are_one_line_and_leave_nothing(tmp_path: Path, model: Model, tok: ByteLevelTokenizer,
                                                 capsys: pytest.CaptureFixture[str], kwargs: dict,
                                                 message: str) -> None:
    if kwargs.get("raw_type") is not None:  # K-quant blocks span 256 values: a model wide enough for one
        model = random_model(replace(CONFIG, dim=256, hidden_dim=256, vocab_size=tok.vocab_size), seed=4)
    write_gguf(tmp_path / "m.gguf", model, tok, **kwargs)
    before = set(tmp_path.iterdir())
    assert main(["convert", str(tmp_path / "m.gguf"), "-o", str(tmp_path / "out.bin"), "--seq-len", "16"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bootllama: error: ") and message in err, err
    assert set(tmp_path.iterdir()) == before


def test_seq_len_beyond_the_engine_is_refused(tmp_path: Path, model: Model, tok: ByteLevelTokenizer) -> None:
    from bootllama.image import MAX_SEQ

    write_gguf(tmp_path / "m.gguf", model, tok, context=8192)
    assert read_gguf(tmp_path / "m.gguf").model.config.seq_len == MAX_SEQ  # the default caps it
    with pytest.raises(BootllamaError, match="between 1 and 1024"):
        read_gguf(tmp_path / "m.gguf", seq_len=MAX_SEQ + 1)


def test_not_a_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.gguf").write_bytes(b"GGUF" + b"\xff" * 40)
    assert main(["convert", str(tmp_path / "x.gguf"), "-o", str(tmp_path / "o.bin")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read GGUF" in err
    assert not (tmp_path / "o.bin").exists()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_gguf_is_a_bootllama_error(tmp_path: Path, q41_file: bytes, data: st.DataObject) -> None:
    """Truncated or overwritten GGUF files: a model or one BootllamaError, never another exception."""
    raw = bytearray(q41_file)
    kind = data.draw(st.sampled_from(["truncate", "bytes", "header"]))
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        limit = 4096 if kind == "header" else len(raw) - 8
        pos = data.draw(st.integers(4, limit))
        raw[pos : pos + 8] = data.draw(st.binary(min_size=8, max_size=8))
    path = tmp_path / "f.gguf"
    path.write_bytes(bytes(raw))
    try:
        read_gguf(path)
    except BootllamaError as e:
        assert "\n" not in str(e)


@pytest.fixture(scope="module")
def q41_file(tmp_path_factory: pytest.TempPathFactory, model: Model, tok: ByteLevelTokenizer) -> bytes:
    path = tmp_path_factory.mktemp("q41") / "m.gguf"
    write_gguf(path, model, tok, Q.Q4_1)
    return path.read_bytes()
