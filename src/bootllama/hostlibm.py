"""The host's glibc float functions, called in a child process, for checking ``bootllama.libm``.

glibc chooses between two builds of ``expf``/``powf``/``sinf``/``cosf`` when it loads: the
generic C, or the same C compiled with FMA and AVX2 (fused multiply-adds) when the CPU has
both. The choice is made once per process, so the generic build is reached by starting a
child process with the FMA and AVX2 hardware capabilities masked through ``GLIBC_TUNABLES``
(``GENERIC_TUNABLES``). ``HostLibm`` runs such a child (or an unmasked one, the host's
default) and maps a function over float32 arrays in it: through a small C loop compiled with
gcc when gcc is there (about 10 ns an element), else one ctypes call per element.

This is a test and measurement tool: the reference and the image builder never call it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np

from bootllama.errors import BootllamaError

GENERIC_TUNABLES = "glibc.cpu.hwcaps=-AVX2,-FMA"
"""glibc 2.33+ (checked on 2.36): hide AVX2 and FMA from the ifunc selectors, so the process
gets the generic (non-FMA) float functions. glibc's selector needs both for the FMA build."""

FUNCTIONS = {"expf": 1, "sinf": 1, "cosf": 1, "powf": 2, "exp2f": 1, "logf": 1}

_C_LOOPS = r"""
typedef float (*f1)(float);
typedef float (*f2)(float, float);
void map1(f1 f, const float *x, float *y, long n) { for (long i = 0; i < n; i++) y[i] = f(x[i]); }
void map2(f2 f, const float *a, const float *b, float *y, long n) {
    for (long i = 0; i < n; i++) y[i] = f(a[i], b[i]);
}
"""


def every_float(lo: float, hi: float, chunk: int = 1 << 24) -> Iterator[np.ndarray]:
    """Every float32 in [lo, hi] (lo <= hi; -0.0 included when lo < 0 <= hi), in ascending chunks
    of at most ``chunk`` values."""
    a, b = np.array([lo, hi], dtype=np.float32).view(np.uint32).astype(np.int64)
    neg, pos = [], []
    if lo < 0 or (lo == 0 and a >= 0x80000000):  # negatives: bit patterns from -lo down to -0
        neg.append((int(a) & 0x7FFFFFFF, 0 if hi >= 0 else int(b) & 0x7FFFFFFF))
    if hi >= 0 and not (hi == 0 and b >= 0x80000000):
        pos.append((0 if lo <= 0 else int(a), int(b)))
    for top, bottom in neg:
        for end in range(top, bottom - 1, -chunk):
            start = max(bottom, end - chunk + 1)
            yield (np.arange(end, start - 1, -1, dtype=np.int64).astype(np.uint32) | np.uint32(0x80000000)).view(
                np.float32)
    for bottom, top in pos:
        for start in range(bottom, top + 1, chunk):
            yield np.arange(start, min(top + 1, start + chunk), dtype=np.uint32).view(np.float32)


def _loop_library() -> Path | None:
    """Compile (once per machine and source) the C loops; None without gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bootllama"
    tag = hashlib.sha256(_C_LOOPS.encode()).hexdigest()[:12]
    lib = cache / f"libmloop-{tag}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "loop.c"
        src.write_text(_C_LOOPS)
        out = Path(tmp) / "loop.so"
        done = subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-o", str(out), str(src)], capture_output=True)
        if done.returncode != 0:
            return None
        os.replace(out, lib)
    return lib


def _serve() -> None:
    """Worker loop: read (name, n, arrays) requests on stdin, write float32 results to stdout."""
    libm = ctypes.CDLL("libm.so.6")
    loops_path = os.environ.get("BOOTLLAMA_LIBM_LOOPS")
    loops = ctypes.CDLL(loops_path) if loops_path else None
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    while True:
        head = inp.read(24)
        if len(head) < 24:
            return
        name = head[:16].rstrip(b"\0").decode()
        (n,) = struct.unpack("<q", head[16:])
        nargs = FUNCTIONS[name]
        args = [np.frombuffer(inp.read(4 * n), dtype=np.float32) for _ in range(nargs)]
        fn = getattr(libm, name)
        y = np.empty(n, dtype=np.float32)
        if loops is not None:
            addr = ctypes.c_void_p(ctypes.cast(fn, ctypes.c_void_p).value)
            ptrs = [a.ctypes.data_as(ctypes.c_void_p) for a in args]
            loop = loops.map1 if nargs == 1 else loops.map2
            loop(addr, *ptrs, y.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(n))
        else:
            fn.restype = ctypes.c_float
            fn.argtypes = [ctypes.c_float] * nargs
            y[:] = [fn(*vals) for vals in zip(*(a.tolist() for a in args), strict=True)]
        out.write(y.tobytes())
        out.flush()


class HostLibm:
    """A child process calling the host's glibc float functions, generic or default build.

    ``with HostLibm(generic=True) as g: y = g("expf", x)``. ``generic=False`` leaves the
    hardware capabilities alone (on a CPU with FMA and AVX2, the FMA build).
    """

    def __init__(self, generic: bool = True, c_loop: bool = True) -> None:
        self.generic = generic
        env = dict(os.environ)
        if generic:
            env["GLIBC_TUNABLES"] = GENERIC_TUNABLES
        else:
            env.pop("GLIBC_TUNABLES", None)
        lib = _loop_library() if c_loop else None
        self.c_loop = lib is not None
        if lib is not None:
            env["BOOTLLAMA_LIBM_LOOPS"] = str(lib)
        else:
            env.pop("BOOTLLAMA_LIBM_LOOPS", None)
        src = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from bootllama.hostlibm import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )

    def __call__(self, name: str, *args: np.ndarray | float, chunk: int = 1 << 22) -> np.ndarray:
        """glibc's ``name`` applied elementwise (arguments broadcast), float32 result."""
        if FUNCTIONS.get(name) != len(args):
            raise BootllamaError(f"hostlibm: {name} takes {FUNCTIONS.get(name)} arguments")
        arrays = np.broadcast_arrays(*(np.asarray(a, dtype=np.float32) for a in args))
        shape = arrays[0].shape
        flat = [np.ascontiguousarray(a.reshape(-1)) for a in arrays]
        n = flat[0].size
        out = np.empty(n, dtype=np.float32)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            self._proc.stdin.write(name.encode().ljust(16, b"\0") + struct.pack("<q", hi - lo))
            for a in flat:
                self._proc.stdin.write(a[lo:hi].tobytes())
            self._proc.stdin.flush()
            data = self._proc.stdout.read(4 * (hi - lo))
            if len(data) != 4 * (hi - lo):
                raise BootllamaError("hostlibm: the child process died")
            out[lo:hi] = np.frombuffer(data, dtype=np.float32)
        return out.reshape(shape)

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=30)

    def __enter__(self) -> HostLibm:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
