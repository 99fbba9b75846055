"""What every PC harness shares: the result of a boot and the reader of the sector's COM1 stream.

The sector's serial protocol: one '.' per 16 KiB chunk read while loading (the harness knows
how many from the layout), then exactly the bytes run.c would print, then the sector writes
its exit code to port 0xF4 and halts with interrupts off.  QEMU's isa-debug-exit turns the
code ``al`` into the process status ``2*al + 1``; every harness reports that same status.
Code 10 (the final newline's byte): the story is over; a guard that stops the sector (``GUARDS``) prints its message,
starting with '!', instead of the dots or the story, and exits with its code.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from bootllama.errors import BootllamaError
from bootllama.interrupts import deferred, poll

# the sector's guards: exit code -> what stopped it
GUARDS = {
    2: "a disk read error, or a BIOS without extended disk reads",
    3: "the A20 gate could not be switched on",
    4: "the CPU lacks what this build needs (SSE2; the 486 build: an FPU)",
    5: "the PC has less memory than the run needs",
    6: "the data loaded from the disk is damaged (its sum does not check)",
}
EXIT_DONE = 21  # (10 << 1) | 1: the story is over (engine.inc's E_DONE; QEMU's own status 1 differs)
EXIT_DISK = 5  # (2 << 1) | 1: a BIOS read failed


def exit_status(code: int) -> int:
    """The status a byte written to port 0xF4 becomes (QEMU's isa-debug-exit)."""
    return (code << 1) | 1


def exit_code(status: int) -> int:
    """The byte the sector wrote to port 0xF4, from a status."""
    return status >> 1


def describe_exit(status: int, pc: str, printed: bytes = b"") -> str:
    """One line for a status other than EXIT_DONE: what the sector printed (its guard's message,
    the progress dots dropped) and what the code means."""
    code = exit_code(status)
    what = GUARDS.get(code, f"unknown exit code {code}")
    shown = printed.decode("ascii", "replace").strip(".").strip()
    where = f" on {pc}" if pc else ""
    return f"the sector stopped{where}: {shown} ({what})" if shown else f"the sector stopped{where}: {what}"


@dataclass
class RunResult:
    text: bytes
    accel: str  # how the PC ran: tcg, kvm, bochs, v86
    load_seconds: float
    gen_seconds: float
    tokens: int  # forward passes, one per position (the engine's beats on port 0xE9)
    exit_status: int
    dots: bytes = field(default=b"")

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0


@dataclass
class Serial:
    """COM1 as read from a harness's standard output: the dots, the story, when they came."""

    dots: bytearray
    text: bytearray
    message: bytearray  # after a '!' among the dots: a guard's message, never story text
    t0: float
    t_loaded: float | None
    t_last: float

    @property
    def printed(self) -> bytes:
        """Everything COM1 carried, for an error message."""
        return bytes(self.dots + self.message + self.text)

    def timings(self) -> tuple[float, float]:
        """(load seconds, generation seconds)."""
        loaded = self.t_loaded if self.t_loaded is not None else self.t0
        return loaded - self.t0, max(self.t_last - loaded, 1e-9)


def read_serial(proc: subprocess.Popen[bytes], chunks: int, timeout: float, pc: str,
                on_bytes: Callable[[bytes], None] | None = None, after: bytes = b"",
                on_loaded: Callable[[], None] | None = None) -> Serial:
    """Read ``proc``'s stdout (COM1) until it closes: ``chunks`` dots, then the story.

    ``after``: a byte that ends what the firmware wrote (the UEFI engine's form feed); what
    comes before it is dropped.  ``on_loaded`` is called once the last dot has arrived (the
    sector is about to run).

    A guard's message (from a '!' among the dots on) goes to ``message``, not to the story
    or ``on_bytes``; reading goes on until the PC exits, and its status tells.  Raises
    BootllamaError at the timeout (the caller ends the process).
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    t0 = time.monotonic()
    s = Serial(bytearray(), bytearray(), bytearray(), t0, None, t0)
    deadline = t0 + timeout
    while True:
        poll()  # (a signal whose Interrupted CPython dropped still ends the run)
        left = deadline - time.monotonic()
        if left <= 0:
            raise BootllamaError(f"the sector did not finish within {timeout:g} s on {pc} "
                                 f"({len(s.dots)} of {chunks} progress dots, {len(s.text)} bytes of text)")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        data = os.read(fd, 65536)
        if not data:
            return s
        now = time.monotonic()
        if after:  # still in the firmware's text
            cut = data.find(after)
            data = data[cut + 1:] if cut >= 0 else b""
            if cut >= 0:
                after, s.t0 = b"", now
        while data and len(s.dots) < chunks:
            take = min(chunks - len(s.dots), len(data))
            s.dots += data[:take]
            data = data[take:]
            if len(s.dots) == chunks:
                s.t_loaded = now
                if on_loaded:
                    on_loaded()
        if data and b"!" in s.dots:
            s.message += data
        elif data:
            s.text += data
            s.t_last = now
            if on_bytes:
                on_bytes(data)


# ---- input: what the harness sends to COM1's receiver (talk.md) ----

EOT = b"\x04"  # end of input, at the start of a line
LINE_BYTES = 511  # a line holds at most this many bytes (run.c's fgets into 512); the next byte starts a new one

Input = bytes | BinaryIO


def closing_bytes(sent: bytes | int) -> bytes:
    """What follows the input when it ends: a LF if a line is still open (so a last line without
    one counts, as fgets returns it), then EOT.  ``sent`` is the input, or how many bytes came
    after its last LF.  A line that is full (511 bytes) is already over: no LF."""
    col = len(sent) - (sent.rfind(b"\n") + 1) if isinstance(sent, bytes) else sent
    return (b"\n" if col % LINE_BYTES else b"") + EOT


class Feeder:
    """A thread that writes the input to a PC's COM1 (``pipe``: the harness's stdin) as fast as
    the PC takes it (the write blocks while the pipe is full: nothing is lost), then
    :func:`closing_bytes`.  ``source`` is bytes, or a readable binary stream read as its data
    comes (an interactive terminal gives whole lines).  Stops quietly when the PC has exited."""

    def __init__(self, pipe: BinaryIO | socket.socket, source: Input) -> None:
        self.pipe = pipe
        self.fd = pipe.fileno()
        self.source = source
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bootllama-input", daemon=True)
        self.thread.start()

    def _chunks(self) -> Iterator[bytes]:
        if isinstance(self.source, bytes | bytearray):
            yield bytes(self.source)
            return
        try:
            fd = self.source.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        while not self.stopped.is_set():
            if fd >= 0:  # a file, pipe or terminal: wait for it without holding up the stop
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(fd, 65536)
            else:
                data = self.source.read(65536)
            if not data:
                return
            yield data

    def _run(self) -> None:
        col = 0
        try:
            for data in self._chunks():
                nl = data.rfind(b"\n")
                col = len(data) - nl - 1 if nl >= 0 else col + len(data)
                self._write(data)
            if not self.stopped.is_set():
                self._write(closing_bytes(col))
        except (BrokenPipeError, OSError, ValueError):
            pass  # the PC has exited (or the harness closed its stdin)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # the raw descriptor: a blocked write ends with EPIPE when the PC exits
            view = view[os.write(self.fd, view):]

    def stop(self) -> None:
        """Stop reading the source and close the PC's end; call it once the PC has exited (a
        write blocked on a full pipe then fails and the thread ends)."""
        self.stopped.set()
        self.thread.join(timeout=2.0)
        with contextlib.suppress(OSError, ValueError):
            self.pipe.close()


def start_input(proc: subprocess.Popen[bytes], source: Input | None) -> Feeder | None:
    """A Feeder for ``proc`` (started with stdin=PIPE) when there is input."""
    if source is None:
        return None
    assert proc.stdin is not None
    return Feeder(proc.stdin, source)


@contextlib.contextmanager
def emulator(cmd: list[str], **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Start an emulator in a process group of its own; on the way out (an error, an interrupt
    or a signal included) kill the whole group and reap it. The start and the clean-up hold
    signals off (bootllama.interrupts), so no emulator outlives the command."""
    proc: subprocess.Popen[bytes] | None = None
    try:
        with deferred():
            proc = subprocess.Popen(cmd, start_new_session=True, **popen)
        yield proc
    finally:
        if proc is not None:
            stop(proc)


def stop(proc: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    """End ``proc`` and its process group: SIGTERM and ``grace`` seconds first if given, then SIGKILL."""
    with deferred():
        if proc.poll() is None and grace > 0:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# how emulators' own error lines start: "qemu-system-i386: ...", node's "Error: ...", Bochs' panics
_WARNING = re.compile(r"^\S*:\s*warning:", re.IGNORECASE)


def own_error(stderr: str, program: str) -> str:
    """The emulator's own error message from its standard error, in one line ('' if none): the
    lines that start with the program's name (QEMU's style), its warnings left out, else
    the lines that name an error (Node's), else the last line."""
    lines = [" ".join(line.split()) for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not _WARNING.match(line)]
    mine = [line for line in lines if line.startswith(program)]
    if mine:
        # QEMU adds a hint line after its error (e.g. "Is another process using the image [...]?")
        at = lines.index(mine[0])
        return " ".join(lines[at:at + 2])
    errors = [line for line in lines if re.search(r"\b\w*Error\b", line)]
    if errors:
        return errors[0]
    return lines[-1] if lines else ""
