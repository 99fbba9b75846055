"""llama2.c checkpoints: the model config, its weights, and the file formats that hold them.

Three formats are read (``load_checkpoint`` tells them apart):

* legacy, "version 0": a 28-byte header of seven little-endian int32
  (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative
  vocab_size means the classifier is stored separately), then float32 tensors in run.c's
  order, including the RoPE tables freq_cis_real / freq_cis_imag;
* ``ak42`` version 1: a 256-byte header (magic, version, the seven ints, a shared-classifier
  byte, zero padding), then float32 tensors in export.py's version-1 order;
* ``ak42`` version 2: like version 1 plus an int32 group size after the flag byte; the
  rmsnorm weights stay float32 and every matrix is Q8_0: int8 values followed by one
  float32 scale per group.

Versions 1 and 2 carry no RoPE tables; they are filled in the way run.c computes RoPE
(glibc ``powf``/``cosf``/``sinf``), see :func:`bootllama.libm.rope_values`.
Only legacy files are written.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import BinaryIO

try:
    import numpy as np
except ModuleNotFoundError:  # Pyodide's core (the web page builds images with image.py): headers and
    np = None  # type: ignore[assignment]  # layouts need no NumPy; reading or writing tensors does

from bootllama.errors import BootllamaError
from bootllama.interrupts import deferred

MAGIC = 0x616B3432  # "ak42" as a little-endian uint32
LEGACY_HEADER_SIZE = 28
VERSIONED_HEADER_SIZE = 256
F32 = np.dtype("<f4") if np is not None else "<f4"
MAX_ROPE_ENTRIES = 1 << 24  # RoPE factors computed for an ak42 file (Llama-2 7B: 4096 x 64)

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class Config:
    """The seven header ints of a checkpoint, plus whether the classifier is the embedding."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool = True

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.dim * self.n_kv_heads // self.n_heads

    @property
    def kv_mul(self) -> int:
        return self.n_heads // self.n_kv_heads

    def validate(self) -> None:
        """Raise BootllamaError (message without a file name) unless run.c could use this shape."""
        self.validate_shape()
        self.validate_head_size()

    def validate_shape(self) -> None:
        """Every check of validate() but the head size's parity."""
        for f in fields(self):
            if f.name == "shared_classifier":
                continue
            value = getattr(self, f.name)
            if not isinstance(value, int) or value <= 0:
                raise BootllamaError(f"bad header: {f.name}={value} must be a positive integer")
        if self.dim % self.n_heads:
            raise BootllamaError(f"bad header: dim={self.dim} is not a multiple of n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise BootllamaError(
                f"bad header: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )

    def validate_head_size(self) -> None:
        if self.head_size % 2:
            raise BootllamaError(
                f"head_size={self.head_size} (dim={self.dim} / n_heads={self.n_heads}) is odd; run.c's RoPE "
                "rotates pairs of values within a head, so the head size must be even")

    def header_ints(self) -> tuple[int, int, int, int, int, int, int]:
        return (self.dim, self.hidden_dim, self.n_layers, self.n_heads,
                self.n_kv_heads, self.vocab_size, self.seq_len)


def tensor_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of a model, in legacy (run.c) file order, with its shape."""
    c = config
    return {
        "token_embedding_table": (c.vocab_size, c.dim),
        "rms_att_weight": (c.n_layers, c.dim),
        "wq": (c.n_layers, c.dim, c.dim),
        "wk": (c.n_layers, c.kv_dim, c.dim),
        "wv": (c.n_layers, c.kv_dim, c.dim),
        "wo": (c.n_layers, c.dim, c.dim),
        "rms_ffn_weight": (c.n_layers, c.dim),
        "w1": (c.n_layers, c.hidden_dim, c.dim),
        "w2": (c.n_layers, c.dim, c.hidden_dim),
        "w3": (c.n_layers, c.hidden_dim, c.dim),
        "rms_final_weight": (c.dim,),
        "freq_cis_real": (c.seq_len, c.head_size // 2),
        "freq_cis_imag": (c.seq_len, c.head_size // 2),
        "wcls": (c.vocab_size, c.dim),
    }


@dataclass(eq=False)
class Model:
    """A checkpoint in memory: float32 arrays named and shaped as in run.c.

    ``wcls`` is the very same array object as ``token_embedding_table`` when
    ``config.shared_classifier`` is true.
    """

    config: Config
    token_embedding_table: np.ndarray
    rms_att_weight: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    rms_ffn_weight: np.ndarray
    w1: np.ndarray
    w2: np.ndarray
    w3: np.ndarray
    rms_final_weight: np.ndarray
    freq_cis_real: np.ndarray
    freq_cis_imag: np.ndarray
    wcls: np.ndarray

    def check(self) -> None:
        """Raise BootllamaError if a tensor has the wrong shape or dtype."""
        self.config.validate()
        for name, shape in tensor_shapes(self.config).items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != shape:
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise BootllamaError(f"model tensor {name} must be float32 {shape}, got {got}")
        if self.config.shared_classifier and self.wcls is not self.token_embedding_table:
            raise BootllamaError("model says shared_classifier but wcls is not the embedding table")

    def tensors(self) -> dict[str, np.ndarray]:
        """Name -> array, in legacy file order (wcls included even when shared)."""
        return {name: getattr(self, name) for name in tensor_shapes(self.config)}


def legacy_layout(config: Config) -> dict[str, tuple[int, int]]:
    """Byte (offset, size) of the header and of every tensor inside a legacy file.

    ``wcls`` is always present: when the classifier is shared it names the embedding's bytes.
    """
    layout: dict[str, tuple[int, int]] = {"header": (0, LEGACY_HEADER_SIZE)}
    offset = LEGACY_HEADER_SIZE
    for name, shape in tensor_shapes(config).items():
        size = 4 * math.prod(shape)
        if name == "wcls" and config.shared_classifier:
            layout[name] = layout["token_embedding_table"]
            continue
        layout[name] = (offset, size)
        offset += size
    return layout


def legacy_size(config: Config) -> int:
    """Exact size in bytes of a legacy file holding a model of this config."""
    return max(off + size for off, size in legacy_layout(config).values())


def _q8_tensors(config: Config) -> list[tuple[str, int]]:
    """Version-2 quantized tensors in file order: (model attribute, element count), one per layer."""
    c = config
    out = [("token_embedding_table", c.vocab_size * c.dim)]
    for name, per_layer in (("wq", c.dim * c.dim), ("wk", c.kv_dim * c.dim), ("wv", c.kv_dim * c.dim),
                            ("wo", c.dim * c.dim), ("w1", c.hidden_dim * c.dim),
                            ("w2", c.dim * c.hidden_dim), ("w3", c.hidden_dim * c.dim)):
        out.extend([(name, per_layer)] * c.n_layers)
    if not c.shared_classifier:
        out.append(("wcls", c.vocab_size * c.dim))
    return out


def _versioned_size(config: Config, version: int, group_size: int) -> int:
    c = config
    if version == 1:
        n = sum(math.prod(s) for name, s in tensor_shapes(c).items()
                if not name.startswith("freq_cis") and (name != "wcls" or not c.shared_classifier))
        return VERSIONED_HEADER_SIZE + 4 * n
    norms = 2 * c.n_layers * c.dim + c.dim
    return VERSIONED_HEADER_SIZE + 4 * norms + sum(n + 4 * (n // group_size) for _, n in _q8_tensors(c))


def _legacy_header(head: bytes) -> Config:
    ints = struct.unpack("<7i", head[:LEGACY_HEADER_SIZE])
    vocab = ints[5]
    return Config(*ints[:5], abs(vocab), ints[6], shared_classifier=vocab > 0)


def _file_size(path: StrPath) -> int:
    return os.stat(path).st_size


def _read_head(path: StrPath, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _check_size(path: StrPath, actual: int, expected: int, what: str) -> None:
    if actual != expected:
        raise BootllamaError(
            f"{os.fspath(path)}: file is {actual} bytes but its {what} header implies {expected}"
            + (" (truncated?)" if actual < expected else "")
        )


def _validated(path: StrPath, config: Config, what: str) -> Config:
    try:
        config.validate()
    except BootllamaError as e:
        raise BootllamaError(f"{os.fspath(path)}: {what}: {e}") from None
    return config


def read_legacy_config(path: StrPath) -> Config:
    """Read and validate a legacy header, and check the file size it implies."""
    size = _file_size(path)
    head = _read_head(path, LEGACY_HEADER_SIZE)
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == MAGIC:
        version = struct.unpack_from("<i", head, 4)[0] if len(head) >= 8 else "?"
        raise BootllamaError(
            f"{os.fspath(path)}: is an ak42 version {version} checkpoint, not legacy; "
            "convert it with `bootllama convert`"
        )
    if len(head) < LEGACY_HEADER_SIZE:
        raise BootllamaError(f"{os.fspath(path)}: file is {size} bytes, too short for a checkpoint header")
    config = _legacy_header(head)
    try:
        config.validate_shape()
    except BootllamaError as e:
        raise BootllamaError(
            f"{os.fspath(path)}: not an ak42 checkpoint (bad magic) and not a valid legacy header: {e}") from None
    # a legacy header in every other respect: say what is wrong with it, nothing about magic
    try:
        config.validate_head_size()
    except BootllamaError as e:
        raise BootllamaError(f"{os.fspath(path)}: {e}") from None
    _check_size(path, size, legacy_size(config), "legacy")
    return config


def _read_all(path: StrPath, size: int) -> bytearray:
    buf = bytearray(size)
    with open(path, "rb") as f:
        if f.readinto(buf) != size:
            raise BootllamaError(f"{os.fspath(path)}: file changed while it was being read")
    return buf


class _Cursor:
    def __init__(self, buf: bytearray, offset: int) -> None:
        self.buf = buf
        self.offset = offset

    def take(self, dtype: np.dtype | str, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.offset)
        self.offset += count * dt.itemsize
        return arr


def _f32(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return arr.astype(np.float32, copy=False).reshape(shape)


def _model_from(config: Config, tensors: dict[str, np.ndarray]) -> Model:
    if config.shared_classifier:
        tensors["wcls"] = tensors["token_embedding_table"]
    if "freq_cis_real" not in tensors:
        # an ak42 file stores no RoPE tables, so its size does not bound seq_len: a corrupt
        # header must not make us compute (and hold) billions of factors
        entries = config.seq_len * (config.head_size // 2)
        if entries > MAX_ROPE_ENTRIES:
            raise BootllamaError(f"bad header: seq_len={config.seq_len} with head_size={config.head_size} "
                                 f"needs {entries} RoPE factors, more than {MAX_ROPE_ENTRIES}")
        from bootllama.libm import rope_values  # (NumPy: not needed for headers and layouts)

        tensors["freq_cis_real"], tensors["freq_cis_imag"] = rope_values(config.head_size, config.seq_len)
    return Model(config=config, **tensors)


def _load_legacy(path: StrPath) -> Model:
    config = read_legacy_config(path)
    buf = _read_all(path, legacy_size(config))
    cur = _Cursor(buf, LEGACY_HEADER_SIZE)
    tensors = {}
    for name, shape in tensor_shapes(config).items():
        if name == "wcls" and config.shared_classifier:
            continue
        tensors[name] = _f32(cur.take(F32, int(np.prod(shape))), shape)
    return _model_from(config, tensors)


def _load_versioned(path: StrPath, size: int, head: bytes) -> Model:
    name = os.fspath(path)
    if size < VERSIONED_HEADER_SIZE:
        raise BootllamaError(f"{name}: file is {size} bytes, too short for an ak42 header")
    version = struct.unpack_from("<i", head, 4)[0]
    if version not in (1, 2):
        raise BootllamaError(f"{name}: unsupported ak42 checkpoint version {version} (known: 1, 2)")
    ints = struct.unpack_from("<7i", head, 8)
    flag = head[36]
    if flag not in (0, 1):
        raise BootllamaError(f"{name}: bad header: shared-classifier flag is {flag}, expected 0 or 1")
    config = _validated(path, Config(*ints, shared_classifier=bool(flag)), f"ak42 version {version}")
    group_size = 0
    if version == 2:
        group_size = struct.unpack_from("<i", head, 37)[0]
        if group_size <= 0:
            raise BootllamaError(f"{name}: bad header: Q8_0 group size {group_size} must be positive")
        for tname, n in _q8_tensors(config):
            if n % group_size:
                raise BootllamaError(
                    f"{name}: bad header: Q8_0 group size {group_size} does not divide {tname} ({n} values)"
                )
    _check_size(path, size, _versioned_size(config, version, group_size), f"version {version}")
    cur = _Cursor(_read_all(path, size), VERSIONED_HEADER_SIZE)
    shapes = tensor_shapes(config)
    c = config
    tensors: dict[str, np.ndarray] = {}
    for tname in ("rms_att_weight", "rms_ffn_weight", "rms_final_weight"):
        tensors[tname] = _f32(cur.take(F32, int(np.prod(shapes[tname]))), shapes[tname])
    if version == 1:
        order = ["token_embedding_table", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]
        if not c.shared_classifier:
            order.append("wcls")
        for tname in order:
            tensors[tname] = _f32(cur.take(F32, int(np.prod(shapes[tname]))), shapes[tname])
    else:
        parts: dict[str, list[np.ndarray]] = {}
        for tname, n in _q8_tensors(config):
            q = cur.take(np.int8, n)
            s = cur.take(F32, n // group_size).astype(np.float32, copy=False)
            # runq.c's dequantize: float(q) * scale, one float32 rounding
            parts.setdefault(tname, []).append(
                (q.astype(np.float32).reshape(-1, group_size) * s[:, None]).reshape(-1)
            )
        for tname, chunks in parts.items():
            tensors[tname] = np.concatenate(chunks).reshape(shapes[tname])
    return _model_from(config, tensors)


def load_checkpoint(path: StrPath) -> Model:
    """Load a legacy, version-1 or version-2 llama2.c checkpoint, validating it first."""
    size = _file_size(path)
    head = _read_head(path, VERSIONED_HEADER_SIZE)
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == MAGIC:
        return _load_versioned(path, size, head)
    return _load_legacy(path)


def same_file(a: StrPath, b: StrPath) -> bool:
    """Whether two paths name one file (device and inode: symlinks and hard links included)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def refuse_inputs(output: StrPath, inputs: Mapping[str, StrPath | None]) -> None:
    """Raise BootllamaError when ``output`` is, or links to, one of ``inputs`` (what -> path)."""
    for what, path in inputs.items():
        if path is not None and same_file(output, path):
            same = "" if os.path.abspath(output) == os.path.abspath(path) else f" ({os.fspath(path)})"
            raise BootllamaError(f"{os.fspath(output)} is the {what}{same}: writing there would destroy it; "
                                 "choose another output path")


def is_special(path: StrPath) -> bool:
    """Whether ``path`` exists (links followed) as something other than a regular file or a
    directory: a character or block device, a FIFO, a socket."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_into(path: StrPath, src: BinaryIO) -> None:
    """Copy ``src`` (from where it stands) into ``path``, a device or a FIFO (is_special:
    /dev/null, /dev/stdout, a USB stick's /dev/sdX, a pipe), as cp and dd write: the node stays
    (a rename would put a regular file in its place; as root, /dev/null itself). A block device
    is synced before this returns."""
    try:
        with open(path, "wb") as out:  # (path, not its realpath: a pipe's /proc link names no file)
            shutil.copyfileobj(src, out, 1 << 20)
            if stat.S_ISBLK(os.fstat(out.fileno()).st_mode):
                out.flush()
                os.fsync(out.fileno())  # a disk (a USB stick): on it before we say so
    except OSError as e:
        raise BootllamaError(f"cannot write {os.fspath(path)}: {e.strerror or e}") from None


@contextmanager
def atomic_write(path: StrPath, inputs: Mapping[str, StrPath | None] | None = None) -> Iterator[BinaryIO]:
    """Write a file through a temporary sibling that replaces ``path`` only on success (through
    a symbolic link: its file is replaced; a device or a FIFO is written into: see is_special).

    ``inputs`` (what -> path): refuse, before anything is written, a ``path`` that is one of
    them. Nothing is left behind if the body raises or a signal comes (bootllama.interrupts).
    Failures to create, write or rename the file are BootllamaError naming ``path`` (never the
    temporary name); other OSErrors from the body propagate.
    """
    refuse_inputs(path, inputs or {})
    if is_special(path):
        # a device or a FIFO: the bytes go into it once they are whole (the body may seek: they
        # are gathered in an unnamed temporary file first)
        with tempfile.TemporaryFile() as f:
            yield f
            f.seek(0)
            write_into(path, f)
        return
    # a symbolic link is written through, as open() would (the link stays, its file gets the
    # bytes): /dev/stdout, or an image link the user keeps; /proc's fd links resolve too
    target = Path(os.path.realpath(path))
    tmp: str | None = None
    stage = "create"
    try:
        with deferred():  # the temporary file and its clean-up come into being together
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        stage = "write"
        with os.fdopen(fd, "wb") as f:
            yield f
        stage = "rename"
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
        tmp = None
    except OSError as e:
        if stage != "write" or e.filename in (None, tmp):
            raise BootllamaError(f"cannot write {os.fspath(path)}: {e.strerror or e}") from None
        raise
    finally:
        if tmp is not None:
            with deferred(), suppress(OSError):
                os.unlink(tmp)


def legacy_bytes_header(config: Config) -> bytes:
    """The 28-byte legacy header (negative vocab_size when the classifier is separate)."""
    ints = list(config.header_ints())
    if not config.shared_classifier:
        ints[5] = -ints[5]
    return struct.pack("<7i", *ints)


def write_legacy(model: Model, path: StrPath) -> None:
    """Write ``model`` as a legacy (version 0) checkpoint, atomically."""
    model.check()
    shared = model.config.shared_classifier
    try:
        with atomic_write(path) as f:
            f.write(legacy_bytes_header(model.config))
            for name, arr in model.tensors().items():
                if name == "wcls" and shared:
                    continue
                f.write(np.ascontiguousarray(arr, dtype=F32).tobytes())
    except OSError as e:
        raise BootllamaError(f"cannot write {os.fspath(path)}: {e.strerror or e}") from None


def random_model(
    config: Config,
    seed: int = 0,
    *,
    emb_std: float | None = None,
    weight_scale: float = 2.0,
    cls_std: float | None = None,
) -> Model:
    """A deterministic random model of any valid shape, for tests.

    Each matrix is N(0, weight_scale / sqrt(fan_in)), so every layer adds more to the
    residual stream than the embedding, N(0, emb_std = 1 / sqrt(dim)), holds: greedy text
    then does not just repeat its input token. The rmsnorm weights are 1 + N(0, 0.1). A
    separate classifier is N(0, cls_std = 4 / sqrt(dim)). With the defaults the top two logits
    stay well apart (they are O(1) values) and greedy output is varied; the tests check both.
    The RoPE tables are the values run.c computes.
    """
    config.validate()
    rng = np.random.default_rng(seed)
    c = config

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def norm_weights(shape: tuple[int, ...]) -> np.ndarray:
        return (np.float32(1.0) + normal(shape, 0.1)).astype(np.float32)

    shapes = tensor_shapes(c)
    emb = 1.0 / np.sqrt(c.dim) if emb_std is None else emb_std
    tensors: dict[str, np.ndarray] = {"token_embedding_table": normal(shapes["token_embedding_table"], emb)}
    tensors["rms_att_weight"] = norm_weights(shapes["rms_att_weight"])
    for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
        shape = shapes[name]
        tensors[name] = normal(shape, weight_scale / np.sqrt(shape[-1]))
    tensors["rms_ffn_weight"] = norm_weights(shapes["rms_ffn_weight"])
    tensors["rms_final_weight"] = norm_weights(shapes["rms_final_weight"])
    from bootllama.libm import rope_values

    tensors["freq_cis_real"], tensors["freq_cis_imag"] = rope_values(c.head_size, c.seq_len)
    if not c.shared_classifier:
        tensors["wcls"] = normal(shapes["wcls"], 4.0 / np.sqrt(c.dim) if cls_std is None else cls_std)
    return _model_from(c, tensors)


def packaged_path(name: str) -> Path:
    """Path of a file shipped in ``bootllama/data`` (e.g. ``stories260K.bin``, ``tok512.bin``)."""
    res = resources.files("bootllama").joinpath("data", name)
    if not isinstance(res, Path) or not res.is_file():
        raise BootllamaError(f"packaged file {name} is missing from the bootllama installation")
    return res


DEFAULT_CHECKPOINT = "stories260K.bin"
DEFAULT_TOKENIZER = "tok512.bin"
