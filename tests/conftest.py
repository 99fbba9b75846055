"""Shared test fixtures: where the shared models and oracles live, and checkpoint writers
for the ak42 formats (bootllama itself only writes legacy files).

The writers follow the byte layout of llama2.c's export.py (version1_export and
version2_export) so the readers are tested against files shaped like real ones.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import pytest

from bootllama.checkpoint import MAGIC, Config, Model, random_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "models"
ORACLES = SHARED / "oracles"


# `make test` runs pytest-xdist with two workers, a test file to a worker, in the order collected
# (-n 2 --dist loadfile --no-loadscope-reorder): the files with the longest boots go first, so
# that neither worker idles at the end while the other runs one; the rest keep their order.
LONG_FILES = ("test_uefi.py", "test_web.py", "test_pcs.py", "test_sweep.py", "test_engine.py", "test_talk_run.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: tests keep their order


def shared_file(relative: str) -> Path:
    """A file under the repo's sibling shared/ folder, or skip the test naming what is missing."""
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"{path} is not present (shared/ is expected beside the repository)")
    return path


def _versioned_header(config: Config, version: int, extra: bytes = b"") -> bytes:
    head = struct.pack("<Ii7i", MAGIC, version, *config.header_ints())
    head += struct.pack("<B", int(config.shared_classifier)) + extra
    return head + b"\0" * (256 - len(head))


def _f32(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr, dtype="<f4").tobytes()


def write_v1(model: Model, path: Path) -> None:
    """An ak42 version-1 (float32) checkpoint, in export.py's tensor order."""
    c = model.config
    parts = [_versioned_header(c, 1)]
    parts += [_f32(model.rms_att_weight), _f32(model.rms_ffn_weight), _f32(model.rms_final_weight)]
    parts += [_f32(getattr(model, n)) for n in ("token_embedding_table", "wq", "wk", "wv", "wo", "w1", "w2", "w3")]
    if not c.shared_classifier:
        parts.append(_f32(model.wcls))
    path.write_bytes(b"".join(parts))


def quantize_q80(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """export.py's Q8_0: per group scale = max|w| / 127, q = round(w / scale) (ties to even)."""
    groups = np.asarray(w, dtype=np.float32).reshape(-1, group_size)
    scale = (np.abs(groups).max(axis=1) / np.float32(127.0)).astype(np.float32)
    q = np.round(groups / scale[:, None]).astype(np.int8)
    return q.reshape(-1), scale


def write_v2(model: Model, path: Path, group_size: int = 64) -> None:
    """An ak42 version-2 (Q8_0) checkpoint: norms in float32, then per tensor int8 values and scales."""
    c = model.config
    parts = [_versioned_header(c, 2, struct.pack("<i", group_size))]
    parts += [_f32(model.rms_att_weight), _f32(model.rms_ffn_weight), _f32(model.rms_final_weight)]
    tensors = [model.token_embedding_table]
    for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
        tensors += list(getattr(model, name))
    if not c.shared_classifier:
        tensors.append(model.wcls)
    for w in tensors:
        q, s = quantize_q80(w, group_size)
        parts += [q.tobytes(), _f32(s)]
    path.write_bytes(b"".join(parts))


def dequantized(w: np.ndarray, group_size: int) -> np.ndarray:
    """What a version-2 file stores for ``w``, read back as float32."""
    q, s = quantize_q80(w, group_size)
    return (q.astype(np.float32).reshape(-1, group_size) * s[:, None]).reshape(w.shape)


SMALL = Config(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, seq_len=64,
               shared_classifier=True)


@pytest.fixture(scope="session")
def small_model() -> Model:
    """A small random model (GQA, shared classifier) that pairs with tok512."""
    return random_model(SMALL, seed=1)


@pytest.fixture(scope="session")
def stories260k() -> Path:
    from bootllama.checkpoint import packaged_path

    return packaged_path("stories260K.bin")


@pytest.fixture(scope="session")
def tok512() -> Path:
    from bootllama.checkpoint import packaged_path

    return packaged_path("tok512.bin")


# ----------------------------------------------------------------------------------------
# a small model of SmolLM2's kind: GQA 3:1, RoPE base 100000, a byte-level BPE tokenizer
# (ChatML special tokens first, stop id 2, no <0xXX> byte pieces) with its sidecar

BYTELEVEL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>")
BYTELEVEL_CORPUS = (
    "Once upon a time there was a little girl named Lily. She liked to play in the park with her dog. "
    "The capital of France is Paris; the capital of Italy is Rome. 1234 + 5678 = 6912. "
    "Héllo wörld, naïve café, ñandú, Ελληνικά, русский, 日本語のテキスト, emoji 🙂🙂!\n\n"
    "def main():\n    return 42  # it's done, we'll see, they're here\n\t\tTabs   and   spaces.\n"
)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BYTELEVEL_CONFIG = Config(dim=48, hidden_dim=96, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=0, seq_len=96,
                          shared_classifier=True)
BYTELEVEL_PROMPT = "The capital of France is"


def train_bytelevel_bpe(corpus: str, n_merges: int) -> tuple[list[str], list[str]]:
    """A byte-level BPE vocabulary learnt from ``corpus``: (tokens, merges "a b"), specials first.

    The 256 byte tokens follow the specials in GPT-2's byte-to-unicode order; each merge of the
    most frequent adjacent pair (ties: the first seen) adds one token.
    """
    from collections import Counter

    import regex

    from bootllama.bpe import GPT2_REGEX, bytes_to_unicode

    b2u = bytes_to_unicode()
    words = Counter(tuple(b2u[b] for b in w.encode()) for w in regex.findall(GPT2_REGEX, corpus))
    tokens = [*BYTELEVEL_SPECIALS, *sorted(b2u.values(), key=lambda c: (ord(c) >= 256, ord(c)))]
    merges: list[str] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for w, n in words.items():
            for pair in itertools.pairwise(w):
                pairs[pair] += n
        if not pairs:
            break
        (a, b), _count = pairs.most_common(1)[0]
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        merged: Counter[tuple[str, ...]] = Counter()
        for w, n in words.items():
            out: list[str] = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return tokens, merges


def bytelevel_tokenizer(n_merges: int = 200):  # type: ignore[no-untyped-def]
    """The small byte-level tokenizer (a ByteLevelTokenizer with its sidecar dict)."""
    from bootllama.bpe import GPT2_REGEX, token_bytes
    from bootllama.tokenizer import BYTELEVEL_BPE, SIDECAR_FORMAT, SIDECAR_VERSION, ByteLevelTokenizer

    tokens, merges = train_bytelevel_bpe(BYTELEVEL_CORPUS, n_merges)
    n_special = len(BYTELEVEL_SPECIALS)
    pieces = [b""] * n_special + [token_bytes(t) or b"" for t in tokens[n_special:]]
    scores = [0.0] * (n_special + 256) + [-float(r + 1) for r in range(len(merges))]
    sidecar = {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "kind": BYTELEVEL_BPE, "vocab_size": len(tokens),
        "pre_tokenizer": {"name": "smollm", "individual_digits": True, "regex": GPT2_REGEX},
        "bos_id": 1, "stop_id": 2, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "special_tokens": [{"id": i, "text": t} for i, t in enumerate(BYTELEVEL_SPECIALS)],
        "chat_template": SMOLLM2_TEMPLATE, "merges": merges,
    }
    return ByteLevelTokenizer(pieces, scores, max(len(p) for p in pieces), sidecar)


def write_bytelevel_model(folder: Path, stop_after: int = 6) -> tuple[Path, Path]:
    """Write model.bin (legacy v0) and tokenizer.bin + tokenizer.bin.json of SmolLM2's kind into ``folder``.

    GQA 3:1 (6 heads, 2 KV heads), tied classifier, RoPE tables of base 100000, vocabulary of
    4 specials + 256 bytes + 200 merges. The random weights are relabelled (embedding rows of
    id 2 and of the greedy run's token number ``stop_after`` after BYTELEVEL_PROMPT swapped), so
    greedy generation from that prompt emits the stop id 2 after ``stop_after`` tokens.
    Returns (checkpoint, tokenizer) paths.
    """
    from dataclasses import replace

    from bootllama.checkpoint import write_legacy
    from bootllama.gguf_convert import rope_tables_base
    from bootllama.reference import Reference, Sampler, generate_tokens

    tok = bytelevel_tokenizer()
    config = replace(BYTELEVEL_CONFIG, vocab_size=tok.vocab_size)
    model = random_model(config, seed=7)
    model.freq_cis_real[...], model.freq_cis_imag[...] = rope_tables_base(config.seq_len, config.head_size, 1e5)
    prompt = tok.encode(BYTELEVEL_PROMPT)
    ref = Reference(model)  # RoPE: run.c's values for the base the tables encode, as the image's
    out = list(generate_tokens(ref, prompt, len(prompt) + stop_after + 2, Sampler(config.vocab_size), stop_id=2))
    generated = out[len(prompt) - 1 :]
    x = generated[stop_after]
    if x in (1, 2) or x in prompt or 2 in generated[: stop_after]:
        raise AssertionError(f"fixture cannot relabel token {x} as the stop id")
    emb = model.token_embedding_table
    emb[[2, x]] = emb[[x, 2]]
    folder.mkdir(parents=True, exist_ok=True)
    write_legacy(model, folder / "model.bin")
    tok.save(folder / "tokenizer.bin")
    return folder / "model.bin", folder / "tokenizer.bin"


@pytest.fixture(scope="session")
def bytelevel_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, tokenizer) of a small SmolLM2-kind model (see write_bytelevel_model): greedy from
    BYTELEVEL_PROMPT it prints 6 tokens and stops at id 2 (<|im_end|>)."""
    return write_bytelevel_model(tmp_path_factory.mktemp("bytelevel"))
