"""The engine's exp is glibc's expf, bit for bit; its table is glibc's table.

glibc's expf (the generic variant, which a CPU without FMA runs) computes in doubles:
``libm.expf`` is that computation in NumPy and tests/test_libm.py holds it to
glibc's own through ctypes. Here the sector's exp routine (SSE2 doubles; the 486 build: the
x87 at 53-bit precision) runs in Unicorn over a million float32 inputs spread over every
binade of the softmax and SwiGLU range and past both ends of it, plus the inputs near
rounding boundaries, looping inside the guest so that a million calls take seconds.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from unicorn.x86_const import UC_X86_REG_ECX, UC_X86_REG_ESP

from bootllama import image
from bootllama.libm import expf as expf_generic
from bootllama.unicorn_harness import Machine

IN_AT = 0x400000  # above the harness's 4 MiB: the test maps room for the inputs


def _machine(defines: tuple[str, ...]) -> Machine:
    m = Machine.boot(image.assemble(defines))  # (it runs the sector's exptab)
    m.uc.mem_map(IN_AT, 8 << 20)
    return m


BUILDS = [(), ("CPU486",)]


@pytest.fixture(scope="module", params=BUILDS, ids=["sse2", "486"])
def machine(request: pytest.FixtureRequest) -> Machine:
    return _machine(request.param)


def glibc_table() -> np.ndarray:
    """glibc's __exp2f_data table as 2^(i/32) (its entries plus i << 47): correctly rounded
    doubles, computed here with exact integer arithmetic (no libm)."""
    out = []
    for i in range(32):
        # the double nearest 2^(i/32): search the 53-bit significand m with m^32 ~ 2^(i + 52*32)
        lo, hi = 1 << 52, 1 << 53
        target = 1 << (i + 52 * 32)
        while hi - lo > 1:  # largest m with m^32 <= target
            mid = (lo + hi) // 2
            if mid**32 <= target:
                lo = mid
            else:
                hi = mid
        # nearest of lo, lo+1: compare (lo + 1/2)^32 with target, i.e. (2 lo + 1)^32 with 2^32 target
        m = lo + 1 if (2 * lo + 1) ** 32 <= target << 32 else lo
        out.append(m * 2.0**-52)
    return np.array(out)


def test_table_is_glibcs(machine: Machine) -> None:
    # engine.inc's TAB: [ebp+K] holds exp's constants (sector.asm assembles them there, in the sector
    # at VARS); the table follows them
    sym = machine.engine.symbols
    assert sym["consts"] - machine.engine.vars_at in (28, 36, 40)  # K: after the header, c0 and c1 16-aligned
    tab_at = sym["consts_end"]
    tab = np.frombuffer(machine.read(tab_at, 32 * 8), dtype="<f8")
    assert np.array_equal(tab.view(np.uint64), glibc_table().view(np.uint64))


def run_exp(m: Machine, x: np.ndarray, after: bytes = b"") -> np.ndarray:
    """expf of every element, computed by the engine in one guest loop (its exp takes -x);
    ``after`` is written right after the inputs."""
    x = np.ascontiguousarray(-x, dtype="<f4")
    m.write(IN_AT, x.tobytes() + after)
    exp_at = m.engine.symbols["exp"]
    loop_at = 0x0600
    # exp reads its input at [esi], writes the result there and pushes it on the x87 stack:
    # mov esi, IN_AT; L: push ecx; call exp; fstp st0; pop ecx; add esi, 4; dec ecx; jnz L; hlt
    # (ecx = n from the harness: the code stays the same bytes from call to call, so Unicorn's
    # translation of it, which a rewrite at the same address does not always replace, is right)
    code = b"\xbe" + struct.pack("<I", IN_AT)
    body = b"\x51"
    call_at = loop_at + len(code) + len(body)
    body += b"\xe8" + struct.pack("<i", exp_at - (call_at + 5))
    body += b"\xdd\xd8\x59\x83\xc6\x04\x49"
    jnz_at = loop_at + len(code) + len(body)
    body += b"\x0f\x85" + struct.pack("<i", (loop_at + len(code)) - (jnz_at + 6))
    prog = code + body + b"\xf4"
    m.write(loop_at, prog)
    m.uc.reg_write(UC_X86_REG_ESP, 0x1000)
    m.uc.reg_write(UC_X86_REG_ECX, len(x))
    m.uc.emu_start(loop_at, loop_at + len(prog) - 1)
    return np.frombuffer(m.read(IN_AT, 4 * len(x)), dtype="<f4").copy()


def spread_inputs(n: int, seed: int = 0) -> np.ndarray:
    """n float32s: uniform over the bit patterns of [-110, 95] (every binade, tiny ones too),
    uniform over the values, and the ends of glibc's special cases."""
    rng = np.random.default_rng(seed)
    neg = rng.integers(0x80000000, 0xC2DC0000, n // 3, dtype=np.uint64).astype(np.uint32).view(np.float32)
    pos = rng.integers(0, 0x42BE0000, n // 3, dtype=np.uint64).astype(np.uint32).view(np.float32)
    uni = rng.uniform(-110.0, 95.0, n - 2 * (n // 3)).astype(np.float32)
    edges = np.array([0.0, -0.0, 88.72283, 88.72284, 89.0, 1e30, -103.97208, -103.9721, -104.0, -1e30,
                      np.float32(2.0**-149), -np.float32(2.0**-149),
                      # the two inputs of [-104, 89] where glibc's FMA build differs from the generic
                      # one (bench/libm_variants.md): the engine gives the generic build's result
                      float.fromhex("-0x1.f8cbb2p+5"), float.fromhex("0x1.04845ep+5")], dtype=np.float32)
    return np.concatenate([neg, pos, uni, edges])


def test_exp_is_glibc_expf_on_a_million_inputs(machine: Machine) -> None:
    x = spread_inputs(1_000_000)
    got = run_exp(machine, x)
    want = expf_generic(x)
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{bad.size} inputs differ, e.g. x={x[bad[:5]]!r}: {got[bad[:5]]!r} vs {want[bad[:5]]!r}"


def test_exp_leaves_the_next_float_as_it_was(machine: Machine) -> None:
    # the SSE exp reads [esi+4] with its input (cvtps2pd) and must leave it: softmax's next
    # score, swiglu's next hb, or whatever follows the last
    after = np.array([0x00000001, 0x80000000, 0x007FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC12345,
                      0x3F800000, 0xC2C80000, 0x0BADF00D], dtype="<u4")
    for word in after:
        run_exp(machine, np.array([1.5], dtype=np.float32), word.tobytes())
        assert machine.read(IN_AT + 4, 4) == word.tobytes(), hex(word)


def old_exp_disagreements(chunk: int = 1 << 24) -> np.ndarray:
    """Every float32 in [-104, 89] where glibc's expf differs from the correctly rounded exp, which
    the engine's x87 exp computed before it became glibc's (its f2xm1 at 64 bits, rounded once)."""
    found = []
    for lo, hi in ((0x80000000, 0xC2D00001), (0, 0x42B20001)):  # -0..-104, then +0..89, as bit patterns
        for start in range(lo, hi, chunk):
            x = np.arange(start, min(start + chunk, hi), dtype=np.uint32).view(np.float32)
            with np.errstate(over="ignore", under="ignore"):
                exact = np.exp(x.astype(np.float64)).astype(np.float32)
            found.append(x[expf_generic(x).view(np.uint32) != exact.view(np.uint32)])
    return np.concatenate(found)


@pytest.mark.slow
def test_exp_is_glibc_expf_where_the_old_exp_was_not(machine: Machine) -> None:
    # the ~0.06% of inputs on which a correctly rounded exp (the engine's before) and glibc part
    x = old_exp_disagreements()
    assert x.size > 100_000
    got = run_exp(machine, x)
    assert np.array_equal(got.view(np.uint32), expf_generic(x).view(np.uint32))
