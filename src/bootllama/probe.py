"""Look inside the running engine: boot a halting build in QEMU and read its memory.

The engine assembled with ``-DHALT`` stops (``hlt``) after the story instead of leaving QEMU,
so the KV cache, the activations and the logits of the last position stay in memory. This
module reads them through QEMU's human monitor (``pmemsave``) and compares each against the
NumPy reference's trace, by name, so a wrong routine shows up as the first name that differs:
``l3.k`` (the k projection or RoPE of layer 3), ``l3.v``, ``x_final``, ``logits``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bootllama import image, qemu
from bootllama.checkpoint import load_checkpoint
from bootllama.errors import BootllamaError
from bootllama.reference import MathMode, Reference


def asm_constant(name: str) -> int:
    """A numeric `NAME equ 0x...` of sector.asm (the memory map lives there, once)."""
    m = re.search(rf"^{name}\s+equ\s+(0x[0-9A-Fa-f]+|\d+)\b", image.asm_source().read_text(), re.M)
    if not m:
        raise BootllamaError(f"sector.asm defines no numeric {name}")
    return int(m.group(1), 0)


@dataclass
class Probe:
    """Engine memory after the last forward pass."""

    kv: np.ndarray  # [steps, n_layers, 2, kv_dim]: k (after RoPE) and v
    x: np.ndarray  # the residual stream after the last layer
    logits: np.ndarray
    text: bytes


class _Monitor:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        for _ in range(100):
            try:
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise BootllamaError("could not reach the QEMU monitor")
        self._read_prompt()

    def _read_prompt(self) -> bytes:
        buf = b""
        self.sock.settimeout(30)
        while not buf.endswith(b"(qemu) "):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BootllamaError("the QEMU monitor closed")
            buf += chunk
        return buf

    def command(self, cmd: str) -> bytes:
        self.sock.sendall(cmd.encode() + b"\n")
        return self._read_prompt()

    def read(self, addr: int, nbytes: int, tmp: Path) -> bytes:
        out = tmp / f"mem{addr:x}.bin"
        self.command(f'pmemsave {addr} {nbytes} "{out}"')
        for _ in range(100):
            if out.exists() and out.stat().st_size == nbytes:
                return out.read_bytes()
            time.sleep(0.05)
        raise BootllamaError(f"pmemsave of {nbytes} bytes at {addr:#x} did not arrive")


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
        mon = str(tmp / "mon.sock")
        cmd = qemu.qemu_command(img.path, lay.memory_mib, "tcg")
        cmd[cmd.index("-monitor") + 1] = f"unix:{mon},server,nowait"
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
            m = _Monitor(mon)
            m.command("stop")
            n = steps * c.n_layers * 2 * c.kv_dim
            kv = np.frombuffer(m.read(lay.kv_addr, 4 * n, tmp), dtype="<f4")
            x = np.frombuffer(m.read(asm_constant("XBUF"), 4 * c.dim, tmp), dtype="<f4").copy()
            logits = np.frombuffer(m.read(lay.logits_addr, 4 * c.vocab_size, tmp), dtype="<f4").copy()
        finally:
            proc.kill()
            proc.wait()
    return Probe(kv.reshape(steps, c.n_layers, 2, c.kv_dim).copy(), x, logits, out[lay.chunks:])


def compare(checkpoint: str | os.PathLike[str], tokenizer: str | os.PathLike[str],
            steps: int) -> list[tuple[str, float]]:
    """Run the engine and the reference (with the engine's math) side by side, greedily from
    BOS for ``steps`` positions; return (name, max abs difference) in forward() order."""
    probe = run_probe(checkpoint, tokenizer, steps)
    model = load_checkpoint(checkpoint)
    ref = Reference(model, MathMode(rope="table", exp="exact"))
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
            rows.append((f"pos{pos}.l{layer}.k", _diff(probe.kv[pos, layer, 0], ref.key_cache[layer, pos])))
            rows.append((f"pos{pos}.l{layer}.v", _diff(probe.kv[pos, layer, 1], ref.value_cache[layer, pos])))
    last = c.n_layers - 1
    rows.append(("x_final", _diff(probe.x, trace[f"l{last}.x_out"])))
    rows.append(("logits", _diff(probe.logits, trace["logits"])))
    return rows


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
