"""Boot an image in QEMU, headless, and stream what the sector writes to COM1.

The sector's serial protocol: one '.' per chunk read while loading (the harness knows how
many from the layout), then exactly the bytes run.c would print, then QEMU exits through the
isa-debug-exit device: status 2 * code + 1, code 0 when the story is over, else the code of
the guard that stopped it (its message, starting with '!', is what COM1 received instead of
the story or the dots).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bootllama.errors import BootllamaError

EXIT_DONE = 1  # (0 << 1) | 1
# the sector's guards: exit code -> what stopped it (QEMU's status is 2 * code + 1)
GUARDS = {
    2: "a disk read error, or a BIOS without extended disk reads",
    3: "the A20 gate could not be switched on",
    4: "the CPU lacks what this build needs (SSE2; the 486 build: an FPU)",
    5: "the PC has less memory than the run needs",
}
EXIT_DISK = 2 * 2 + 1


def guard_message(code: int, printed: bytes) -> str:
    """One line for a guard's stop: what the sector printed and what it means."""
    what = GUARDS.get(code, f"unknown exit code {code}")
    shown = printed.decode("ascii", "replace").strip(".")
    return f"the sector stopped: {shown} ({what})" if shown else f"the sector stopped: {what}"


def qemu_binary() -> str:
    for name in ("qemu-system-i386", "qemu-system-x86_64"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise BootllamaError("QEMU not found: install it (Debian: apt-get install qemu-system-x86), "
                         "or run scripts/setup.sh")


def hardware_kvm() -> bool:
    """True only with a real VT-x/AMD-V KVM (kvm_intel or kvm_amd loaded)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    return any(Path("/sys/module", m).exists() for m in ("kvm_intel", "kvm_amd"))


def choose_accel(requested: str | None) -> str:
    if requested in (None, "auto"):
        return "kvm" if hardware_kvm() else "tcg"
    if requested not in ("kvm", "tcg"):
        raise BootllamaError(f"unknown accelerator {requested!r}: use kvm, tcg or auto")
    return requested


@dataclass
class RunResult:
    text: bytes
    accel: str
    load_seconds: float
    gen_seconds: float
    tokens: int  # forward passes, one per position (the engine's beats on port 0xE9)
    exit_status: int
    dots: bytes = field(default=b"")

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0


class QMP:
    """A minimal client of QEMU's QMP monitor over a unix socket (``-qmp unix:PATH,server=on,
    wait=off``): one command at a time, asynchronous events skipped."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(os.fspath(path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise BootllamaError("could not reach QEMU's QMP socket") from None
                time.sleep(0.05)
        self.buf = b""
        self._message()  # the greeting
        self.execute("qmp_capabilities")

    def _message(self) -> dict[str, object]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BootllamaError("QEMU closed the QMP socket")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        reply: dict[str, object] = json.loads(line)
        return reply

    def execute(self, command: str, **arguments: object) -> object:
        msg: dict[str, object] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._message()
            if "error" in reply:
                raise BootllamaError(f"QMP {command}: {reply['error']}")
            if "return" in reply:
                return reply["return"]

    def save_file(self, path: Path, command: str, **arguments: object) -> bytes:
        """Run a command that writes ``path`` (pmemsave, screendump); return its bytes once the
        file is complete (QEMU writes it before replying; the wait covers slow file systems)."""
        self.execute(command, **arguments)
        for _ in range(100):
            if path.exists() and path.stat().st_size > 0:
                return path.read_bytes()
            time.sleep(0.05)
        raise BootllamaError(f"QMP {command} did not write {path.name}")

    def close(self) -> None:
        self.sock.close()


def qemu_command(image: str | os.PathLike[str], memory_mib: int, accel: str,
                 extra: list[str] | None = None, cpu: str | None = None) -> list[str]:
    cmd = [qemu_binary(), "-accel", accel, "-m", str(memory_mib),
           "-drive", f"file={os.fspath(image)},format=raw,if=ide,index=0,media=disk",
           "-display", "none", "-serial", "stdio", "-monitor", "none",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-no-reboot"]
    if cpu is not None:
        cmd += ["-cpu", cpu]
    elif accel == "tcg":
        cmd += ["-cpu", "max"]
    else:
        cmd += ["-cpu", "host"]
    return cmd + (extra or [])


def boot(image: str | os.PathLike[str], memory_mib: int, chunks: int, accel: str = "tcg",
         timeout: float = 600.0, on_bytes: Callable[[bytes], None] | None = None,
         extra: list[str] | None = None, cpu: str | None = None) -> RunResult:
    """Boot ``image``; return the story bytes and timings.

    ``chunks`` is how many progress dots precede the story.  ``on_bytes`` gets story bytes as
    they arrive.  Raises BootllamaError on a timeout, a disk error or an unexpected exit.
    """
    beats = tempfile.NamedTemporaryFile(prefix="bootllama-beats-", delete=False)  # noqa: SIM115
    beats.close()
    # the sector writes one byte to port 0xE9 per forward pass: QEMU's debug console
    cmd = qemu_command(image, memory_mib, accel, [*(extra or []), "-debugcon", f"file:{beats.name}"], cpu=cpu)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    dots = bytearray()
    text = bytearray()
    t_loaded: float | None = None
    t_last = t0
    deadline = t0 + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BootllamaError(f"the sector did not finish within {timeout:.0f} s "
                                     f"({len(text)} bytes of text so far)")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            now = time.monotonic()
            while data and len(dots) < chunks:
                take = min(chunks - len(dots), len(data))
                dots += data[:take]
                data = data[take:]
                if len(dots) == chunks:
                    t_loaded = now
            if data:
                if b"!" in dots:
                    break
                text += data
                t_last = now
                if on_bytes:
                    on_bytes(data)
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tokens = os.path.getsize(beats.name) if os.path.exists(beats.name) else 0
        with contextlib.suppress(OSError):
            os.unlink(beats.name)
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    if status != EXIT_DONE and status & 1 and (status >> 1) in GUARDS:
        raise BootllamaError(guard_message(status >> 1, bytes(dots) + bytes(text)))
    if status != EXIT_DONE:
        detail = f": {err.splitlines()[-1]}" if err else ""
        raise BootllamaError(f"QEMU exited with status {status} before the sector finished{detail}")
    if dots != b"." * chunks:
        raise BootllamaError(f"unexpected loader output {bytes(dots)[:20]!r}")
    loaded = t_loaded if t_loaded is not None else t0
    return RunResult(bytes(text), accel, loaded - t0, max(t_last - loaded, 1e-9), tokens, status, bytes(dots))
