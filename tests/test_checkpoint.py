from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL, dequantized, write_v1, write_v2

from bootllama.checkpoint import (
    LEGACY_HEADER_SIZE,
    Config,
    Model,
    atomic_write,
    legacy_layout,
    legacy_size,
    load_checkpoint,
    random_model,
    read_legacy_config,
    tensor_shapes,
    write_legacy,
)
from bootllama.errors import BootllamaError
from bootllama.libm import rope_values
from bootllama.reference import Reference

STORIES = Config(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, seq_len=512,
                 shared_classifier=True)


def assert_same_weights(a: Model, b: Model, *, freq: bool = True) -> None:
    assert a.config == b.config
    for name in tensor_shapes(a.config):
        if name.startswith("freq_cis") and not freq:
            continue
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.float32, name
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), name


def test_stories260k_header_and_tensors(stories260k: Path) -> None:
    model = load_checkpoint(stories260k)
    assert model.config == STORIES
    assert read_legacy_config(stories260k) == STORIES
    assert model.config.head_size == 8 and model.config.kv_dim == 32 and model.config.kv_mul == 2
    assert model.wcls is model.token_embedding_table
    for name, shape in tensor_shapes(STORIES).items():
        assert getattr(model, name).shape == shape, name
    # RoPE at position 0 is the identity rotation
    assert np.all(model.freq_cis_real[0] == 1) and np.all(model.freq_cis_imag[0] == 0)


def test_legacy_layout_is_contiguous_and_matches_file(stories260k: Path) -> None:
    layout = legacy_layout(STORIES)
    assert layout["header"] == (0, LEGACY_HEADER_SIZE)
    assert layout["wcls"] == layout["token_embedding_table"]
    end = LEGACY_HEADER_SIZE
    for name in tensor_shapes(STORIES):
        if name == "wcls":
            continue
        offset, size = layout[name]
        assert offset == end, name
        end = offset + size
    assert end == legacy_size(STORIES) == stories260k.stat().st_size
    data = stories260k.read_bytes()
    model = load_checkpoint(stories260k)
    for name in ("rms_final_weight", "freq_cis_imag", "w2"):
        offset, size = layout[name]
        assert data[offset : offset + size] == getattr(model, name).tobytes()


def test_unshared_layout_puts_wcls_last() -> None:
    config = replace(SMALL, shared_classifier=False)
    layout = legacy_layout(config)
    offset, size = layout["wcls"]
    assert size == 4 * config.vocab_size * config.dim
    assert offset + size == legacy_size(config)


def test_write_legacy_reproduces_stories260k(stories260k: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy.bin"
    write_legacy(load_checkpoint(stories260k), out)
    assert out.read_bytes() == stories260k.read_bytes()


@pytest.mark.parametrize("shared", [True, False])
def test_legacy_round_trip_of_random_models(shared: bool, tmp_path: Path) -> None:
    model = random_model(replace(SMALL, shared_classifier=shared), seed=3)
    write_legacy(model, tmp_path / "m.bin")
    back = load_checkpoint(tmp_path / "m.bin")
    assert_same_weights(model, back)
    assert (back.wcls is back.token_embedding_table) == shared
    struct_vocab = struct.unpack_from("<7i", (tmp_path / "m.bin").read_bytes())[5]
    assert struct_vocab == (SMALL.vocab_size if shared else -SMALL.vocab_size)


@pytest.mark.parametrize("shared", [True, False])
def test_version1_reads_and_converts(shared: bool, tmp_path: Path) -> None:
    model = random_model(replace(SMALL, shared_classifier=shared), seed=4)
    write_v1(model, tmp_path / "v1.bin")
    v1 = load_checkpoint(tmp_path / "v1.bin")
    assert_same_weights(model, v1)  # random_model's tables are run.c's, as v1 loading computes them
    real, imag = rope_values(SMALL.head_size, SMALL.seq_len)
    assert np.array_equal(v1.freq_cis_real, real) and np.array_equal(v1.freq_cis_imag, imag)
    write_legacy(v1, tmp_path / "v0.bin")
    assert_same_weights(v1, load_checkpoint(tmp_path / "v0.bin"))


@pytest.mark.parametrize(("shared", "group_size"), [(True, 32), (False, 16)])
def test_version2_dequantizes_and_converts(shared: bool, group_size: int, tmp_path: Path) -> None:
    model = random_model(replace(SMALL, shared_classifier=shared), seed=5)
    write_v2(model, tmp_path / "v2.bin", group_size)
    v2 = load_checkpoint(tmp_path / "v2.bin")
    for name in ("token_embedding_table", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "wcls"):
        expect = dequantized(getattr(model, name), group_size)
        assert np.array_equal(getattr(v2, name), expect), name
    for name in ("rms_att_weight", "rms_ffn_weight", "rms_final_weight"):
        assert np.array_equal(getattr(v2, name), getattr(model, name)), name
    assert (v2.wcls is v2.token_embedding_table) == shared
    write_legacy(v2, tmp_path / "v0.bin")
    assert_same_weights(v2, load_checkpoint(tmp_path / "v0.bin"))


def test_random_model_is_deterministic_and_valid() -> None:
    a, b = random_model(SMALL, seed=9), random_model(SMALL, seed=9)
    assert_same_weights(a, b)
    c = random_model(SMALL, seed=10)
    assert not np.array_equal(a.wq, c.wq)
    a.check()


@pytest.mark.parametrize(
    "config",
    [SMALL, replace(SMALL, shared_classifier=False),
     Config(dim=48, hidden_dim=64, n_layers=3, n_heads=6, n_kv_heads=3, vocab_size=300, seq_len=40)],
)
def test_random_model_greedy_text_is_varied_and_decisive(config: Config) -> None:
    ref = Reference(random_model(config, seed=0))
    token, seen, gaps = 1, [], []
    for pos in range(32):
        logits = ref.forward(token, pos)
        top2 = np.sort(logits)[-2:]
        gaps.append(float(top2[1] - top2[0]) / max(1.0, float(abs(top2[1]))))
        token = int(np.argmax(logits))
        seen.append(token)
    assert len(set(seen)) >= 8, seen
    # a float rounding difference of ~1e-6 cannot swap the winner
    assert min(gaps) > 1e-4, min(gaps)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_write_legacy_rejects_a_bad_model_without_writing(tmp_path: Path) -> None:
    model = random_model(SMALL, seed=1)
    broken = replace(model, wq=model.wq[:, :-1])
    with pytest.raises(BootllamaError, match="wq"):
        write_legacy(broken, tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


def test_write_legacy_to_missing_directory_is_a_bootllama_error(tmp_path: Path) -> None:
    with pytest.raises(BootllamaError, match="cannot write"):
        write_legacy(random_model(SMALL, seed=1), tmp_path / "nope" / "x.bin")


# --- bad files -------------------------------------------------------------------------


def _legacy_bytes(config: Config, tmp_path: Path) -> bytes:
    write_legacy(random_model(config, seed=0), tmp_path / "good.bin")
    return (tmp_path / "good.bin").read_bytes()


def _bad(tmp_path: Path, data: bytes, pattern: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    with pytest.raises(BootllamaError, match=pattern) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_truncated_legacy(tmp_path: Path) -> None:
    data = _legacy_bytes(SMALL, tmp_path)
    _bad(tmp_path, data[:-4], "truncated")
    _bad(tmp_path, data[:20], "too short")
    _bad(tmp_path, b"", "too short")


def test_oversized_legacy(tmp_path: Path) -> None:
    _bad(tmp_path, _legacy_bytes(SMALL, tmp_path) + b"\0", r"implies \d+")


@pytest.mark.parametrize(
    ("ints", "pattern"),
    [
        ((0, 48, 2, 4, 2, 512, 64), "dim=0"),
        ((32, -48, 2, 4, 2, 512, 64), "hidden_dim=-48"),
        ((32, 48, 2, 5, 5, 512, 64), "not a multiple of n_heads"),
        ((32, 48, 2, 4, 3, 512, 64), "not a multiple of n_kv_heads"),
        ((36, 48, 2, 4, 2, 512, 64), "must be even"),
        ((32, 48, 2, 4, 2, 0, 64), "vocab_size=0"),
        ((32, 48, 2, 4, 2, 512, 0), "seq_len=0"),
    ],
)
def test_bad_legacy_dims(ints: tuple[int, ...], pattern: str, tmp_path: Path) -> None:
    data = _legacy_bytes(SMALL, tmp_path)
    _bad(tmp_path, struct.pack("<7i", *ints) + data[LEGACY_HEADER_SIZE:], pattern)


def test_bad_magic(tmp_path: Path) -> None:
    write_v1(random_model(SMALL, seed=0), tmp_path / "v1.bin")
    data = bytearray((tmp_path / "v1.bin").read_bytes())
    data[0:4] = b"XXXX"
    _bad(tmp_path, bytes(data), "bad magic")


def test_unknown_version(tmp_path: Path) -> None:
    write_v1(random_model(SMALL, seed=0), tmp_path / "v1.bin")
    data = bytearray((tmp_path / "v1.bin").read_bytes())
    data[4:8] = struct.pack("<i", 3)
    _bad(tmp_path, bytes(data), "unsupported ak42 checkpoint version 3")


@pytest.mark.parametrize("writer", [write_v1, write_v2])
def test_truncated_versioned(writer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    writer(random_model(SMALL, seed=0), tmp_path / "v.bin")
    data = (tmp_path / "v.bin").read_bytes()
    _bad(tmp_path, data[:-1], "truncated")
    _bad(tmp_path, data[:30], "too short")


def test_versioned_bad_dims_and_flag(tmp_path: Path) -> None:
    write_v1(random_model(SMALL, seed=0), tmp_path / "v1.bin")
    data = bytearray((tmp_path / "v1.bin").read_bytes())
    bad_dims = bytearray(data)
    bad_dims[8:12] = struct.pack("<i", 30)
    _bad(tmp_path, bytes(bad_dims), "dim=30 is not a multiple")
    bad_flag = bytearray(data)
    bad_flag[36] = 7
    _bad(tmp_path, bytes(bad_flag), "flag is 7")


def test_version2_bad_group_size(tmp_path: Path) -> None:
    write_v2(random_model(SMALL, seed=0), tmp_path / "v2.bin", 32)
    data = bytearray((tmp_path / "v2.bin").read_bytes())
    data[37:41] = struct.pack("<i", 0)
    _bad(tmp_path, bytes(data), "group size 0")
    data[37:41] = struct.pack("<i", 5)
    _bad(tmp_path, bytes(data), "group size 5 does not divide")


def test_read_legacy_config_refuses_versioned_files(tmp_path: Path) -> None:
    write_v1(random_model(SMALL, seed=0), tmp_path / "v1.bin")
    with pytest.raises(BootllamaError, match="bootllama convert"):
        read_legacy_config(tmp_path / "v1.bin")


def test_missing_file_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.bin")
