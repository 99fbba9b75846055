from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from bootllama.checkpoint import Config, Model, load_checkpoint, random_model
from bootllama.errors import BootllamaError
from bootllama.libm import cosf, expf, powf, rope_values, sinf
from bootllama.reference import (
    MathMode,
    MatVec,
    Reference,
    Rng,
    Sampler,
    clamp_steps,
    expf_exact,
    generate,
    generate_tokens,
    model_rope,
    sample_argmax,
    sample_mult,
    sample_topp,
    seqsum,
)
from bootllama.tokenizer import Tokenizer

F = np.float32


def bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=F).view(np.uint32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(bits(a), bits(b)))


# --- exp -------------------------------------------------------------------------------


def test_expf_keeps_shape_and_handles_empty() -> None:
    x = np.linspace(-3, 3, 12, dtype=F).reshape(3, 4)
    assert expf(x).shape == (3, 4) and expf(x).dtype == F
    assert expf(np.zeros(0, dtype=F)).shape == (0,)


def test_exact_exp_is_float64_rounded_once() -> None:
    x = np.linspace(-20, 20, 1001, dtype=F)
    assert same_bits(expf_exact(x), np.exp(x.astype(np.float64)).astype(F))


# --- RoPE ------------------------------------------------------------------------------


def test_reference_rope_follows_runc_float32_steps() -> None:
    """The reference's rotation at a position is run.c's loop body, one scalar at a time."""
    model = random_model(Config(96, 64, 1, 2, 2, 32, 64), seed=1)
    ref = Reference(model)
    head_size, pos = 48, 37
    fcr, fci = ref.rope(pos)
    for k, head_dim in enumerate(range(0, head_size, 2)):
        freq = F(1.0) / powf(F(10000.0), F(head_dim) / F(head_size))
        val = F(pos) * freq
        assert same_bits(fcr[k], cosf(val)) and same_bits(fci[k], sinf(val))


def test_stories260k_tables_are_not_runcs(stories260k: Path) -> None:
    """stories260K's freq_cis tables (PyTorch's) differ from run.c's values in some entries;
    the reference uses run.c's, with the base 10000 (the tables encode 10000 too)."""
    model = load_checkpoint(stories260k)
    r, i = model_rope(model)
    assert same_bits(r, rope_values(8, 512)[0]) and same_bits(i, rope_values(8, 512)[1])
    assert np.mean(bits(r) != bits(model.freq_cis_real)) > 0.01


def test_math_mode_validates() -> None:
    with pytest.raises(BootllamaError, match="rope"):
        MathMode(rope="fast")  # type: ignore[arg-type]
    with pytest.raises(BootllamaError, match="exp"):
        MathMode(exp="fast")  # type: ignore[arg-type]


def test_table_mode_reads_the_checkpoint_tables(stories260k: Path) -> None:
    model = load_checkpoint(stories260k)
    runc_real, _ = rope_values(8, 512)
    pos = int(np.flatnonzero(np.any(bits(runc_real) != bits(model.freq_cis_real), axis=1))[0])
    ref = Reference(model, MathMode(rope="table"))
    fcr, fci = ref.rope(pos)
    assert same_bits(fcr, model.freq_cis_real[pos]) and same_bits(fci, model.freq_cis_imag[pos])
    assert not same_bits(Reference(model).rope(pos)[0], fcr)


# --- sums and matmuls ------------------------------------------------------------------


def naive_matmul(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.zeros(w.shape[0], dtype=F)
    for i in range(w.shape[0]):
        val = F(0.0)
        for j in range(w.shape[1]):
            val = F(val + F(w[i, j] * x[j]))
        out[i] = val
    return out


@pytest.mark.parametrize(("d", "n"), [(7, 33), (400, 9)])  # both MatVec strategies
def test_matvec_is_a_sequential_float32_sum(d: int, n: int) -> None:
    rng = np.random.default_rng(d)
    w = rng.standard_normal((d, n)).astype(F)
    x = (rng.standard_normal(n) * 1000).astype(F)  # wide range: summation order matters
    assert same_bits(MatVec(w)(x), naive_matmul(w, x))


def test_sequential_sum_differs_from_numpy_sum() -> None:
    x = np.array([1e8, 1.0, -1e8, 1.0] * 64, dtype=F)
    assert seqsum(x) != np.sum(x)  # np.sum pairs terms up; run.c does not
    acc = F(0.0)
    for v in x:
        acc = F(acc + v)
    assert same_bits(seqsum(x), acc)


def test_seqsum_starts_from_positive_zero() -> None:
    assert not np.signbit(seqsum(np.array([-0.0, -0.0], dtype=F)))


# --- the forward pass against a scalar transcription of run.c ----------------------------


def scalar_forward(m: Model, tokens: list[int]) -> list[np.ndarray]:
    """run.c's forward() written out element by element with float32 scalars."""
    c = m.config
    dim, hs, kv_dim = c.dim, c.head_size, c.kv_dim
    kc = np.zeros((c.n_layers, c.seq_len, kv_dim), dtype=F)
    vc = np.zeros_like(kc)

    def exp(v: F) -> F:
        return F(expf(v))

    def rmsnorm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        ss = F(0.0)
        for v in x:
            ss = F(ss + F(v * v))
        ss = F(ss / F(len(x)))
        ss = F(ss + F(1e-5))
        ss = F(F(1.0) / F(np.sqrt(ss)))
        return np.array([F(w[j] * F(ss * x[j])) for j in range(len(x))], dtype=F)

    out = []
    for pos, token in enumerate(tokens):
        x = m.token_embedding_table[token].copy()
        for l in range(c.n_layers):
            xb = rmsnorm(x, m.rms_att_weight[l])
            q = naive_matmul(m.wq[l], xb)
            k = naive_matmul(m.wk[l], xb)
            v = naive_matmul(m.wv[l], xb)
            for i in range(0, dim, 2):
                head_dim = i % hs
                freq = F(F(1.0) / powf(F(10000.0), F(F(head_dim) / F(hs))))
                val = F(F(pos) * freq)
                fcr, fci = F(cosf(val)), F(sinf(val))
                for vec in ((q, k) if i < kv_dim else (q,)):
                    v0, v1 = vec[i], vec[i + 1]
                    vec[i] = F(F(v0 * fcr) - F(v1 * fci))
                    vec[i + 1] = F(F(v0 * fci) + F(v1 * fcr))
            kc[l, pos], vc[l, pos] = k, v
            xbh = np.zeros(dim, dtype=F)
            for h in range(c.n_heads):
                kvh = h // c.kv_mul
                att = np.zeros(pos + 1, dtype=F)
                for t in range(pos + 1):
                    score = F(0.0)
                    for i in range(hs):
                        score = F(score + F(q[h * hs + i] * kc[l, t, kvh * hs + i]))
                    att[t] = F(score / F(np.sqrt(F(hs))))
                mx = att[0]
                for t in range(1, pos + 1):
                    mx = att[t] if att[t] > mx else mx
                total = F(0.0)
                for t in range(pos + 1):
                    att[t] = exp(F(att[t] - mx))
                    total = F(total + att[t])
                for t in range(pos + 1):
                    att[t] = F(att[t] / total)
                for t in range(pos + 1):
                    for i in range(hs):
                        xbh[h * hs + i] = F(xbh[h * hs + i] + F(att[t] * vc[l, t, kvh * hs + i]))
            xb2 = naive_matmul(m.wo[l], xbh)
            x = np.array([F(x[i] + xb2[i]) for i in range(dim)], dtype=F)
            xb = rmsnorm(x, m.rms_ffn_weight[l])
            hb = naive_matmul(m.w1[l], xb)
            hb2 = naive_matmul(m.w3[l], xb)
            for i in range(c.hidden_dim):
                val = hb[i]
                val = F(val * F(F(1.0) / F(F(1.0) + exp(-val))))
                hb[i] = F(val * hb2[i])
            xb = naive_matmul(m.w2[l], hb)
            x = np.array([F(x[i] + xb[i]) for i in range(dim)], dtype=F)
        x = rmsnorm(x, m.rms_final_weight)
        out.append(naive_matmul(m.wcls, x))
    return out


@pytest.mark.parametrize("shared", [True, False])
def test_forward_matches_scalar_runc(shared: bool) -> None:
    config = Config(dim=16, hidden_dim=24, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, seq_len=8,
                    shared_classifier=shared)
    model = random_model(config, seed=11)
    tokens = [1, 5, 9, 33, 2, 17]
    want = scalar_forward(model, tokens)
    ref = Reference(model)
    for pos, token in enumerate(tokens):
        assert same_bits(ref.forward(token, pos), want[pos]), pos


def test_trace_records_every_stage(small_model: Model) -> None:
    ref = Reference(small_model)
    ref.forward(1, 0)
    trace: dict[str, np.ndarray] = {}
    logits = ref.forward(42, 1, trace)
    c = small_model.config
    assert same_bits(trace["logits"], logits)
    assert same_bits(trace["x_emb"], small_model.token_embedding_table[42])
    for l in range(c.n_layers):
        for name, size in [("xb_att", c.dim), ("q", c.dim), ("k", c.kv_dim), ("v", c.kv_dim),
                           ("att_heads", c.dim), ("att_out", c.dim), ("x_mid", c.dim), ("xb_ffn", c.dim),
                           ("hb", c.hidden_dim), ("ffn_out", c.dim), ("x_out", c.dim)]:
            assert trace[f"l{l}.{name}"].shape == (size,), name
        assert trace[f"l{l}.att"].shape == (c.n_heads, 2)
        assert same_bits(trace[f"l{l}.k"], ref.key_cache[l, 1])
        assert same_bits(trace[f"l{l}.x_out"], trace[f"l{l}.x_mid"] + trace[f"l{l}.ffn_out"])
    assert trace["x_final"].shape == (c.dim,)
    # the copies are copies
    trace["logits"][:] = 0
    assert not np.all(logits == 0)


def test_forward_rejects_bad_token_and_position(small_model: Model) -> None:
    ref = Reference(small_model)
    with pytest.raises(BootllamaError, match="vocabulary"):
        ref.forward(small_model.config.vocab_size, 0)
    with pytest.raises(BootllamaError, match="context"):
        ref.forward(1, small_model.config.seq_len)


# --- sampling --------------------------------------------------------------------------


def test_rng_known_values() -> None:
    # values printed by run.c's random_u32 / random_f32
    rng = Rng(42)
    assert [rng.random_u32() for _ in range(5)] == [1456360119, 3359763283, 3393612768, 4054632243, 3283045847]
    rng = Rng(42)
    assert [float(rng.random_f32()) for _ in range(3)] == [
        float(F(0.339085221)), float(F(0.782255828)), float(F(0.790136993))]
    assert [Rng(1).random_u32() for _ in range(1)] == [1206177355]
    rng = Rng(-1)  # a negative seed wraps to 2^64 - 1, as unsigned long long does
    assert [rng.random_u32() for _ in range(3)] == [4180462053, 2415166680, 879531507]


def test_argmax_first_max_wins() -> None:
    assert sample_argmax(np.array([0.1, 0.5, 0.5, 0.2], dtype=F)) == 1


def test_sample_mult() -> None:
    p = np.array([0.25, 0.25, 0.5], dtype=F)
    assert sample_mult(p, 0.0) == 0
    assert sample_mult(p, 0.25) == 1  # coin < cdf is strict
    assert sample_mult(p, 0.75) == 2
    assert sample_mult(np.array([0.1, 0.1], dtype=F), 0.5) == 1  # rounding fallback: n - 1


def test_sample_topp() -> None:
    p = np.array([0.1, 0.4, 0.2, 0.3], dtype=F)
    # kept: 0.4 (id 1), 0.3 (id 3): cumulative 0.7 > 0.6
    assert sample_topp(p, 0.6, 0.5) == 1  # r = 0.35
    assert sample_topp(p, 0.6, 0.6) == 3  # r = 0.42
    assert sample_topp(p, 0.6, 0.999) == 3
    ties = np.array([0.3, 0.3, 0.4], dtype=F)
    assert sample_topp(ties, 0.9, 0.5) == 0  # the sort is stable: id 0 before id 1


def test_sampler_is_deterministic_for_a_seed() -> None:
    logits = np.random.default_rng(0).standard_normal(100).astype(F)

    def draws(seed: int, topp: float) -> list[int]:
        s = Sampler(100, temperature=1.0, topp=topp, seed=seed)
        return [s.sample(logits) for _ in range(30)]

    assert draws(5, 0.9) == draws(5, 0.9)
    assert draws(5, 1.0) == draws(5, 1.0)
    assert draws(5, 0.9) != draws(6, 0.9)
    assert Sampler(100, temperature=0.0).sample(logits) == int(np.argmax(logits))


def test_clamp_steps() -> None:
    assert [clamp_steps(s, 100) for s in (-5, 0, 1, 100, 101)] == [100, 100, 1, 100, 100]


# --- generation ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stories(stories260k: Path, tok512: Path) -> tuple[Reference, Tokenizer]:
    model = load_checkpoint(stories260k)
    return Reference(model), Tokenizer.load(tok512, model.config.vocab_size)


def test_greedy_generation_matches_the_runc_oracle(stories: tuple[Reference, Tokenizer]) -> None:
    oracle = shared_file("oracles/stories260K_greedy.txt").read_bytes()
    ref, tok = stories
    assert generate(ref, tok, None, steps=512) == oracle


@pytest.mark.parametrize(
    ("temperature", "topp", "seed", "steps", "prompt", "expected"),
    [
        # outputs of run.c (gcc -O3) for the same arguments
        (0.8, 0.9, 42, 60, "Once upon a time",
         b"Once upon a time, there was a little boy named Timmy. Timmy loved to play with his ball and make "
         b"it fun. One day, Timmy's mom asked him to take it away from the park.\n"),
        (1.0, 1.0, 7, 40, None,
         b"Once upon a time, there was a little girl named Lily. She loved to play with her toys all day long. "
         b"One sunny day, she\n"),
    ],
)
def test_sampled_generation_matches_runc(stories: tuple[Reference, Tokenizer], temperature: float, topp: float,
                                         seed: int, steps: int, prompt: str | None, expected: bytes) -> None:
    ref, tok = stories
    sampler = Sampler(512, temperature, topp, seed)
    assert generate(ref, tok, prompt, steps=steps, sampler=sampler) == expected


def test_generate_tokens_forces_the_prompt(small_model: Model, tok512: Path) -> None:
    tok = Tokenizer.load(tok512, 512)
    prompt = tok.encode("Once upon a time")
    out = list(generate_tokens(Reference(small_model), prompt, 10, Sampler(512)))
    assert out[: len(prompt) - 1] == prompt[1:]
    assert len(out) <= 10


def test_generate_stops_on_bos(small_model: Model, tok512: Path) -> None:
    class BosAtThree(Reference):
        def forward(self, token: int, pos: int, trace: dict[str, np.ndarray] | None = None) -> np.ndarray:
            logits = np.zeros(self.config.vocab_size, dtype=F)
            logits[1 if pos == 3 else 300 + pos] = 1.0
            return logits

    ref = BosAtThree(small_model)
    assert list(generate_tokens(ref, [1], 50, Sampler(512))) == [300, 301, 302]
    tok = Tokenizer.load(tok512, 512)
    expected = tok.printable(1, 300) + tok.printable(300, 301) + tok.printable(301, 302) + b"\n"
    assert generate(ref, tok, None, steps=50) == expected


def test_prompt_longer_than_context_is_an_error(small_model: Model, tok512: Path) -> None:
    tok = Tokenizer.load(tok512, 512)
    with pytest.raises(BootllamaError, match="longer than the model's context"):
        generate(Reference(small_model), tok, "x" * 200)


@pytest.mark.parametrize("mode", [MathMode(rope="table"), MathMode(exp="exact")])
def test_other_math_modes_still_tell_a_story(stories260k: Path, tok512: Path, mode: MathMode) -> None:
    model = load_checkpoint(stories260k)
    tok = Tokenizer.load(tok512, 512)
    out = generate(Reference(model, mode), tok, None, steps=30)
    assert out.startswith(b"Once upon a time")
