"""RoPE as run.c computes it: bootllama.libm.rope_values against the host's glibc (generic
build), rope_base on real, converted and random tables, and the rotation values in the image."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bootllama import image, libm
from bootllama.checkpoint import Config, load_checkpoint, packaged_path, random_model, write_legacy
from bootllama.hostlibm import HostLibm
from bootllama.reference import Reference

F = np.float32
CKPT = packaged_path("stories260K.bin")
TOK = packaged_path("tok512.bin")


@pytest.fixture(scope="module")
def generic() -> Iterator[HostLibm]:
    with HostLibm(generic=True) as host:
        yield host


def runc_rope(host: HostLibm, head_size: int, seq_len: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """run.c's loop with glibc's own powf/cosf/sinf; the float32 divisions and products in NumPy
    round as C's do."""
    head_dim = np.arange(0, head_size, 2).astype(F)
    freq = F(1.0) / host("powf", F(base), head_dim / F(head_size))
    val = np.arange(seq_len).astype(F)[:, None] * freq[None, :]
    return host("cosf", val), host("sinf", val)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def test_rope_values_equal_glibc_for_every_head_size_and_position(generic: HostLibm) -> None:
    """Head sizes 2..128 (even), positions 0..1023: bit for bit."""
    for head_size in range(2, 129, 2):
        want = runc_rope(generic, head_size, 1024)
        got = libm.rope_values(head_size, 1024)
        assert same(got[0], want[0]) and same(got[1], want[1]), head_size


@pytest.mark.parametrize("base", [100000.0, 500000.0])
def test_rope_values_with_another_base(generic: HostLibm, base: float) -> None:
    for head_size in (8, 64, 128):
        want = runc_rope(generic, head_size, 1024, base)
        got = libm.rope_values(head_size, 1024, base)
        assert same(got[0], want[0]) and same(got[1], want[1])


def test_rope_values_shape_and_position_zero() -> None:
    fcr, fci = libm.rope_values(6, 5)
    assert fcr.shape == fci.shape == (5, 3) and fcr.dtype == F
    assert np.all(fcr[0] == 1) and np.all(fci[0] == 0)
    with pytest.raises(ValueError):
        libm.rope_values(7, 5)


# ----------------------------------------------------------------------------------------
# rope_base


def torch_like_tables(head_size: int, seq_len: int, base: float, float64: bool = False) -> tuple[np.ndarray, ...]:
    """Tables as an exporter makes them: float32 frequencies and angles with NumPy's cos/sin
    (or everything in float64), which differ from glibc's values in the last bits."""
    if float64:
        ang = np.outer(np.arange(seq_len), 1.0 / base ** (np.arange(0, head_size, 2) / head_size))
    else:
        freq = (F(1.0) / (F(base) ** (np.arange(0, head_size, 2).astype(F) / F(head_size)))).astype(F)
        ang = np.outer(np.arange(seq_len, dtype=F), freq).astype(F)
    return np.cos(ang).astype(F), np.sin(ang).astype(F)


def test_rope_base_of_llama2c_checkpoints_is_10000() -> None:
    model = load_checkpoint(CKPT)
    assert libm.rope_base(model.freq_cis_real, model.freq_cis_imag, 8) == 10000.0
    assert libm.rope_base(*torch_like_tables(64, 1024, 10000.0), 64) == 10000.0


@pytest.mark.parametrize(("head_size", "seq_len", "base"),
                         [(64, 1024, 100000.0), (64, 2048, 500000.0), (8, 512, 100000.0), (4, 64, 12345.0),
                          (128, 1024, 1000000.0)])
def test_rope_base_finds_a_converted_models_base(head_size: int, seq_len: int, base: float) -> None:
    assert libm.rope_base(*torch_like_tables(head_size, seq_len, base), head_size) == base
    assert libm.rope_base(*torch_like_tables(head_size, seq_len, base, float64=True), head_size) == base
    assert libm.rope_base(*libm.rope_values(head_size, seq_len, base), head_size) == base


def test_rope_base_ignores_tables_that_match_no_base() -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, 512, 4)).astype(F)
    assert libm.rope_base(noise[0], noise[1], 8) == 10000.0
    # right at position 1, wrong further on: not a rotation table
    fcr, fci = (t.copy() for t in libm.rope_values(8, 512, 100000.0))
    fcr[300, 2] += F(0.01)
    assert libm.rope_base(fcr, fci, 8) == 10000.0
    assert libm.rope_base(np.zeros((512, 4), F), np.zeros((512, 4), F), 8) == 10000.0
    # head size 2 (one frequency, 1 for any base) or one position: nothing to tell; 10000
    assert libm.rope_base(*libm.rope_values(2, 64, 100000.0), 2) == 10000.0
    assert libm.rope_base(*libm.rope_values(8, 1, 100000.0), 8) == 10000.0


def test_reference_uses_the_base_the_tables_encode() -> None:
    config = Config(32, 48, 1, 2, 2, 64, 64)
    model = random_model(config, seed=3)
    fcr, fci = libm.rope_values(16, 64, 100000.0)
    model.freq_cis_real[:] = fcr
    model.freq_cis_imag[:] = fci
    got = Reference(model).rope(40)
    assert same(got[0], fcr[40]) and same(got[1], fci[40])
    assert not same(libm.rope_values(16, 64)[0][40], fcr[40])


# ----------------------------------------------------------------------------------------
# the image


def region(data: bytes, lay: image.Layout, addr: int, n: int) -> bytes:
    off = (addr - image.DATA) + lay.data_lba * 512
    return data[off : off + n]


@pytest.mark.parametrize("base", [None, 100000.0])
def test_image_carries_runcs_rotation_values(tmp_path: Path, base: float | None) -> None:
    """The builder writes rope_values (for the base the tables encode) beside the unchanged
    checkpoint, and the manifest's M_FR points at them (M_NQK beside it: the heads rotated)."""
    if base is None:
        ckpt = CKPT
        want = libm.rope_values(8, 512)
    else:
        model = random_model(Config(64, 96, 2, 4, 2, 512, 256), seed=5)
        want = libm.rope_values(16, 256, base)
        model.freq_cis_real[:], model.freq_cis_imag[:] = want
        ckpt = tmp_path / "m.bin"
        write_legacy(model, ckpt)
    engine = image.assemble()
    img = image.build_image(ckpt, TOK, tmp_path / "a.img", engine=engine)
    data = img.path.read_bytes()
    lay = img.layout
    c = lay.config
    fields = region(data, lay, image.DATA, 512)[384:]
    m_fr, m_nqk = struct.unpack_from("<2I", fields, 128 - 76)  # M_FR, M_NQK (bp-76, bp-72)
    assert m_fr == lay.rope_addr and m_nqk == c.n_kv_heads + c.n_heads
    n = c.seq_len * (c.head_size // 2) * 4
    pairs = np.frombuffer(region(data, lay, m_fr, 2 * n), dtype="<f4").reshape(c.seq_len, -1, 2)
    assert same(pairs[..., 0], want[0]) and same(pairs[..., 1], want[1])
    assert region(data, lay, lay.checkpoint_addr, Path(ckpt).stat().st_size) == Path(ckpt).read_bytes()
    # the region lies inside what the loader reads, and the plan keeps it below the logits
    assert lay.rope_addr + 2 * n <= image.DATA + lay.chunks * image.CHUNK * 512
    assert lay.rope_addr + 2 * n <= lay.logits_addr
    assert lay.rope_addr >= lay.table_addr + 4 * image.table_entries(c)
