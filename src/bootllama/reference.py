"""A NumPy forward pass and sampler that reproduce llama2.c's run.c bit for bit.

run.c is built with ``gcc -O3`` and no fast-math, so every sum is a sequential float32 sum
in index order, every operation rounds to float32, and nothing is fused. This module
keeps that order: dot products are sequential sums (``np.add.accumulate``, or adding one
column at a time), never ``np.dot``/``@``/``np.sum``, which reorder. The transcendental
functions are glibc's own: ``powf``/``cosf``/``sinf`` are called through ctypes, and
``expf`` is a vectorised copy of glibc's algorithm that hands the rare inputs it cannot
prove it rounds identically (results near a float32 rounding boundary, or outside
[-87, 87]) back to the real ``expf``.

``MathMode`` swaps in the alternatives an engine may use: RoPE factors from the
checkpoint's freq_cis tables, or correctly rounded exp/pow/cos/sin (float64 results rounded
once to float32), which is what an x87 engine computes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO, Literal

import numpy as np

from bootllama.checkpoint import Config, Model
from bootllama.errors import BootllamaError
from bootllama.tokenizer import BOS, Tokenizer

F = np.float32
_ZERO = F(0.0)
_ONE = F(1.0)
_EPS = F(1e-5)

RopeMode = Literal["runc", "table", "exact"]
ExpMode = Literal["runc", "exact"]


@dataclass(frozen=True)
class MathMode:
    """Which transcendental results the reference uses.

    rope: "runc" (glibc powf/cosf/sinf, what run.c does), "table" (the checkpoint's
    freq_cis_real/imag rows), "exact" (run.c's float32 steps, each libm call correctly rounded).
    exp: "runc" (glibc expf) or "exact" (correctly rounded exp).
    """

    rope: RopeMode = "runc"
    exp: ExpMode = "runc"

    def __post_init__(self) -> None:
        if self.rope not in ("runc", "table", "exact"):
            raise BootllamaError(f"unknown rope mode {self.rope!r} (runc, table, exact)")
        if self.exp not in ("runc", "exact"):
            raise BootllamaError(f"unknown exp mode {self.exp!r} (runc, exact)")


# ----------------------------------------------------------------------------------------
# libm


def _load_libm() -> ctypes.CDLL:
    for name in ("libm.so.6", ctypes.util.find_library("m")):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    return ctypes.CDLL(None)


_libm = _load_libm()


def _float_fn(name: str, nargs: int) -> Callable[..., float]:
    fn = getattr(_libm, name)
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float] * nargs
    return fn  # type: ignore[no-any-return]


libm_expf = _float_fn("expf", 1)
libm_powf = _float_fn("powf", 2)
libm_cosf = _float_fn("cosf", 1)
libm_sinf = _float_fn("sinf", 1)

# glibc's expf (the algorithm shared with exp2f/powf since glibc 2.27): with N = 32,
# k = round(x * N/ln2), r = x * N/ln2 - k, exp(x) ~= 2^(k/N) * (1 + C2 r + C1 r^2 + C0 r^3),
# all in double, one rounding to float at the end.
_N = 32
_EXP2_TAB = (
    np.array([2.0 ** (i / _N) for i in range(_N)], dtype=np.float64).view(np.uint64)
    - (np.arange(_N, dtype=np.uint64) << np.uint64(52 - 5))
)
_INVLN2N = float.fromhex("0x1.71547652b82fep+0") * _N
_SHIFT = float.fromhex("0x1.8p+52")
_C0 = float.fromhex("0x1.c6af84b912394p-5") / _N**3
_C1 = float.fromhex("0x1.ebfce50fac4f3p-3") / _N**2
_C2 = float.fromhex("0x1.62e42ff0c52d6p-1") / _N
# The double result may differ from glibc's by a few ulps (FMA contraction in glibc's
# FMA build); only results this close to a float32 rounding boundary could round apart.
_GUARD = 2.0**-16  # in float32 ulps, i.e. 2^-40 relative
_EXP_SAFE = 87.0  # |x| below this: finite, normal float32 result


def _expf_double(x: np.ndarray) -> np.ndarray:
    xd = x.astype(np.float64)
    z = _INVLN2N * xd
    kd = z + _SHIFT
    ki = kd.view(np.uint64)
    kd = kd - _SHIFT
    r = z - kd
    s = (_EXP2_TAB[ki % np.uint64(_N)] + (ki << np.uint64(52 - 5))).view(np.float64)
    y = (_C0 * r + _C1) * (r * r) + (_C2 * r + 1.0)
    return np.asarray(y * s)


def _expf_libm_each(x: np.ndarray) -> np.ndarray:
    return np.array([libm_expf(float(v)) for v in x.ravel()], dtype=F).reshape(x.shape)


def _expf_vector(x: np.ndarray) -> np.ndarray:
    safe = np.abs(x) < F(_EXP_SAFE)
    y = _expf_double(np.where(safe, x, _ZERO))
    out = y.astype(F)
    mant, _ = np.frexp(y)
    ulps = mant * 2.0**24
    hard = ~safe | (np.abs(ulps - np.floor(ulps) - 0.5) < _GUARD)
    if hard.any():
        out[hard] = _expf_libm_each(x[hard])
    return out


@lru_cache(maxsize=1)
def _vector_expf_agrees() -> bool:
    """Whether this libm's expf is the algorithm _expf_double copies (checked on 20k inputs)."""
    rng = np.random.default_rng(12345)
    probe = np.concatenate([
        np.linspace(-_EXP_SAFE, _EXP_SAFE, 10001, dtype=F),
        rng.uniform(-20, 5, 10000).astype(F),
    ])
    return bool(np.array_equal(_expf_vector(probe).view(np.uint32), _expf_libm_each(probe).view(np.uint32)))


def expf(x: np.ndarray | float) -> np.ndarray:
    """glibc's expf, elementwise, bit for bit (float32 array in, float32 array out)."""
    arr = np.asarray(x, dtype=F)
    if arr.size == 0:
        return arr.copy()
    if _vector_expf_agrees():
        return _expf_vector(arr)
    return _expf_libm_each(arr)


def expf_exact(x: np.ndarray | float) -> np.ndarray:
    """Correctly rounded exp: computed in float64, rounded once to float32."""
    return np.exp(np.asarray(x, dtype=F).astype(np.float64)).astype(F)


# ----------------------------------------------------------------------------------------
# RoPE


@lru_cache(maxsize=64)
def _rope_freqs(head_size: int, exact: bool) -> np.ndarray:
    """run.c's freq = 1.0f / powf(10000.0f, head_dim / (float)head_size) for each pair."""
    exps = np.arange(0, head_size, 2).astype(F) / F(head_size)
    if exact:
        pw = np.array([math.pow(10000.0, float(e)) for e in exps], dtype=F)
    else:
        pw = np.array([libm_powf(10000.0, float(e)) for e in exps], dtype=F)
    return _ONE / pw


@lru_cache(maxsize=65536)
def _rope_row(pos: int, head_size: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    val = F(pos) * _rope_freqs(head_size, exact)
    if exact:
        fcr = np.array([math.cos(float(v)) for v in val], dtype=F)
        fci = np.array([math.sin(float(v)) for v in val], dtype=F)
    else:
        fcr = np.array([libm_cosf(float(v)) for v in val], dtype=F)
        fci = np.array([libm_sinf(float(v)) for v in val], dtype=F)
    fcr.flags.writeable = False
    fci.flags.writeable = False
    return fcr, fci


def rope_row(pos: int, head_size: int, mode: Literal["runc", "exact"] = "runc") -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) of each of the head_size/2 rotation angles at ``pos``, as run.c computes them."""
    return _rope_row(int(pos), int(head_size), mode == "exact")


# glibc's sinf/cosf are within 0.56 ulp: they can round away from the correctly rounded
# result only when the true value lies within 0.06 ulp of a float32 rounding midpoint.
_TRIG_GUARD = 0.1  # float32 ulps around a midpoint where libm itself is asked


def _near_midpoint(y: np.ndarray, guard: float) -> np.ndarray:
    mant, _ = np.frexp(y)
    ulps = np.abs(mant) * 2.0**24
    return np.abs(ulps - np.floor(ulps) - 0.5) < guard


def rope_tables(
    seq_len: int, head_size: int, mode: Literal["runc", "exact"] = "runc"
) -> tuple[np.ndarray, np.ndarray]:
    """freq_cis_real/imag tables [seq_len, head_size//2] holding run.c's RoPE factors.

    Vectorised: the angles are run.c's float32 products; cos/sin are taken in float64 and
    rounded once, and only the entries near a rounding midpoint (where glibc's result may
    differ from the correctly rounded one) are asked of libm, so a long context stays fast.
    """
    exact = mode == "exact"
    val = np.arange(seq_len, dtype=F)[:, None] * _rope_freqs(int(head_size), exact)[None, :]
    tables = []
    for fn64, fn32 in ((np.cos, libm_cosf), (np.sin, libm_sinf)):
        y = fn64(val.astype(np.float64))
        out = y.astype(F)
        if not exact:
            hard = _near_midpoint(y, _TRIG_GUARD)
            out[hard] = [fn32(float(v)) for v in val[hard]]
        tables.append(out.reshape(seq_len, head_size // 2))
    return tables[0], tables[1]


# ----------------------------------------------------------------------------------------
# run.c's building blocks


def seqsum(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """C's ``float s = 0.0f; for (...) s += p[i];`` along ``axis``, for every other index."""
    if p.shape[axis] == 0:
        return np.zeros(np.delete(p.shape, axis), dtype=F)
    acc = np.add.accumulate(p, axis=axis, dtype=F)
    # starting from +0.0f only matters for an all -0.0 sum, which C makes +0.0
    return np.take(acc, -1, axis=axis) + _ZERO


class MatVec:
    """run.c's matmul(xout, x, W, n, d) for one fixed W of shape (d, n)."""

    _LOOP_ROWS = 384  # above this, adding one column at a time beats np.add.accumulate

    def __init__(self, w: np.ndarray) -> None:
        self.d, self.n = w.shape
        self.loop = self.d > self._LOOP_ROWS
        self.w = np.ascontiguousarray(w.T if self.loop else w, dtype=F)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.loop:
            return seqsum(self.w * x, axis=1)
        wt = self.w
        acc = wt[0] * x[0] + _ZERO
        for j in range(1, self.n):
            acc += wt[j] * x[j]
        return acc


def matmul(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """One-off run.c matmul: W (d, n) @ x (n,) with sequential float32 sums."""
    return MatVec(np.asarray(w, dtype=F))(np.asarray(x, dtype=F))


def rmsnorm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    ss = seqsum(x * x)
    ss = ss / F(x.shape[-1])
    ss = ss + _EPS
    ss = _ONE / np.sqrt(ss)
    return weight * (ss * x)


def softmax(x: np.ndarray, exp: Callable[[np.ndarray], np.ndarray] = expf) -> np.ndarray:
    """run.c's softmax along the last axis (max, expf of the float32 difference, divide by sum)."""
    x = np.asarray(x, dtype=F)
    e = exp(x - x.max(axis=-1, keepdims=True))
    return e / seqsum(e)[..., None]


def _exp_fn(mode: ExpMode) -> Callable[[np.ndarray], np.ndarray]:
    return expf if mode == "runc" else expf_exact


# ----------------------------------------------------------------------------------------
# the transformer


class Reference:
    """run.c's Transformer: weights, KV cache and forward()."""

    def __init__(self, model: Model, math: MathMode | None = None) -> None:
        model.check()
        self.model = model
        self.config: Config = model.config
        self.math = math or MathMode()
        self._exp = _exp_fn(self.math.exp)
        c = self.config
        self._qkv = [MatVec(np.concatenate([model.wq[l], model.wk[l], model.wv[l]])) for l in range(c.n_layers)]
        self._wo = [MatVec(model.wo[l]) for l in range(c.n_layers)]
        self._w13 = [MatVec(np.concatenate([model.w1[l], model.w3[l]])) for l in range(c.n_layers)]
        self._w2 = [MatVec(model.w2[l]) for l in range(c.n_layers)]
        self._cls = MatVec(model.wcls)
        self._kv_head = np.arange(c.n_heads) // c.kv_mul
        self._sqrt_hs = np.sqrt(F(c.head_size))
        self.key_cache = np.zeros((c.n_layers, c.seq_len, c.kv_dim), dtype=F)
        self.value_cache = np.zeros((c.n_layers, c.seq_len, c.kv_dim), dtype=F)

    def reset(self) -> None:
        """Forget the KV cache (run.c's fresh RunState)."""
        self.key_cache[:] = 0
        self.value_cache[:] = 0

    def rope(self, pos: int) -> tuple[np.ndarray, np.ndarray]:
        """(fcr, fci) for each pair of a head at ``pos``, under this reference's MathMode."""
        if self.math.rope == "table":
            return self.model.freq_cis_real[pos], self.model.freq_cis_imag[pos]
        return rope_row(pos, self.config.head_size, self.math.rope)

    def forward(self, token: int, pos: int, trace: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits for ``token`` at ``pos`` (the KV cache must hold positions 0..pos-1).

        With ``trace``, copies of the intermediates are stored in it: "x_emb"; per layer l,
        "l{l}.xb_att" (attention rmsnorm), "l{l}.q", "l{l}.k" (after RoPE), "l{l}.v",
        "l{l}.att" (softmaxed scores, [n_heads, pos+1]), "l{l}.att_heads" (weighted value
        sums before wo), "l{l}.att_out" (after wo), "l{l}.x_mid" (after the residual),
        "l{l}.xb_ffn", "l{l}.hb" (after SwiGLU), "l{l}.ffn_out" (after w2), "l{l}.x_out";
        then "x_final" (final rmsnorm) and "logits".
        """
        c = self.config
        if not 0 <= token < c.vocab_size:
            raise BootllamaError(f"token {token} is outside the vocabulary of {c.vocab_size}")
        if not 0 <= pos < c.seq_len:
            raise BootllamaError(f"position {pos} is outside the context of {c.seq_len}")
        m = self.model
        dim, kv_dim, hs, nh = c.dim, c.kv_dim, c.head_size, c.n_heads
        hidden = c.hidden_dim
        exp = self._exp

        def keep(name: str, value: np.ndarray) -> None:
            if trace is not None:
                trace[name] = np.array(value, dtype=F, copy=True)

        x = m.token_embedding_table[token].astype(F, copy=True)
        keep("x_emb", x)
        fcr, fci = self.rope(pos)
        fcr_q, fci_q = np.tile(fcr, nh), np.tile(fci, nh)
        n_kv = c.n_kv_heads
        fcr_k, fci_k = fcr_q[: n_kv * hs // 2], fci_q[: n_kv * hs // 2]
        for l in range(c.n_layers):
            xb = rmsnorm(x, m.rms_att_weight[l])
            keep(f"l{l}.xb_att", xb)
            qkv = self._qkv[l](xb)
            q, k, v = qkv[:dim], qkv[dim : dim + kv_dim], qkv[dim + kv_dim :]
            q = _rotate(q, fcr_q, fci_q)
            k = _rotate(k, fcr_k, fci_k)
            keep(f"l{l}.q", q)
            keep(f"l{l}.k", k)
            keep(f"l{l}.v", v)
            self.key_cache[l, pos] = k
            self.value_cache[l, pos] = v

            t = pos + 1
            keys = self.key_cache[l, :t].reshape(t, n_kv, hs)[:, self._kv_head]  # (t, nh, hs)
            scores = seqsum(keys * q.reshape(nh, hs), axis=2).T / self._sqrt_hs  # (nh, t)
            att = softmax(scores, exp)
            keep(f"l{l}.att", att)
            values = self.value_cache[l, :t].reshape(t, n_kv, hs)[:, self._kv_head]
            heads = seqsum(att.T[:, :, None] * values, axis=0).reshape(dim)
            keep(f"l{l}.att_heads", heads)
            xb2 = self._wo[l](heads)
            keep(f"l{l}.att_out", xb2)
            x = x + xb2
            keep(f"l{l}.x_mid", x)

            xb = rmsnorm(x, m.rms_ffn_weight[l])
            keep(f"l{l}.xb_ffn", xb)
            h13 = self._w13[l](xb)
            val, hb2 = h13[:hidden], h13[hidden:]
            val = val * (_ONE / (_ONE + exp(-val)))
            val = val * hb2
            keep(f"l{l}.hb", val)
            xb = self._w2[l](val)
            keep(f"l{l}.ffn_out", xb)
            x = x + xb
            keep(f"l{l}.x_out", x)

        x = rmsnorm(x, m.rms_final_weight)
        keep("x_final", x)
        logits = self._cls(x)
        keep("logits", logits)
        return logits


def _rotate(vec: np.ndarray, fcr: np.ndarray, fci: np.ndarray) -> np.ndarray:
    v0, v1 = vec[0::2], vec[1::2]
    out = np.empty_like(vec)
    out[0::2] = v0 * fcr - v1 * fci
    out[1::2] = v0 * fci + v1 * fcr
    return out


# ----------------------------------------------------------------------------------------
# sampling

_U64 = (1 << 64) - 1


class Rng:
    """run.c's xorshift64* generator; the state is the seed as given."""

    def __init__(self, seed: int) -> None:
        self.state = int(seed) & _U64

    def random_u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & _U64
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & _U64) >> 32

    def random_f32(self) -> np.float32:
        """A float32 in [0, 1): (u32 >> 8) / 16777216.0f."""
        return F(self.random_u32() >> 8) / F(16777216.0)


def sample_argmax(probabilities: np.ndarray) -> int:
    """Index of the largest value; the first one wins ties."""
    return int(np.argmax(probabilities))


def sample_mult(probabilities: np.ndarray, coin: float) -> int:
    """First i whose running float32 cdf exceeds ``coin``; n-1 if rounding leaves none."""
    cdf = np.add.accumulate(np.asarray(probabilities, dtype=F), dtype=F)
    hits = np.flatnonzero(F(coin) < cdf)
    return int(hits[0]) if hits.size else len(cdf) - 1


def sample_topp(probabilities: np.ndarray, topp: float, coin: float) -> int:
    """run.c's nucleus sampling over ``probabilities`` (float32, summing to ~1)."""
    probs = np.asarray(probabilities, dtype=F)
    n = len(probs)
    cutoff = (_ONE - F(topp)) / F(n - 1)
    candidates = np.flatnonzero(probs >= cutoff)
    if candidates.size == 0:  # run.c reads before its buffer here; take the best token instead
        return sample_argmax(probs)
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    cum = np.add.accumulate(probs[order], dtype=F)
    over = np.flatnonzero(cum > F(topp))
    last = int(over[0]) if over.size else len(order) - 1
    r = F(coin) * cum[last]
    hits = np.flatnonzero(r < cum[: last + 1])
    return int(order[hits[0]]) if hits.size else int(order[last])


class Sampler:
    """run.c's Sampler: greedy at temperature 0, else softmax(logits / T) with top-p or plain sampling."""

    def __init__(self, vocab_size: int, temperature: float = 0.0, topp: float = 1.0, seed: int = 0,
                 exp: ExpMode = "runc") -> None:
        self.vocab_size = vocab_size
        self.temperature = F(temperature)
        self.topp = F(topp)
        self.rng = Rng(seed)
        self._exp = _exp_fn(exp)

    def sample(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=F)[: self.vocab_size]
        if self.temperature == _ZERO:
            return sample_argmax(logits)
        probs = softmax(logits / self.temperature, self._exp)
        coin = self.rng.random_f32()
        if self.topp <= 0 or self.topp >= 1:
            return sample_mult(probs, coin)
        return sample_topp(probs, float(self.topp), coin)


# ----------------------------------------------------------------------------------------
# the generation loop


def clamp_steps(steps: int, seq_len: int) -> int:
    """run.c's step count: negative -> 0, then 0 or more than seq_len -> seq_len."""
    steps = max(0, steps)
    return seq_len if steps == 0 or steps > seq_len else steps


def generate_tokens(reference: Reference, prompt_tokens: Sequence[int], steps: int,
                    sampler: Sampler, stop_id: int = BOS) -> Iterator[int]:
    """The tokens run.c's generate() prints, in order (forced prompt tokens included).

    Starts at position 0 with ``prompt_tokens[0]`` and a fresh KV cache; stops after
    ``clamp_steps(steps)`` forward passes or when the next token is ``stop_id`` (not yielded):
    run.c's BOS, which stops even as a prompt token, or the tokenizer's own (ChatML's
    ``<|im_end|>``), which stops only a generated token.
    """
    c = reference.config
    if not prompt_tokens:
        raise BootllamaError("expected at least 1 prompt token")
    if len(prompt_tokens) > c.seq_len:
        raise BootllamaError(
            f"prompt is {len(prompt_tokens)} tokens, longer than the model's context of {c.seq_len}"
        )
    for t in prompt_tokens:
        if not 0 <= t < c.vocab_size:
            raise BootllamaError(f"prompt token {t} is outside the vocabulary of {c.vocab_size}")
    steps = clamp_steps(steps, c.seq_len)
    reference.reset()
    token = prompt_tokens[0]
    for pos in range(steps):
        logits = reference.forward(token, pos)
        forced = pos < len(prompt_tokens) - 1
        nxt = prompt_tokens[pos + 1] if forced else sampler.sample(logits)
        # run.c stops at BOS even inside the prompt; another stop id (a chat model's end of
        # turn, which its own prompt holds) ends only what the model generates
        if nxt == stop_id and (stop_id == BOS or not forced):
            return
        yield nxt
        token = nxt


def generate(reference: Reference, tokenizer: Tokenizer, prompt: str | bytes | None = None, *,
             steps: int = 0, sampler: Sampler | None = None, out: BinaryIO | None = None,
             on_token: Callable[[int], None] | None = None) -> bytes:
    """Run run.c's generate loop and return exactly the bytes it prints (final newline included).

    With ``out`` each piece is written and flushed as it is produced; ``on_token`` is called
    with each printed token after that. The default sampler is greedy.
    """
    if tokenizer.vocab_size != reference.config.vocab_size:
        raise BootllamaError(
            f"tokenizer has {tokenizer.vocab_size} pieces but the model's vocabulary has "
            f"{reference.config.vocab_size}"
        )
    sampler = sampler or Sampler(reference.config.vocab_size)
    prompt_tokens = tokenizer.encode(b"" if prompt is None else prompt, bos=True, eos=False)
    printed = []
    prev = prompt_tokens[0]
    for nxt in generate_tokens(reference, prompt_tokens, steps, sampler, stop_id=tokenizer.stop_id):
        piece = tokenizer.printable(prev, nxt)
        printed.append(piece)
        if out is not None:
            out.write(piece)
            out.flush()
        if on_token is not None:
            on_token(nxt)
        prev = nxt
    printed.append(b"\n")
    if out is not None:
        out.write(b"\n")
        out.flush()
    return b"".join(printed)
