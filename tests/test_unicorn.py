"""Engine routines run in-process (Unicorn) against the NumPy reference, bit for bit."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from bootllama import image
from bootllama.libm import expf as expf_generic
from bootllama.reference import Sampler, matmul, softmax
from bootllama.unicorn_harness import Machine

F = np.float32
W_AT, X_AT, OUT_AT, VEC_AT = 0x100000, 0x20000, 0x30000, 0x40000


@pytest.fixture(scope="module")
def machine() -> Machine:
    return Machine.boot(image.assemble())


@pytest.mark.parametrize(("rows", "n"), [(1, 1), (37, 64), (64, 172), (5, 288)])
def test_mv_is_runc_matmul(machine: Machine, rows: int, n: int) -> None:
    rng = np.random.default_rng(rows * 1000 + n)
    w = (rng.standard_normal((rows, n)) * 3).astype(F)
    x = rng.standard_normal(n).astype(F)
    machine.write_f32(W_AT, w)
    machine.write_f32(X_AT, x)
    machine.call("mv", esi=W_AT, ebx=X_AT, edi=OUT_AT, ecx=n, eax=4, edx=4 * n, ebp=rows)
    assert np.array_equal(machine.read_f32(OUT_AT, rows), matmul(w, x))


def test_mv_strided_is_attention_weighted_sum(machine: Machine) -> None:
    # values pass: out[i] = sum_t att[t] * v[t][i], t in order, v rows `stride` floats apart
    rng = np.random.default_rng(7)
    t, hs, stride = 9, 8, 40
    v = rng.standard_normal((t, stride)).astype(F)
    att = rng.random(t).astype(F)
    machine.write_f32(W_AT, v)
    machine.write_f32(X_AT, att)
    machine.call("mv", esi=W_AT, ebx=X_AT, edi=OUT_AT, ecx=t, eax=4 * stride, edx=4, ebp=hs)
    want = np.zeros(hs, dtype=F)
    for k in range(t):  # run.c's order: xb[i] += a * v[i], position by position
        want = want + att[k] * v[k, :hs]
    assert np.array_equal(machine.read_f32(OUT_AT, hs), want)


@pytest.mark.parametrize("n", [1, 2, 17, 512])
def test_softmax_is_runc_softmax(machine: Machine, n: int) -> None:
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 6).astype(F)
    d = np.sqrt(F(8))
    machine.write_f32(X_AT, x)
    machine.write_f32(VEC_AT, np.array([d], dtype=F))
    machine.run_code(b"\xd9\x05" + VEC_AT.to_bytes(4, "little"))  # fld dword [VEC_AT]
    machine.call("softmax", esi=X_AT, ecx=n)
    want = softmax(x / d, exp=expf_generic)
    assert np.array_equal(machine.read_f32(X_AT, n), want)


@pytest.fixture(scope="module")
def sampler_machine() -> Machine:
    return Machine.boot(image.assemble(("SAMPLING",)))


def test_sample_is_runc_sample_mult(sampler_machine: Machine) -> None:
    # the engine's VARS layout (engine.inc): BP, logits at M_LOG (-64), |vocab| at M_VOCAB
    # (-104; the header's at +20), temperature at M_TEMP (-52), the RNG state at M_SEED (-48)
    m = sampler_machine
    bp, logits_at, n = m.engine.vars_at, 0x200000, 512
    for seed in (1, 42, 2**40 + 7):
        for temperature in (0.5, 1.0, 1.3):
            rng = np.random.default_rng(seed % 1000 + int(temperature * 10))
            logits = (rng.standard_normal(n) * 3).astype(F)
            m.write(bp - 64, struct.pack("<I", logits_at))
            m.write(bp + 20, struct.pack("<I", n))
            m.write(bp - 104, struct.pack("<I", n))
            m.write(bp - 52, struct.pack("<f", temperature))
            m.write(bp - 48, struct.pack("<Q", seed))
            ref = Sampler(n, temperature=temperature, topp=1.0, seed=seed, exp="runc")
            for _ in range(4):
                m.write_f32(logits_at, logits)
                regs = m.call("sample", ebp=bp, esi=logits_at, ecx=n)
                assert regs["ecx"] & 0xFFFF == ref.sample(logits.copy())
                assert struct.unpack("<Q", m.read(bp - 48, 8))[0] == ref.rng.state
