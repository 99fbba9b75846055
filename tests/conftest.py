"""Shared test fixtures: where the shared models and oracles live, and checkpoint writers
for the ak42 formats (bootllama itself only writes legacy files).

The writers follow the byte layout of llama2.c's export.py (version1_export and
version2_export) so the readers are tested against files shaped like real ones.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from bootllama.checkpoint import MAGIC, Config, Model, random_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "models"
ORACLES = SHARED / "oracles"


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
