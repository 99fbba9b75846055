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


def expf_double(x: np.ndarray | float) -> np.ndarray:
    """expf's main path up to the double it rounds to float (no special cases): for |x| < 88 the
    value glibc's generic expf computes before ``return (float) y``. Float32 in, float64 out."""
    with np.errstate(over="ignore", invalid="ignore"):
        xd = np.asarray(x, dtype=F).astype(D)
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
        return np.asarray(y * s)


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
        out = expf_double(xf).astype(F)
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


# ----------------------------------------------------------------------------------------
# powf (glibc sysdeps/ieee754/flt-32/e_powf.c with e_powf_log2_data.c)

POWF_LOG2_TABLE_BITS = 4
POWF_LOG2_N = 1 << POWF_LOG2_TABLE_BITS
POWF_OFF = 0x3F330000
"""x = 2^k z with z in [OFF, 2 OFF) as float bits (about [0.70, 1.40)), split in 16 intervals."""

POWF_LOG2_TABLE = np.array([
    (_hex("0x1.661ec79f8f3bep+0"), -_hex("0x1.efec65b963019p-2")),
    (_hex("0x1.571ed4aaf883dp+0"), -_hex("0x1.b0b6832d4fca4p-2")),
    (_hex("0x1.49539f0f010bp+0"), -_hex("0x1.7418b0a1fb77bp-2")),
    (_hex("0x1.3c995b0b80385p+0"), -_hex("0x1.39de91a6dcf7bp-2")),
    (_hex("0x1.30d190c8864a5p+0"), -_hex("0x1.01d9bf3f2b631p-2")),
    (_hex("0x1.25e227b0b8eap+0"), -_hex("0x1.97c1d1b3b7afp-3")),
    (_hex("0x1.1bb4a4a1a343fp+0"), -_hex("0x1.2f9e393af3c9fp-3")),
    (_hex("0x1.12358f08ae5bap+0"), -_hex("0x1.960cbbf788d5cp-4")),
    (_hex("0x1.0953f419900a7p+0"), -_hex("0x1.a6f9db6475fcep-5")),
    (1.0, 0.0),
    (_hex("0x1.e608cfd9a47acp-1"), _hex("0x1.338ca9f24f53dp-4")),
    (_hex("0x1.ca4b31f026aap-1"), _hex("0x1.476a9543891bap-3")),
    (_hex("0x1.b2036576afce6p-1"), _hex("0x1.e840b4ac4e4d2p-3")),
    (_hex("0x1.9c2d163a1aa2dp-1"), _hex("0x1.40645f0c6651cp-2")),
    (_hex("0x1.886e6037841edp-1"), _hex("0x1.88e9c2c1b9ff8p-2")),
    (_hex("0x1.767dcf5534862p-1"), _hex("0x1.ce0a44eb17bccp-2")),
], dtype=D)
"""``__powf_log2_data.tab``: (invc, logc) per interval, c near its centre, logc = log2(c)."""

POWF_LOG2_POLY = (_hex("0x1.27616c9496e0bp-2"), -_hex("0x1.71969a075c67ap-2"), _hex("0x1.ec70a6ca7baddp-2"),
                  -_hex("0x1.7154748bef6c8p-1"), _hex("0x1.71547652ab82bp0"))
"""A0..A4: log2(1 + r) ~= A4 r + A3 r^2 + A2 r^3 + A1 r^4 + A0 r^5."""

POWF_SIGN_BIAS = 1 << (EXP2F_TABLE_BITS + 11)
"""Added to k before ``<< 47`` so the double's sign bit comes out set (negative x, odd y)."""

_POWF_OFLOW = _hex("0x1.fffffffd1d571p+6")  # y log2 x above this: |x^y| > 0x1.ffffffp127 -> inf


def _powf_log2(ix: np.ndarray) -> np.ndarray:
    """glibc's log2_inline: log2 of the float with bits ix (subnormals pre-normalised), in double."""
    tmp = ix - U32(POWF_OFF)
    i = (tmp >> U32(23 - POWF_LOG2_TABLE_BITS)) % U32(POWF_LOG2_N)
    top = tmp & U32(0xFF800000)
    iz = ix - top
    k = top.view(np.int32) >> np.int32(23)
    invc = POWF_LOG2_TABLE[i, 0]
    logc = POWF_LOG2_TABLE[i, 1]
    z = iz.view(F).astype(D)
    a = POWF_LOG2_POLY
    r = z * invc - 1.0
    y0 = logc + k.astype(D)
    r2 = r * r
    y = a[0] * r + a[1]
    p = a[2] * r + a[3]
    r4 = r2 * r2
    q = a[4] * r + y0
    q = p * r2 + q
    return y * r4 + q


def _powf_exp2(xd: np.ndarray, sign_bias: np.ndarray) -> np.ndarray:
    """glibc's exp2_inline: 2^xd (with the sign bit from sign_bias), in double."""
    kd = xd + EXP2F_SHIFT_SCALED
    ki = kd.view(U64)
    kd = kd - EXP2F_SHIFT_SCALED
    r = xd - kd
    with np.errstate(over="ignore"):
        ski = ki + sign_bias.astype(U64)
    s = _exp2_scaled(ki, ski)
    c = EXP2F_POLY
    z = c[0] * r + c[1]
    r2 = r * r
    y = c[2] * r + 1.0
    y = z * r2 + y
    return y * s


def _checkint(iy: np.ndarray) -> np.ndarray:
    """0 if the float with bits iy (finite, non-zero) is not an integer, 1 if odd, 2 if even."""
    e = ((iy >> U32(23)) & U32(0xFF)).astype(np.int64)
    sh = np.clip(0x7F + 23 - e, 0, 31).astype(U32)
    frac = (iy & ((U32(1) << sh) - U32(1))) != 0
    odd = (iy & (U32(1) << sh)) != 0
    out = np.where(frac, 0, np.where(odd, 1, 2))
    out = np.where(e > 0x7F + 23, 2, out)
    return np.where(e < 0x7F, 0, out)


def _issignaling(bits: np.ndarray) -> np.ndarray:
    return (U32(2) * (bits ^ U32(0x00400000))).astype(np.int64) > 2 * 0x7FC00000


def _zeroinfnan(bits: np.ndarray) -> np.ndarray:
    return U32(2) * bits - U32(1) >= U32(2 * 0x7F800000 - 1)


def powf(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """glibc's generic ``powf``, elementwise with broadcasting (float32 in and out), bit for bit.

    log2(x) in double: x = 2^k z, z in [0.70, 1.40), c = the table's centre of z's interval,
    r = z * invc - 1, log2 x = k + log2 c + A(r) (degree-5 polynomial in glibc's pipelined
    order); then ylogx = (double)y * log2 x and 2^ylogx with the expf reduction (N = 32,
    SHIFT/32, the same table and C0..C2). The special cases (zero, infinite, NaN or negative
    x, zero/infinite/NaN y, results beyond float range) follow e_powf.c.
    """
    xa, ya = np.broadcast_arrays(np.asarray(x, dtype=F), np.asarray(y, dtype=F))
    shape = xa.shape
    xf, yf = _f32(xa), _f32(ya)
    ix, iy = xf.view(U32).copy(), yf.view(U32)
    n = xf.size
    out = np.zeros(n, dtype=F)
    done = np.zeros(n, dtype=bool)
    sign_bias = np.zeros(n, dtype=U32)
    with np.errstate(all="ignore"):
        special = (ix - U32(0x00800000) >= U32(0x7F800000 - 0x00800000)) | _zeroinfnan(iy)
        # y is 0, inf or NaN
        yz = special & _zeroinfnan(iy)
        rules = [
            (U32(2) * iy == 0, np.where(_issignaling(ix), xf + yf, F(1.0))),
            (ix == U32(0x3F800000), np.where(_issignaling(iy), xf + yf, F(1.0))),
            ((U32(2) * ix > U32(2 * 0x7F800000)) | (U32(2) * iy > U32(2 * 0x7F800000)), xf + yf),
            (U32(2) * ix == U32(2 * 0x3F800000), np.full(n, F(1.0))),
            ((U32(2) * ix < U32(2 * 0x3F800000)) == ((iy & U32(0x80000000)) == 0), np.zeros(n, dtype=F)),
            (np.ones(n, dtype=bool), yf * yf),
        ]
        left = yz.copy()
        for cond, value in rules:
            hit = left & cond
            out[hit] = value[hit]
            left &= ~hit
        done |= yz
        # x is 0, inf or NaN
        xz = special & ~done & _zeroinfnan(ix)
        if xz.any():
            x2 = xf * xf
            neg = ((ix & U32(0x80000000)) != 0) & (_checkint(iy) == 1)
            x2 = np.where(neg, -x2, x2)
            yneg = (iy & U32(0x80000000)) != 0
            val = np.where(yneg, F(1.0) / x2, x2)
            divzero = (U32(2) * ix == 0) & yneg
            val = np.where(divzero, np.where(neg, F(-np.inf), F(np.inf)), val)
            out[xz] = val[xz]
            done |= xz
        # x finite and non-zero: negative, or subnormal
        rest = special & ~done
        if rest.any():
            xneg = rest & ((ix & U32(0x80000000)) != 0)
            yint = _checkint(iy)
            invalid = xneg & (yint == 0)
            out[invalid] = ((xf - xf) / (xf - xf))[invalid]
            done |= invalid
            sign_bias[xneg & (yint == 1)] = POWF_SIGN_BIAS
            ix = np.where(xneg, ix & U32(0x7FFFFFFF), ix)
            sub = rest & ~invalid & (ix < U32(0x00800000))
            norm = ((xf * F(2.0**23)).view(U32) & U32(0x7FFFFFFF)) - U32(23 << 23)
            ix = np.where(sub, norm, ix)
        main = ~done
        logx = _powf_log2(ix)
        ylogx = yf.astype(D) * logx
        res = _powf_exp2(ylogx, sign_bias).astype(F)
        big = (ylogx.view(U64) >> U64(47) & U64(0xFFFF)) >= (np.array(126.0, dtype=D).view(U64) >> U64(47))
        neg = sign_bias != 0
        res = np.where(big & (ylogx < -149.0), np.where(neg, F(-(2.0**-149)), F(2.0**-149)), res)
        res = np.where(big & (ylogx <= -150.0), np.where(neg, F(-0.0), F(0.0)), res)
        res = np.where(big & (ylogx > _POWF_OFLOW), np.where(neg, F(-np.inf), F(np.inf)), res)
        out[main] = res[main]
    return out.reshape(shape)


# ----------------------------------------------------------------------------------------
# sinf, cosf (glibc sysdeps/ieee754/flt-32/s_sinf.c, s_cosf.c, s_sincosf.h, sincosf_poly.h,
# s_sincosf_data.c)

SINCOSF_HPI_INV = _hex("0x1.45F306DC9C883p+23")
"""2/pi * 2^24: (int32)(x * this) holds the quadrant of x in its bits 24 and up."""
SINCOSF_HPI = _hex("0x1.921FB54442D18p0")
"""pi/2 as a double."""
SINCOSF_PIO4 = _hex("0x1.921FB54442D18p-1")
"""pi/4; |x| below float(pi/4)'s top 12 bits takes the small-argument path."""
SINCOSF_PI63 = _hex("0x1.921FB54442D18p-62")
"""2 pi * 2^-64: scales the large-argument reduction's 2.62 fixed-point remainder."""

SINCOSF_COS_POLY = (1.0, -_hex("0x1.ffffffd0c621cp-2"), _hex("0x1.55553e1068f19p-5"),
                    -_hex("0x1.6c087e89a359dp-10"), _hex("0x1.99343027bf8c3p-16"))
"""c0..c4: cos x ~= c0 + c1 x^2 + c2 x^4 + c3 x^6 + c4 x^8 (the second table negates them all)."""
SINCOSF_SIN_POLY = (-_hex("0x1.555545995a603p-3"), _hex("0x1.1107605230bc4p-7"), -_hex("0x1.994eb3774cf24p-13"))
"""s1..s3: sin x ~= x + s1 x^3 + s2 x^5 + s3 x^7."""
SINCOSF_SIGN = np.array([1.0, -1.0, -1.0, 1.0], dtype=D)
"""Sign of the sine in quadrants 0..3."""

INV_PIO4 = np.array([
    0xA2, 0xA2F9, 0xA2F983, 0xA2F9836E,
    0xF9836E4E, 0x836E4E44, 0x6E4E4415, 0x4E441529,
    0x441529FC, 0x1529FC27, 0x29FC2757, 0xFC2757D1,
    0x2757D1F5, 0x57D1F534, 0xD1F534DD, 0xF534DDC0,
    0x34DDC0DB, 0xDDC0DB62, 0xC0DB6295, 0xDB629599,
    0x6295993C, 0x95993C43, 0x993C4390, 0x3C439041,
], dtype=U64)
"""``__inv_pio4``: 4/pi to 192 bits, each entry 8 bits further along than the one before."""

_TOP12_PIO4 = _f32_top12(SINCOSF_PIO4)
_TOP12_TINY = _f32_top12(2.0**-12)
_TOP12_120 = _f32_top12(120.0)


def _sinf_poly(x: np.ndarray, x2: np.ndarray, negate_cos: np.ndarray, n: np.ndarray) -> np.ndarray:
    """glibc's sinf_poly: the sine polynomial where n is even, the cosine one (negated where
    negate_cos, glibc's second table) where n is odd; double in, float32 out."""
    s1c, s2c, s3c = SINCOSF_SIN_POLY
    x3 = x * x2
    s1 = s2c + x2 * s3c
    x7 = x3 * x2
    s = x + x3 * s1c
    sin = s + x7 * s1
    sg = np.where(negate_cos, -1.0, 1.0)
    c0, c1c, c2c, c3c, c4c = (sg * v for v in SINCOSF_COS_POLY)
    x4 = x2 * x2
    c2 = c3c + x2 * c4c
    c1 = c0 + x2 * c1c
    x6 = x4 * x2
    c = c1 + x4 * c2c
    cos = c + x6 * c2
    return np.where((n & 1) == 0, sin, cos).astype(F)


def _reduce_fast(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x - n pi/2 for |x| < 120 with n the nearest quadrant, via the 2^24-scaled truncation."""
    r = x * SINCOSF_HPI_INV
    n = (r.astype(np.int32) + np.int32(0x800000)) >> np.int32(24)
    return x - n.astype(D) * SINCOSF_HPI, n


def _reduce_large(xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x mod pi/2 by a 32 x 96-bit product with 4/pi (the sign bit of xi is ignored)."""
    xi = xi.astype(U64)
    start = (xi >> U64(26)) & U64(15)
    shift = (xi >> U64(23)) & U64(7)
    m = ((xi & U64(0xFFFFFF)) | U64(0x800000)) << shift
    with np.errstate(over="ignore"):
        res0 = (m * INV_PIO4[start]) & U64(0xFFFFFFFF)  # a 32-bit product in the C
        res1 = m * INV_PIO4[start + U64(4)]
        res2 = m * INV_PIO4[start + U64(8)]
        res0 = (res2 >> U64(32)) | (res0 << U64(32))
        res0 = res0 + res1
        n = (res0 + U64(1 << 61)) >> U64(62)
        res0 = res0 - (n << U64(62))
    return res0.view(np.int64).astype(D) * SINCOSF_PI63, n.astype(np.int64)


def _sincosf(y: np.ndarray | float, cos: bool) -> np.ndarray:
    shape = np.shape(y)
    yf = _f32(y)
    bits = yf.view(U32)
    top = (bits >> U32(20)) & U32(0x7FF)
    out = np.empty(yf.size, dtype=F)
    with np.errstate(invalid="ignore", over="ignore"):
        x = yf.astype(D)
        small = top < U32(_TOP12_PIO4)
        if small.any():
            xs = x[small]
            v = _sinf_poly(xs, xs * xs, np.zeros(xs.size, dtype=bool), np.full(xs.size, int(cos)))
            tiny = top[small] < U32(_TOP12_TINY)
            out[small] = np.where(tiny, F(1.0) if cos else yf[small], v)
        mid = ~small & (top < U32(_TOP12_120))
        if mid.any():
            r, n = _reduce_fast(x[mid])
            s = SINCOSF_SIGN[n & 3]
            out[mid] = _sinf_poly(r * s, r * r, (n & 2) != 0, n ^ 1 if cos else n)
        large = ~small & ~mid & (top < U32(_TOP12_INF))
        if large.any():
            xi = bits[large]
            r, n = _reduce_large(xi)
            q = n + (xi >> U32(31)).astype(np.int64)
            s = SINCOSF_SIGN[q & 3]
            out[large] = _sinf_poly(r * s, r * r, (q & 2) != 0, n ^ 1 if cos else n)
        bad = top >= U32(_TOP12_INF)
        if bad.any():
            yb = yf[bad]
            out[bad] = (yb - yb) / (yb - yb)
    return out.reshape(shape)


def sinf(x: np.ndarray | float) -> np.ndarray:
    """glibc's generic ``sinf``, elementwise (float32 in, float32 out), bit for bit.

    |x| < pi/4: x itself below 2^-12, else the odd polynomial x + s1 x^3 + x^5 (s2 + s3 x^2) in
    double. |x| < 120: r = x - n pi/2 (n from the 2^24-scaled 2/pi product), then sine or
    cosine polynomial by quadrant, signs from the table. Larger: the same with n and r from
    the 4/pi bit table (``INV_PIO4``). Infinity and NaN give NaN.
    """
    return _sincosf(x, cos=False)


def cosf(x: np.ndarray | float) -> np.ndarray:
    """glibc's generic ``cosf``, elementwise (float32 in, float32 out), bit for bit: as ``sinf``
    with the quadrant moved by one (1.0 for |x| < 2^-12)."""
    return _sincosf(x, cos=True)


# ----------------------------------------------------------------------------------------
# RoPE as run.c computes it

ROPE_BASE = 10000.0
"""run.c's hard-coded RoPE base (theta)."""


def rope_values(head_size: int, seq_len: int, base: float = ROPE_BASE) -> tuple[np.ndarray, np.ndarray]:
    """run.c's rotation factors: (fcr, fci), each float32 [seq_len][head_size // 2].

    For pair j (head_dim = 2j) at position pos, as run.c's forward() does in float32::

        freq = 1.0f / powf(base, head_dim / (float)head_size)
        val  = pos * freq
        fcr  = cosf(val);  fci = sinf(val)

    with glibc's generic powf/cosf/sinf (this module), so the result does not depend on the
    host's libm. run.c hard-codes base 10000; models converted with another base use it here.
    """
    if head_size < 2 or head_size % 2 or seq_len < 0:
        raise ValueError(f"rope_values needs an even head size >= 2 and seq_len >= 0, not {head_size}, {seq_len}")
    head_dim = np.arange(0, head_size, 2).astype(F)
    freq = F(1.0) / powf(F(base), head_dim / F(head_size))
    val = np.arange(seq_len).astype(F)[:, None] * freq[None, :]
    return cosf(val), sinf(val)


def rope_base(freq_cis_real: np.ndarray, freq_cis_imag: np.ndarray, head_size: int) -> float:
    """The RoPE base a checkpoint's freq_cis tables encode, or run.c's 10000.

    run.c ignores the tables and uses 10000. A model converted from another format (GGUF) with
    another base carries that base only in its tables, so: estimate B from the lowest frequency
    (the last column) at position 1, freq = B^-(head_size - 2)/head_size, round it to a whole
    number, and take it only if the whole table is B's rotation (within 1e-5 plus 16 float32
    ulps of the angle, which allows tables made in other precisions). Anything else, random
    tables included, means 10000.
    """
    fcr = np.asarray(freq_cis_real, dtype=D)
    fci = np.asarray(freq_cis_imag, dtype=D)
    half = head_size // 2
    if head_size < 4 or head_size % 2 or fcr.ndim != 2 or fcr.shape[0] < 2 or fcr.shape[1] != half:
        return ROPE_BASE
    if fcr.shape != fci.shape or not (np.isfinite(fcr).all() and np.isfinite(fci).all()):
        return ROPE_BASE
    angle = float(np.arctan2(fci[1, half - 1], fcr[1, half - 1]))
    if not 0.0 < angle < 1.0:
        return ROPE_BASE
    with np.errstate(over="ignore"):
        estimate = angle ** (-head_size / (head_size - 2))
    if not np.isfinite(estimate) or not 1.0 < estimate < 1e12:
        return ROPE_BASE
    base = float(round(estimate))
    if base == ROPE_BASE:
        return ROPE_BASE
    want_r, want_i = rope_values(head_size, fcr.shape[0], base)
    freq = F(1.0) / powf(F(base), np.arange(0, head_size, 2).astype(F) / F(head_size))
    tol = 1e-5 + 2.0**-20 * (np.arange(fcr.shape[0])[:, None] * freq[None, :].astype(D))
    if np.all(np.abs(fcr - want_r) <= tol) and np.all(np.abs(fci - want_i) <= tol):
        return base
    return ROPE_BASE


def checkpoint_rope(freq_cis_real: np.ndarray, freq_cis_imag: np.ndarray,
                    head_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The rotation values run.c uses with a checkpoint whose tables are these: rope_values for
    the table's seq_len with the base rope_base finds. The reference rotates with these and the
    image builder writes them to the disk, so both use this one function."""
    seq_len = np.shape(freq_cis_real)[0]
    return rope_values(head_size, seq_len, rope_base(freq_cis_real, freq_cis_imag, head_size))
