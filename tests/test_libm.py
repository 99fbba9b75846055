"""bootllama.libm against the host's glibc (generic build, FMA masked) through hostlibm.

The quick tests take a few hundred thousand inputs spread over each function's range plus
its special cases; the exhaustive ones (every float32 in a range) carry the ``slow`` marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pytest

from bootllama import libm
from bootllama.hostlibm import HostLibm, every_float

F = np.float32


@pytest.fixture(scope="module")
def generic() -> Iterator[HostLibm]:
    with HostLibm(generic=True) as host:
        yield host


@pytest.fixture(scope="module")
def default() -> Iterator[HostLibm]:
    with HostLibm(generic=False) as host:
        yield host


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise: identical float32 bits, or both NaN."""
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def assert_same(x: np.ndarray, got: np.ndarray, want: np.ndarray) -> None:
    bad = ~same_bits(got, want)
    if bad.any():
        i = np.nonzero(bad)[0][:5]
        rows = [f"x={float(x[k]).hex()} port={float(got[k]).hex()} glibc={float(want[k]).hex()}" for k in i]
        pytest.fail(f"{int(bad.sum())} of {x.size} differ: " + "; ".join(rows))


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 1e-38, 1.0, -1.0,
                    3e38, -3e38, 88.0, 88.72283, 88.72284, 89.0, -87.0, -103.2, -103.28, -103.3,
                    -103.97, -103.98, -104.0, -150.0], dtype=F)


def spread(n: int, seed: int = 7) -> np.ndarray:
    """n float32 bit patterns spread over all of them (NaNs and infinities included)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(F)


# ----------------------------------------------------------------------------------------
# the generic process really is another build


def has_fma() -> bool:
    with open("/proc/cpuinfo") as f:
        flags = f.read().split()
    return "fma" in flags and "avx2" in flags


# Inputs where the FMA build and the generic one differ, found by comparing the two on 20
# million random inputs each (one in each): (function, input bits, generic result, FMA result).
FMA_DIFFERS = [
    ("expf", 0xC27C65D9, 0x11FA2992, 0x11FA2993),  # -0x1.f8cbb2p+5
    ("sinf", 0x42CF5854, 0x382EE64F, 0x382EE64E),  # 0x1.9eb0a8p+6
    ("cosf", 0xC18A3ADE, 0xB784F76F, 0xB784F770),  # -0x1.1475bcp+4
]


@pytest.mark.parametrize(("name", "xbits", "generic_bits", "fma_bits"), FMA_DIFFERS)
def test_masked_process_gets_the_generic_build(generic: HostLibm, default: HostLibm, name: str, xbits: int,
                                               generic_bits: int, fma_bits: int) -> None:
    """GENERIC_TUNABLES changes the build: the masked process's result is the port's, and on a
    CPU with FMA the default process's differs from it by one ulp on this input."""
    x = np.array([xbits], dtype=np.uint32).view(F)
    want = generic(name, x)
    assert_same(x, getattr(libm, name)(x), want)
    assert want.view(np.uint32)[0] == generic_bits
    if not has_fma():
        pytest.skip("no FMA on this CPU: both processes use the generic build")
    assert default(name, x).view(np.uint32)[0] == fma_bits


# ----------------------------------------------------------------------------------------
# expf


def test_exp2f_table_is_2_to_the_i_over_32_rounded() -> None:
    """Each entry plus (i << 47) is the double nearest 2^(i/32): checked with exact rationals."""
    for i, entry in enumerate(libm.EXP2F_TABLE.tolist()):
        d = np.array(entry + (i << 47), dtype=np.uint64).view(np.float64).item()
        _, e = np.frexp(d)
        half_ulp = Fraction(2) ** (int(e) - 54)
        lo, hi = Fraction(d) - half_ulp, Fraction(d) + half_ulp
        assert lo**32 < 2**i < hi**32, i


def test_expf_constants_are_glibcs() -> None:
    assert float.fromhex("0x1.71547652b82fep+5") == libm.EXPF_INVLN2N
    assert abs(libm.EXPF_INVLN2N * np.log(2.0) - 32) < 1e-13
    assert libm.EXPF_POLY[2] * 32 == float.fromhex("0x1.62e42ff0c52d6p-1")
    assert libm.EXP2F_SHIFT == 1.5 * 2.0**52


def test_expf_spread_and_special(generic: HostLibm) -> None:
    x = np.concatenate([SPECIAL, spread(300_000), np.linspace(-104, 89, 300_001, dtype=F)])
    assert_same(x, libm.expf(x), generic("expf", x))


def test_expf_double_is_the_value_expf_rounds() -> None:
    x = np.linspace(-87.0, 87.0, 100_001, dtype=F)
    y = libm.expf_double(x)
    assert y.dtype == np.float64 and same_bits(y.astype(F), libm.expf(x)).all()
    assert abs(float(libm.expf_double(F(1.0))) - np.e) < 1e-9


def test_expf_keeps_shape_and_takes_scalars() -> None:
    assert libm.expf(np.zeros((3, 4), dtype=F)).shape == (3, 4)
    assert libm.expf(0.0).shape == ()
    assert libm.expf(1.0).dtype == F and float(libm.expf(0.0)) == 1.0


@pytest.mark.slow
def test_expf_every_float_in_softmax_and_silu_range(generic: HostLibm) -> None:
    """Every float32 in [-104, 89] (about 2.2e9 inputs; a few minutes)."""
    for x in every_float(-104.0, 89.0):
        assert_same(x, libm.expf(x), generic("expf", x))


# ----------------------------------------------------------------------------------------
# powf


POW_SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0,
                        1e-45, -1e-45, 1e-40, 3e38, -3e38, 10000.0, 100000.0, 126.5, -149.5, -150.0], dtype=F)


def test_powf_special_grid(generic: HostLibm) -> None:
    x, y = np.meshgrid(POW_SPECIAL, POW_SPECIAL)
    assert_same(np.stack([x, y]).reshape(2, -1).T.ravel(), libm.powf(x, y).ravel(), generic("powf", x, y).ravel())


def test_powf_spread(generic: HostLibm) -> None:
    rng = np.random.default_rng(11)
    cases = [
        (spread(200_000, 1), spread(200_000, 2)),
        (np.abs(spread(200_000, 3)), rng.uniform(-4, 4, 200_000).astype(F)),
        (rng.uniform(-10, 10, 200_000).astype(F), np.round(rng.uniform(-40, 40, 200_000)).astype(F)),
    ]
    for x, y in cases:
        assert_same(x, libm.powf(x, y), generic("powf", x, y))


def test_powf_rope_exponents(generic: HostLibm) -> None:
    """run.c's powf(10000, i / head_size) for every head size up to 1024, and base 100000."""
    e = np.unique(np.concatenate([np.arange(0, h, 2, dtype=F) / F(h) for h in range(2, 1025, 2)]))
    for base in (10000.0, 100000.0, 500000.0):
        assert_same(e, libm.powf(F(base), e), generic("powf", F(base), e))


@pytest.mark.slow
def test_powf_every_exponent_in_0_1(generic: HostLibm) -> None:
    """powf(base, e) for every float32 e in [0, 1) and the bases RoPE uses (about 1e9 each)."""
    for base in (10000.0, 100000.0):
        for e in every_float(0.0, float(np.nextafter(F(1), F(0)))):
            assert_same(e, libm.powf(F(base), e), generic("powf", F(base), e))


# ----------------------------------------------------------------------------------------
# sinf, cosf


@pytest.mark.parametrize("name", ["sinf", "cosf"])
def test_sincosf_spread_and_special(generic: HostLibm, name: str) -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([SPECIAL, spread(300_000, 9), rng.uniform(-2000, 2000, 300_000).astype(F),
                        np.linspace(-1.0, 1.0, 100_001, dtype=F), np.linspace(115, 125, 100_001, dtype=F),
                        np.array([2.0**-12, 2.0**-13, 2.0**-126, 0.75, 0.7853981], dtype=F)])
    fn = getattr(libm, name)
    assert_same(x, fn(x), generic(name, x))
    assert_same(-x, fn(-x), generic(name, -x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sinf", "cosf"])
def test_sincosf_every_float_in_rope_range(generic: HostLibm, name: str) -> None:
    """Every float32 in [0, 1024]: all RoPE angles pos * freq for positions up to 1023."""
    fn = getattr(libm, name)
    for x in every_float(0.0, 1024.0):
        assert_same(x, fn(x), generic(name, x))
