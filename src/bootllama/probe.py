"""Look inside the running engine: boot a halting build in QEMU and read its memory.

The engine assembled with ``-DHALT`` stops (``hlt``) after the story instead of leaving QEMU,
so the KV cache, the activations and the logits of the last position stay in memory. This
module reads them through QEMU's QMP monitor (``pmemsave``) and compares each against the
NumPy reference's trace, by name, so a wrong routine shows up as the first name that differs:
``l3.k`` (the k projection or RoPE of layer 3), ``l3.v``, ``x_final``, ``logits``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bootllama import image
from bootllama.checkpoint import load_checkpoint
from bootllama.errors import BootllamaError
from bootllama.pcs import qemu
from bootllama.reference import MathMode, Reference


def asm_constant(name: str) -> int:
    """A numeric `NAME equ 0x...` of engine.inc (the memory map lives there, once)."""
    src = image.asm_source().with_name("engine.inc").read_text()
    m = re.search(rf"^{name}\s+equ\s+(0x[0-9A-Fa-f]+|\d+)\b", src, re.M)
    if not m:
        raise BootllamaError(f"engine.inc defines no numeric {name}")
    return int(m.group(1), 0)


@dataclass
class Probe:
    """Engine memory after the last forward pass."""

    kv: np.ndarray  # [steps, n_layers, 2, kv_dim]: v and k (after RoPE), the cache's order
    x: np.ndarray  # the residual stream after the last layer
    logits: np.ndarray
    text: bytes


def run_probe(checkpoint: str | os.PathLike[str], tokenizer: str | os.PathLike[str], steps: int,
              prompt: str | None = None, timeout: float = 120.0) -> Probe:
    """Boot a halting engine for ``steps`` positions and read its state."""
    engine = image.assemble(("HALT",))
    with tempfile.TemporaryDirectory(prefix="bootllama-probe-") as tmpdir:
        tmp = Path(tmpdir)
        img = image.build_image(checkpoint, tokenizer, tmp / "p.img", prompt=prompt, steps=steps,
                                engine=engine)
        lay = img.layout
        c = lay.config
        sock = tmp / "qmp.sock"
        cmd = qemu.qemu_command(img.path, lay.memory_mib, "tcg", ["-qmp", f"unix:{sock},server=on,wait=off"])
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            out = b""
            deadline = time.monotonic() + timeout
            # the story ends with run.c's final newline; HALT keeps QEMU alive after it
            expected_dots = lay.chunks
            while True:
                if time.monotonic() > deadline:
                    raise BootllamaError("the halting engine did not finish in time")
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    raise BootllamaError("QEMU exited before the engine halted")
                out += data
                if len(out) > expected_dots and out.endswith(b"\n"):
                    time.sleep(0.2)
                    break
            with contextlib.closing(qemu.QMP(sock)) as m:
                m.execute("stop")

                def read(addr: int, n: int) -> np.ndarray:
                    out = tmp / f"mem{addr:x}.bin"
                    data = m.save_file(out, "pmemsave", val=addr, size=4 * n, filename=os.fspath(out))
                    if len(data) != 4 * n:
                        raise BootllamaError(f"pmemsave of {4 * n} bytes at {addr:#x} came back short")
                    return np.frombuffer(data, dtype="<f4").copy()

                kv = read(lay.kv_addr, steps * c.n_layers * 2 * c.kv_dim)
                x = read(asm_constant("XBUF"), c.dim)
                logits = read(lay.logits_addr, c.vocab_size)
        finally:
            proc.kill()
            proc.wait()
    return Probe(kv.reshape(steps, c.n_layers, 2, c.kv_dim).copy(), x, logits, out[lay.chunks:])


# The engine's arithmetic is run.c's: RoPE from the builder's rotation values (the reference's
# default) and exp as glibc's generic expf.
ENGINE_MATH = MathMode()


def compare(checkpoint: str | os.PathLike[str], tokenizer: str | os.PathLike[str],
            steps: int) -> list[tuple[str, float]]:
    """Run the engine and the reference (with the engine's math) side by side, greedily from
    BOS for ``steps`` positions; return (name, max abs difference) in forward() order."""
    probe = run_probe(checkpoint, tokenizer, steps)
    model = load_checkpoint(checkpoint)
    ref = Reference(model, ENGINE_MATH)
    c = model.config
    token = 1
    trace: dict[str, np.ndarray] = {}
    for pos in range(steps):
        trace = {}
        logits = ref.forward(token, pos, trace)
        token = int(np.argmax(logits))
    rows: list[tuple[str, float]] = []
    for pos in range(steps):
        for layer in range(c.n_layers):
            rows.append((f"pos{pos}.l{layer}.k", _diff(probe.kv[pos, layer, 1], ref.key_cache[layer, pos])))
            rows.append((f"pos{pos}.l{layer}.v", _diff(probe.kv[pos, layer, 0], ref.value_cache[layer, pos])))
    last = c.n_layers - 1
    rows.append(("x_final", _diff(probe.x, trace[f"l{last}.x_out"])))
    rows.append(("logits", _diff(probe.logits, trace["logits"])))
    return rows


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
