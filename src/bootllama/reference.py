"""A NumPy forward pass and sampler that reproduce llama2.c's run.c bit for bit.

run.c is built with ``gcc -O3`` and no fast-math, so every sum is a sequential float32 sum
in index order, every operation rounds to float32, and nothing is fused. This module
keeps that order: dot products are sequential sums (``np.add.accumulate``, or adding one
column at a time), never ``np.dot``/``@``/``np.sum``, which reorder. The transcendental
functions are glibc's generic ``expf``, ``powf``, ``cosf`` and ``sinf`` as ported in
:mod:`bootllama.libm` (the host's libm is never called, so the output does not depend on it),
and RoPE is :func:`bootllama.libm.rope_values` with the base of :func:`bootllama.libm.rope_base`
(10000, as run.c, unless the checkpoint's tables clearly encode another base). The disk image
carries the same rotation values, so the engine and the reference share one arithmetic.

``MathMode`` keeps two diagnosis switches: RoPE factors from the checkpoint's freq_cis tables
(``rope="table"``), and a correctly rounded exp (``exp="exact"``, float64 rounded once), which
is what the engine computed before it used glibc's expf algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from bootllama.checkpoint import Config, Model
from bootllama.errors import BootllamaError
from bootllama.libm import checkpoint_rope, expf
from bootllama.tokenizer import BOS, Tokenizer

F = np.float32
_ZERO = F(0.0)
_ONE = F(1.0)
_EPS = F(1e-5)

RopeMode = Literal["runc", "table"]
ExpMode = Literal["runc", "exact"]


@dataclass(frozen=True)
class MathMode:
    """Which transcendental results the reference uses (the defaults are run.c's).

    rope: "runc" (run.c's powf/cosf/sinf values, base from rope_base) or "table" (the
    checkpoint's freq_cis_real/imag rows). exp: "runc" (glibc's expf) or "exact" (correctly
    rounded exp).
    """

    rope: RopeMode = "runc"
    exp: ExpMode = "runc"

    def __post_init__(self) -> None:
        if self.rope not in ("runc", "table"):
            raise BootllamaError(f"unknown rope mode {self.rope!r} (runc, table)")
        if self.exp not in ("runc", "exact"):
            raise BootllamaError(f"unknown exp mode {self.exp!r} (runc, exact)")


def expf_exact(x: np.ndarray | float) -> np.ndarray:
    """Correctly rounded exp: computed in float64, rounded once to float32 (a diagnosis mode)."""
    return np.exp(np.asarray(x, dtype=F).astype(np.float64)).astype(F)


def model_rope(model: Model) -> tuple[np.ndarray, np.ndarray]:
    """The rotation values run.c uses for ``model``: (fcr, fci), float32 [seq_len][head_size/2].

    The builder writes exactly these into the disk image, and the reference rotates with them.
    """
    return checkpoint_rope(model.freq_cis_real, model.freq_cis_imag, model.config.head_size)


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
        if self.math.rope == "table":
            self._fcr, self._fci = model.freq_cis_real, model.freq_cis_imag
        else:
            self._fcr, self._fci = model_rope(model)
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
        return self._fcr[pos], self._fci[pos]

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
    tokenizer.check_fits(prompt, reference.config.seq_len)
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
