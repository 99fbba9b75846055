"""GGUF (llama.cpp's format) -> a legacy llama2.c checkpoint, a tokenizer.bin and its sidecar.

Only what the legacy format and the engine can carry is accepted: the ``llama`` architecture,
full-width RoPE without scaling, RMSNorm eps 1e-5, dimensions within the engine's buffers,
a GPT-2 byte-level BPE vocabulary, and tensor types ``gguf``'s own dequantization reads
(:data:`SUPPORTED_TYPES`). Anything else is refused with one line naming it.

GGUF lists dimensions innermost first (ne[0] is the input width of a matrix), so a tensor's
NumPy shape from ``gguf`` is already run.c's (out, in). llama.cpp's converter stores Q and K
with each head's rotation pairs interleaved, which is the layout run.c rotates, so the
matrices map one to one.

The RoPE tables are cos/sin of pos * base^(-2j/head_size), computed in float64 and rounded
once to float32, with the file's ``llama.rope.freq_base``.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bootllama.checkpoint import Config, Model, tensor_shapes, write_legacy
from bootllama.errors import BootllamaError
from bootllama.image import MAX_DIM, MAX_HIDDEN, MAX_SEQ
from bootllama.tokenizer import BOS, BYTELEVEL_BPE, SIDECAR_FORMAT, SIDECAR_VERSION, ByteLevelTokenizer

GGUF_MAGIC = b"GGUF"
RMS_EPS = 1e-5  # the engine's and run.c's constant
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# llama.cpp token types
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4

_LAYER_TENSORS = {
    "attn_norm": "rms_att_weight", "attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo",
    "ffn_norm": "rms_ffn_weight", "ffn_gate": "w1", "ffn_down": "w2", "ffn_up": "w3",
}
_GLOBAL_TENSORS = {"token_embd": "token_embedding_table", "output_norm": "rms_final_weight", "output": "wcls"}


def is_gguf(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def rope_tables_base(seq_len: int, head_size: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """freq_cis_real/imag [seq_len, head_size//2]: cos/sin(pos * base^(-2j/head_size)), float64, rounded once."""
    j = np.arange(head_size // 2, dtype=np.float64)
    freqs = np.float64(base) ** (-2.0 * j / head_size)
    angles = np.arange(seq_len, dtype=np.float64)[:, None] * freqs[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@dataclass
class Converted:
    model: Model
    tokenizer: ByteLevelTokenizer
    rope_base: float
    name: str


def _progress(label: str) -> Callable[[int, int], None]:
    """A progress reporter on stderr: a rewritten line on a terminal, a few lines otherwise."""
    tty = sys.stderr.isatty()
    start = time.monotonic()
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if tty:
            end = "\n" if done == total else ""
            print(f"\r{label}: {done}/{total} tensors ({pct}%, {time.monotonic() - start:.1f} s)",
                  end=end, file=sys.stderr, flush=True)
        elif pct // 25 != last[0] or done == total:
            last[0] = pct // 25
            print(f"{label}: {done}/{total} tensors ({pct}%, {time.monotonic() - start:.1f} s)",
                  file=sys.stderr, flush=True)

    return report


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _need(reader: Any, name: str, key: str) -> Any:
    value = _field(reader, key)
    if value is None:
        raise BootllamaError(f"{name}: GGUF metadata lacks {key}")
    return value


def read_gguf(path: str | os.PathLike[str], seq_len: int | None = None, progress: bool = False) -> Converted:
    """Read a GGUF file into a legacy Model and a byte-level tokenizer (with its sidecar)."""
    name = os.fspath(path)
    try:
        with np.errstate(all="ignore"):  # a corrupt scale's NaN is reported below, not warned about
            return _read_gguf(path, name, seq_len, progress)
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, struct.error) as e:
        # a corrupt file: gguf's reader and the metadata values fail in many ways
        raise BootllamaError(f"{name}: malformed GGUF: {type(e).__name__}: {e}".splitlines()[0]) from None


def _read_gguf(path: str | os.PathLike[str], name: str, seq_len: int | None, progress: bool) -> Converted:
    import gguf

    if not is_gguf(path):
        raise BootllamaError(f"{name}: not a GGUF file (no GGUF magic)")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError) as e:
        raise BootllamaError(f"{name}: cannot read GGUF: {e}") from None

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise BootllamaError(f"{name}: architecture {arch!r} is not supported (only 'llama')")
    a = "llama."
    dim = int(_need(reader, name, a + "embedding_length"))
    hidden = int(_need(reader, name, a + "feed_forward_length"))
    n_layers = int(_need(reader, name, a + "block_count"))
    n_heads = int(_need(reader, name, a + "attention.head_count"))
    n_kv = int(_field(reader, a + "attention.head_count_kv", n_heads))
    context = int(_need(reader, name, a + "context_length"))
    base = float(_field(reader, a + "rope.freq_base", 10000.0))
    eps = float(_field(reader, a + "attention.layer_norm_rms_epsilon", RMS_EPS))
    if np.float32(eps) != np.float32(RMS_EPS):
        raise BootllamaError(f"{name}: RMSNorm eps {eps:g} is not the engine's 1e-5")
    if dim > MAX_DIM or hidden > MAX_HIDDEN:
        raise BootllamaError(f"{name}: dim {dim} / hidden_dim {hidden} exceed the engine's buffers "
                             f"({MAX_DIM} / {MAX_HIDDEN})")
    if n_heads <= 0 or dim % n_heads:
        raise BootllamaError(f"{name}: dim {dim} is not a multiple of head_count {n_heads}")
    head_size = dim // n_heads
    rope_dims = int(_field(reader, a + "rope.dimension_count", head_size))
    if rope_dims != head_size:
        raise BootllamaError(f"{name}: RoPE over {rope_dims} of {head_size} head dimensions cannot be carried "
                             "(run.c rotates the whole head)")
    for key in ("attention.key_length", "attention.value_length"):
        v = _field(reader, a + key)
        if v is not None and int(v) != head_size:
            raise BootllamaError(f"{name}: {a}{key} {v} differs from dim/head_count {head_size}")
    scaling = _field(reader, a + "rope.scaling.type")
    if scaling not in (None, "none"):
        raise BootllamaError(f"{name}: RoPE scaling {scaling!r} cannot be carried")
    if seq_len is None:
        seq_len = min(MAX_SEQ, context)
    if not 0 < seq_len <= min(MAX_SEQ, context):
        raise BootllamaError(f"--seq-len {seq_len} must be between 1 and {min(MAX_SEQ, context)} "
                             f"(the model's context {context}, the engine's {MAX_SEQ})")

    tokenizer = _tokenizer(reader, name)
    vocab = tokenizer.vocab_size
    tensors_by_name = {t.name: t for t in reader.tensors}
    config = Config(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len,
                    shared_classifier="output.weight" not in tensors_by_name)
    try:
        config.validate()
    except BootllamaError as e:
        raise BootllamaError(f"{name}: {e}") from None
    shapes = tensor_shapes(config)

    wanted: dict[str, tuple[str, int | None]] = {}
    for short, attr in _GLOBAL_TENSORS.items():
        wanted[f"{short}.weight"] = (attr, None)
    for l in range(n_layers):
        for short, attr in _LAYER_TENSORS.items():
            wanted[f"blk.{l}.{short}.weight"] = (attr, l)
    extra = sorted(set(tensors_by_name) - set(wanted))
    if extra:
        raise BootllamaError(f"{name}: tensor {extra[0]} has no place in a llama2.c checkpoint"
                             + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for tname, t in tensors_by_name.items():
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise BootllamaError(f"{name}: tensor {tname} is {t.tensor_type.name}, an unsupported type "
                                 f"(supported: {', '.join(SUPPORTED_TYPES)})")

    arrays: dict[str, np.ndarray] = {}
    for attr, shape in shapes.items():
        if attr.startswith("freq_cis") or (attr == "wcls" and config.shared_classifier):
            continue
        arrays[attr] = np.empty(shape, dtype=np.float32)
    report = _progress(f"converting {Path(name).name}") if progress else None
    total = len(tensors_by_name)
    done = 0
    for tname, (attr, layer) in wanted.items():
        if attr == "wcls" and config.shared_classifier:
            continue
        t = tensors_by_name.get(tname)
        if t is None:
            raise BootllamaError(f"{name}: tensor {tname} is missing")
        target = arrays[attr] if layer is None else arrays[attr][layer]
        got = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF: ne[0] first
        if got != target.shape:
            raise BootllamaError(f"{name}: tensor {tname} is {got}, expected {target.shape}")
        target[...] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(target.shape)
        done += 1
        if report:
            report(done, total)
    real, imag = rope_tables_base(seq_len, head_size, base)
    arrays["freq_cis_real"], arrays["freq_cis_imag"] = real, imag
    if config.shared_classifier:
        arrays["wcls"] = arrays["token_embedding_table"]
    model = Model(config=config, **arrays)
    model.check()
    for attr, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise BootllamaError(f"{name}: {attr} holds non-finite values")
    return Converted(model, tokenizer, base, str(_field(reader, "general.name", Path(name).stem)))


def _tokenizer(reader: Any, name: str) -> ByteLevelTokenizer:
    from bootllama.bpe import PRE_TOKENIZERS, token_bytes

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise BootllamaError(f"{name}: tokenizer model {kind!r} is not supported (only 'gpt2' byte-level BPE)")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise BootllamaError(f"{name}: pre-tokenizer {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)})")
    tokens: list[str] = list(_need(reader, name, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [_NORMAL] * len(tokens)))
    merges: list[str] = list(_field(reader, "tokenizer.ggml.merges", []))
    bos = int(_field(reader, "tokenizer.ggml.bos_token_id", BOS))
    stop = int(_need(reader, name, "tokenizer.ggml.eos_token_id"))
    if bos != BOS:
        raise BootllamaError(f"{name}: BOS is token {bos}; the engine starts every sequence from token {BOS}")
    if len(types) != len(tokens):
        raise BootllamaError(f"{name}: {len(tokens)} tokens but {len(types)} token types")
    pieces: list[bytes] = []
    special: list[dict[str, Any]] = []
    for i, (tok, kind_id) in enumerate(zip(tokens, types, strict=True)):
        if kind_id == _NORMAL:
            raw = token_bytes(tok)
            if raw is None or not raw:
                raise BootllamaError(f"{name}: token {i} {tok!r} is not a byte-level BPE token")
            pieces.append(raw)
        elif kind_id in (_CONTROL, _USER_DEFINED):
            special.append({"id": i, "text": tok})
            pieces.append(b"" if kind_id == _CONTROL else tok.encode("utf-8"))
        else:  # unknown / unused / byte tokens have no text here
            pieces.append(b"")
    if not 0 <= stop < len(tokens):
        raise BootllamaError(f"{name}: stop token {stop} is outside the vocabulary of {len(tokens)}")
    ranks = {}
    for r, m in enumerate(merges):
        if m.count(" ") != 1:
            raise BootllamaError(f"{name}: merge {r} {m!r} is not two tokens separated by a space")
        ranks.setdefault(m.replace(" ", ""), r)
    scores = []
    for i, tok in enumerate(tokens):
        r = ranks.get(tok) if types[i] == _NORMAL else None
        scores.append(-float(r + 1) if r is not None else 0.0)
    digits, regex = PRE_TOKENIZERS[pre]
    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "kind": BYTELEVEL_BPE,
        "vocab_size": len(tokens),
        "pre_tokenizer": {"name": pre, "individual_digits": digits, "regex": regex},
        "bos_id": bos,
        "stop_id": stop,
        "bos_token": tokens[bos],
        "eos_token": tokens[stop],
        "special_tokens": special,
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "merges": merges,
    }
    max_len = max(1, *(len(p) for p in pieces))
    return ByteLevelTokenizer(pieces, scores, max_len, sidecar)


def convert_gguf(path: str | os.PathLike[str], out: str | os.PathLike[str], tokenizer_out: str | os.PathLike[str],
                 seq_len: int | None = None, progress: bool = True) -> Converted:
    """Convert ``path``: write the legacy checkpoint to ``out``, tokenizer.bin and its sidecar to ``tokenizer_out``."""
    conv = read_gguf(path, seq_len=seq_len, progress=progress)
    try:
        conv.tokenizer.save(tokenizer_out)
    except OSError as e:
        raise BootllamaError(f"cannot write {os.fspath(tokenizer_out)}: {e.strerror or e}") from None
    write_legacy(conv.model, out)
    return conv


def describe(conv: Converted) -> str:
    c = conv.model.config
    cls = "tied classifier" if c.shared_classifier else "separate classifier"
    return (f"{conv.name}: dim {c.dim}, hidden {c.hidden_dim}, {c.n_layers} layers, {c.n_heads} heads "
            f"({c.n_kv_heads} KV), vocab {c.vocab_size}, seq_len {c.seq_len}, RoPE base {conv.rope_base:g}, "
            f"{cls}, stop id {conv.tokenizer.stop_id}")
