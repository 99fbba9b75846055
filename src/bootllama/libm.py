"""glibc's float functions, bit for bit, in NumPy: ``expf``, ``powf``, ``sinf``, ``cosf``.

llama2.c's run.c calls ``expf`` (softmax, SiLU), ``powf``, ``cosf`` and ``sinf`` (RoPE). On
x86-64 glibc (2.28 and later, including 2.36) these are the algorithms of Arm's
optimized-routines, computed in double precision and rounded once to float. glibc builds
each of them twice: the generic C and a copy compiled with ``-mfma -mavx2``, in which the
compiler fuses ``a * b + c`` into one rounding. The copy is chosen at load time on CPUs with
FMA and AVX2; the two differ on a few inputs (``bench/libm_variants.md`` counts them).

This module is the GENERIC variant: every double operation is done one at a time as the C
source writes it (NumPy never fuses), so the results equal glibc's generic functions for every
float32 input. The engine's exp is the same algorithm in SSE2 doubles, so this is the oracle
its tests use. Nothing here calls the host's libm.

Every function takes anything ``np.asarray(..., dtype=float32)`` accepts and returns a new
float32 array of the same shape.
"""

from __future__ import annotations

import numpy as np

F = np.float32
D = np.float64
U32 = np.uint32
U64 = np.uint64


def _hex(s: str) -> float:
    return float.fromhex(s)


def _f32(x: np.ndarray | float) -> np.ndarray:
    """A flat float32 copy of x (callers reshape the result to ``np.shape(x)``)."""
    return np.array(x, dtype=F).reshape(-1)


def _top12(bits: np.ndarray) -> np.ndarray:
    """glibc's top12(x): the sign and exponent bits of a float32 (its bits shifted right by 20)."""
    return bits >> U32(20)


def _f32_top12(value: float) -> int:
    return int(np.array(value, dtype=F).view(U32)) >> 20


# ----------------------------------------------------------------------------------------
# expf (glibc sysdeps/ieee754/flt-32/e_expf.c with e_exp2f_data.c)

EXP2F_TABLE_BITS = 5
"""log2 of the table size N: the reduction is x * N/ln2 = k + r, exp(x) = 2^(k/N) * 2^(r/N)."""
EXP2F_N = 1 << EXP2F_TABLE_BITS

EXP2F_TABLE = np.array([
    0x3FF0000000000000, 0x3FEFD9B0D3158574, 0x3FEFB5586CF9890F, 0x3FEF9301D0125B51,
    0x3FEF72B83C7D517B, 0x3FEF54873168B9AA, 0x3FEF387A6E756238, 0x3FEF1E9DF51FDEE1,
    0x3FEF06FE0A31B715, 0x3FEEF1A7373AA9CB, 0x3FEEDEA64C123422, 0x3FEECE086061892D,
    0x3FEEBFDAD5362A27, 0x3FEEB42B569D4F82, 0x3FEEAB07DD485429, 0x3FEEA47EB03A5585,
    0x3FEEA09E667F3BCD, 0x3FEE9F75E8EC5F74, 0x3FEEA11473EB0187, 0x3FEEA589994CCE13,
    0x3FEEACE5422AA0DB, 0x3FEEB737B0CDC5E5, 0x3FEEC49182A3F090, 0x3FEED503B23E255D,
    0x3FEEE89F995AD3AD, 0x3FEEFF76F2FB5E47, 0x3FEF199BDD85529C, 0x3FEF3720DCEF9069,
    0x3FEF5818DCFBA487, 0x3FEF7C97337B9B5F, 0x3FEFA4AFA2A490DA, 0x3FEFD0765B6E4540,
], dtype=U64)
"""glibc's ``__exp2f_data.tab``, as stored: ``asuint64(2^(i/32)) - (i << 47)`` for i = 0..31.

2^(i/32) is the correctly rounded double. Adding ``k << 47`` back (k the whole reduction
index, i = k mod 32) puts k/32 into the exponent field, so ``asdouble(tab[k % 32] + (k << 47))``
is 2^(k/32) for |k| < 150 * 32 without a multiply."""

EXP2F_SHIFT = _hex("0x1.8p+52")
"""1.5 * 2^52: ``(z + SHIFT) - SHIFT`` rounds the double z to an integer (ties to even) and
the low bits of ``asuint64(z + SHIFT)`` are that integer."""

EXP2F_SHIFT_SCALED = EXP2F_SHIFT / EXP2F_N
"""SHIFT / 32: the same rounding to a multiple of 1/32 (exp2f and powf's exp2 step)."""

EXP2F_POLY = (_hex("0x1.c6af84b912394p-5"), _hex("0x1.ebfce50fac4f3p-3"), _hex("0x1.62e42ff0c52d6p-1"))
"""C0, C1, C2: 2^r ~= C0 r^3 + C1 r^2 + C2 r + 1 for |r| <= 1/64 (exp2f, powf)."""

EXPF_INVLN2N = _hex("0x1.71547652b82fep+0") * EXP2F_N
"""32 / ln 2 (``__exp2f_data.invln2_scaled``), the double that scales x before rounding."""

EXPF_POLY = (EXP2F_POLY[0] / EXP2F_N / EXP2F_N / EXP2F_N, EXP2F_POLY[1] / EXP2F_N / EXP2F_N,
             EXP2F_POLY[2] / EXP2F_N)
"""C0/32^3, C1/32^2, C2/32 (``poly_scaled``): 2^(r/32) ~= C0 r^3 + C1 r^2 + C2 r + 1, |r| <= 1/2."""

EXPF_OFLOW = np.float32(_hex("0x1.62e42ep6"))
"""expf(x) overflows to +inf for x above this float (ln 2^128 rounded down)."""
EXPF_UFLOW = np.float32(-_hex("0x1.9fe368p6"))
"""expf(x) is +0 for x below this float (ln 2^-150)."""
EXPF_MAY_UFLOW = np.float32(-_hex("0x1.9d1d9ep6"))
"""For EXPF_UFLOW <= x < this (ln 2^-149), glibc returns 0x1.4p-75f * 0x1.4p-75f = 2^-149."""

_EXP_TOP12_88 = _f32_top12(88.0)
_TOP12_INF = _f32_top12(np.inf)


def _exp2_scaled(tab_index_bits: np.ndarray, ki: np.ndarray) -> np.ndarray:
    """asdouble(tab[ki % 32] + (ki << 47)) with uint64 wrap-around, as glibc computes s."""
    t = EXP2F_TABLE[tab_index_bits % U64(EXP2F_N)]
    with np.errstate(over="ignore"):
        t = t + (ki << U64(52 - EXP2F_TABLE_BITS))
    return t.view(D)


def expf(x: np.ndarray | float) -> np.ndarray:
    """glibc's generic ``expf``, elementwise (float32 in, float32 out), bit for bit.

    The steps, each one double operation as in glibc's C (no fused multiply-add)::

        z  = InvLn2N * (double)x           # x * 32/ln2
        kd = z + SHIFT;  ki = asuint64(kd);  kd -= SHIFT   # k = round(z), ties to even
        r  = z - kd                        # |r| <= 1/2
        s  = asdouble(T[ki % 32] + (ki << 47))             # 2^(k/32)
        p  = C0 * r + C1;  r2 = r * r;  y = C2 * r + 1;  y = p * r2 + y;  y = y * s
        return (float)y

    Special cases (|x| >= 88 or NaN): -inf -> +0; inf/NaN -> x + x; x > EXPF_OFLOW -> +inf;
    x < EXPF_UFLOW -> +0; x < EXPF_MAY_UFLOW -> 2^-149; otherwise the main path.
    """
    shape = np.shape(x)
    xf = _f32(x)
    bits = xf.view(U32)
    with np.errstate(over="ignore", invalid="ignore"):
        xd = xf.astype(D)
        z = EXPF_INVLN2N * xd
        kd = z + EXP2F_SHIFT
        ki = kd.view(U64)
        kd = kd - EXP2F_SHIFT
        r = z - kd
        s = _exp2_scaled(ki, ki)
        p = EXPF_POLY[0] * r + EXPF_POLY[1]
        r2 = r * r
        y = EXPF_POLY[2] * r + 1.0
        y = p * r2 + y
        y = y * s
        out = y.astype(F)
        abstop = _top12(bits) & U32(0x7FF)
        special = abstop >= U32(_EXP_TOP12_88)
        if special.any():
            xs = xf[special]
            ys = out[special]
            ys = np.where(xs < EXPF_MAY_UFLOW, np.float32(2.0**-149), ys)
            ys = np.where(xs < EXPF_UFLOW, F(0.0), ys)
            ys = np.where(xs > EXPF_OFLOW, F(np.inf), ys)
            nonfinite = (_top12(xs.view(U32)) & U32(0x7FF)) >= U32(_TOP12_INF)
            ys = np.where(nonfinite, xs + xs, ys)
            ys = np.where(xs.view(U32) == U32(0xFF800000), F(0.0), ys)
            out[special] = ys
    return out.reshape(shape)
