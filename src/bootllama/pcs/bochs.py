"""Boot an image in Bochs, a second PC independent of QEMU, and read what COM1 receives.

Bochs interprets every instruction itself (no TCG, no KVM) and brings its own BIOS
(Debian's bochsbios: the Bochs ROM BIOS, not SeaBIOS), VGA BIOS, disk controller and
16550 UART, so a story that comes out the same here is not an artefact of QEMU.

Debian's Bochs 2.7 has no ``nogui`` display and is built with the internal debugger, so:

* the display is ``rfb`` with ``timeout=0`` (do not wait for a VNC client).  Bochs 2.7 has no
  option for the RFB port: it tries 5900, 5901, ... 5949 and listens on the first free one,
  so runs at the same time do not clash (up to 50 of them); it listens on all interfaces,
  without a password, for as long as the run lasts;
* the debugger would stop at the first instruction and prompt on stdin; it is given a
  command file holding ``continue`` and stdin is /dev/null (should it ever prompt again, it
  reads end-of-file and quits).

Bochs has no isa-debug-exit device, so the run never ends by itself.  The sector's exit,
``out 0xf4, al`` (10 when the story is over, 2 after a disk error), goes to Bochs's
"unmapped" I/O device, whose debug messages are switched on so the log says
``unmapped: 8-bit write to 00f4 = 0a``; the sector then halts with interrupts off (logged as
``HLT instruction with IF=0``, which also counts as the end).  The harness stops Bochs then,
or as soon as ``max_bytes`` story bytes have arrived, or at the timeout.

The UART: Bochs's (unlike QEMU's) honours the line control register, which resets to 5 data
bits, and its BIOS leaves it so; the sector sets COM1 to 8N1 itself before its first byte.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from bootllama.errors import BootllamaError
from bootllama.image import CYLINDER, SECTOR, Layout
from bootllama.interrupts import temp_dir
from bootllama.pcs.base import Feeder, Input, describe_exit, emulator, exit_status, stop

BIOS = Path("/usr/share/bochs/BIOS-bochs-latest")
VGABIOS = Path("/usr/share/vgabios/vgabios.bin")
CPU_MODEL = "core2_penryn_t9600"  # Bochs 2.7's Core 2 Duo: SSE to SSE4.1, x87
HEADS = 16
SPT = 63
HALT_LINE = b"HLT instruction with IF=0"
EXIT_LINE = re.compile(rb"unmapped: 8-bit write to 00f4 = ([0-9a-f]{2})")
EXIT_DONE = 10  # engine.inc's E_DONE: the story is over
INSTALL_HINT = "install bochs bochsbios vgabios (scripts/setup.sh)"


def bochs_binary() -> str:
    """The Bochs executable (Debian's /usr/bin/bochs wrapper, else bochs-bin)."""
    for name in ("bochs", "bochs-bin"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise BootllamaError(f"bochs not found: {INSTALL_HINT}")


def bochsrc(disk: str, layout: Layout, com1: str, log: str, com1_port: int | None = None) -> str:
    """The configuration: headless, fast, fatal on panics, the disk with its CHS geometry.

    COM1 writes to the file ``com1``, or, with ``com1_port``, is a TCP client of the harness on
    that local port (both directions: the run's input reaches COM1's receiver)."""
    serial = (f"com1: enabled=1, mode=file, dev={com1}" if com1_port is None else
              f"com1: enabled=1, mode=socket-client, dev=127.0.0.1:{com1_port}")
    cylinders = layout.disk_sectors // CYLINDER
    lines = [
        'display_library: rfb, options="timeout=0"',
        f"romimage: file={BIOS}",
        f"vgaromimage: file={VGABIOS}",
        f"cpu: model={CPU_MODEL}",
        f"megs: {layout.memory_mib}",
        f"ata0-master: type=disk, path={disk}, mode=flat, cylinders={cylinders}, heads={HEADS}, spt={SPT}",
        "boot: disk",
        serial,
        f"log: {log}",
        "panic: action=fatal",
        "error: action=report",
        "info: action=report",
        "debug: action=ignore, unmapped=report",  # logs the sector's exit port write
        "sound: driver=dummy",
        "speaker: enabled=0",
        "mouse: enabled=0",
        "clock: sync=none",
    ]
    return "\n".join(lines) + "\n"


def _check_inputs(image_path: Path, layout: Layout, max_bytes: int, timeout: float) -> None:
    if max_bytes < 1:
        raise BootllamaError(f"max_bytes must be at least 1, not {max_bytes}")
    if not timeout > 0:
        raise BootllamaError(f"timeout must be positive, not {timeout}")
    if not image_path.is_file():
        raise BootllamaError(f"image {image_path} does not exist")
    if layout.disk_sectors <= 0 or layout.disk_sectors % CYLINDER:
        raise BootllamaError(f"the layout's {layout.disk_sectors} sectors are not whole "
                             f"{HEADS}x{SPT} cylinders, which Bochs needs")
    size = image_path.stat().st_size
    if size != layout.disk_sectors * SECTOR:
        raise BootllamaError(f"image {image_path} is {size} bytes but its layout says "
                             f"{layout.disk_sectors * SECTOR}: rebuild it")
    for rom, package in ((BIOS, "bochsbios"), (VGABIOS, "vgabios")):
        if not rom.is_file():
            raise BootllamaError(f"{rom} is missing ({package}): {INSTALL_HINT}")


def _log_tail(log: Path, n: int = 3) -> str:
    """The last ``n`` meaningful lines of the Bochs log, joined into one line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "no Bochs log"
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line and "| " not in line]  # skip register dumps
    return " | ".join(lines[-n:]) if lines else "empty Bochs log"


EXITING = "Bochs is exiting with the following message:"


def _own_message(log: Path) -> str:
    """Bochs' own reason for quitting: the line after its "exiting with the following message"
    banner (in its log, or on its standard output before the log is open), else its last panic,
    else the log's last lines."""
    for path in (log, log.parent / "stdout.txt"):
        try:
            lines = [" ".join(line.split()) for line in path.read_text(errors="replace").splitlines()]
        except OSError:
            continue
        for i, line in enumerate(lines):
            if line.endswith(EXITING) and i + 1 < len(lines):
                return lines[i + 1]
        panics = [line.split(">>PANIC<<", 1)[1].strip() for line in lines if ">>PANIC<<" in line]
        if panics:
            return panics[-1]
    return _log_tail(log)


def _exit_status(log: Path, pos: int) -> tuple[int | None, int]:
    """The sector's exit status if the log, from byte ``pos`` on, shows it; the new position.

    The status is the byte written to port 0xF4, or EXIT_DONE for a halt without one.
    """
    try:
        with open(log, "rb") as f:
            f.seek(pos)
            data = f.read()
    except OSError:
        return None, pos
    data = data[: data.rfind(b"\n") + 1]  # whole lines only
    m = EXIT_LINE.search(data)
    if m:
        return int(m.group(1), 16), pos + len(data)
    return (EXIT_DONE if HALT_LINE in data else None), pos + len(data)


class SocketCom1:
    """COM1 over a local TCP socket (Bochs's ``socket-client`` mode): what Bochs sends is appended
    to the file ``com1`` (which the harness polls as in file mode), and the input is fed to it.
    Bochs takes a received byte only when its receiver is empty, so the writes wait: nothing is
    lost."""

    def __init__(self, com1: Path, source: Input, timeout: float) -> None:
        self.com1 = com1
        self.source = source
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(timeout)
        self.port: int = self.server.getsockname()[1]
        self.conn: socket.socket | None = None
        self.feeder: Feeder | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="bootllama-bochs-com1", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            conn, _ = self.server.accept()  # Bochs connects as it starts
        except OSError:
            return
        self.conn = conn
        self.feeder = Feeder(conn, self.source)
        with open(self.com1, "ab", buffering=0) as out:
            while not self.stopped.is_set():
                ready, _, _ = select.select([conn], [], [], 0.2)
                if not ready:
                    continue
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                out.write(data)

    def stop(self) -> None:
        """Once Bochs has stopped."""
        self.stopped.set()
        if self.feeder is not None:
            self.feeder.stop()
        self.thread.join(timeout=2.0)
        for s in (self.conn, self.server):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


def boot_bochs(image_path: str | os.PathLike[str], layout: Layout, max_bytes: int, timeout: float,
               timings: dict[str, float] | None = None, input: Input | None = None) -> bytes:
    """Boot ``image_path`` in Bochs; return the first story bytes COM1 receives.

    ``timings``, when given, receives ``load_seconds`` (start to the last progress dot) and
    ``gen_seconds`` (last dot to the last story byte seen), measured by polling COM1's file
    every 50 ms.

    The ``layout.chunks`` progress dots are skipped.  Returns once ``max_bytes`` story bytes
    have arrived (exactly that many), or fewer if the sector halts first (the story is
    over: the bytes end with its final newline).  Raises BootllamaError on a timeout, a disk
    error, or Bochs exiting, with the last lines of the Bochs log.

    ``input`` goes to COM1's receiver (COM1 is then a local TCP socket: :class:`SocketCom1`),
    then LF if a line is open and EOT, as on the other PCs.
    """
    image_path = Path(image_path)
    _check_inputs(image_path, layout, max_bytes, timeout)
    exe = bochs_binary()
    with temp_dir("bootllama-bochs-") as work:
        # Bochs locks an image by creating <path>.lock beside it and leaves it behind when
        # killed: boot a link in the temp dir (which also keeps odd characters out of bochsrc)
        disk = work / "disk.img"
        disk.symlink_to(image_path.resolve())
        com1 = work / "com1.out"
        log = work / "bochs.log"
        rc = work / "bochsrc"
        link = SocketCom1(com1, input, timeout) if input is not None else None
        rc.write_text(bochsrc(str(disk), layout, str(com1), str(log), link.port if link else None))
        commands = work / "debugger.rc"
        commands.write_text("continue\n")
        try:
            with open(work / "stdout.txt", "wb") as out, \
                    emulator([exe, "-q", "-f", str(rc), "-rc", str(commands)], cwd=work,
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT) as proc:
                try:
                    return _collect(proc, com1, log, layout.chunks, max_bytes, timeout, timings)
                finally:
                    stop(proc, grace=5.0)  # politely first; emulator() makes sure of the rest
        finally:  # Bochs has stopped: the input's socket goes
            if link is not None:
                link.stop()


def _collect(proc: subprocess.Popen[bytes], com1: Path, log: Path, chunks: int, max_bytes: int,
             timeout: float, timings: dict[str, float] | None = None) -> bytes:
    start = time.monotonic()
    deadline = start + timeout
    t_loaded = t_last = start
    grown = -1
    log_pos = 0
    status: int | None = None
    settled = 0.0  # when the output last grew after the exit
    seen = -1
    while True:
        try:
            data = com1.read_bytes()
        except FileNotFoundError:
            data = b""
        dots, text = data[:chunks], data[chunks:]
        if len(data) != grown:
            grown, t_last = len(data), time.monotonic()
            if len(dots) < chunks or not text:
                t_loaded = t_last
        if timings is not None:
            timings["load_seconds"] = t_loaded - start
            timings["gen_seconds"] = t_last - t_loaded
        if len(dots) == chunks and b"!" not in dots and dots != b"." * chunks:
            hint = ""
            if all(b == ord(".") & 0x1F for b in dots):
                hint = ": every byte lost its top 3 bits, COM1 is at 5 data bits (its line control was never set)"
            raise BootllamaError(f"unexpected loader output {dots[:20]!r} in Bochs (wanted {chunks} dots){hint}")
        if len(text) >= max_bytes and status is None:
            return text[:max_bytes]
        now = time.monotonic()
        if status is None:
            status, log_pos = _exit_status(log, log_pos)
        if status is not None:
            # the UART sends its last byte a moment after the exit: wait for the output to settle
            if len(data) != seen:
                seen, settled = len(data), now
            elif now - settled > 0.25:
                if status != EXIT_DONE:  # a guard: its message instead of (or after) the dots
                    raise BootllamaError(f"{describe_exit(exit_status(status), 'Bochs', bytes(dots) + bytes(text))}: "
                                         f"{_log_tail(log)}")
                if len(dots) < chunks:
                    raise BootllamaError(f"the sector stopped after {len(dots)} of {chunks} progress dots "
                                         f"in Bochs: {_log_tail(log)}")
                return text[:max_bytes]
        elif proc.poll() is not None:  # Bochs' own failure: its own message
            raise BootllamaError(f"Bochs failed (status {proc.returncode}, after {len(dots)} of {chunks} progress "
                                 f"dots and {len(text)} story bytes): {_own_message(log)}")
        if status is None and now > deadline:  # a run that has exited may settle
            got = f"{len(text)} of {max_bytes} story bytes" if len(dots) == chunks else \
                f"{len(dots)} of {chunks} progress dots"
            raise BootllamaError(f"Bochs timed out after {timeout:g} s with {got}: {_log_tail(log)}")
        time.sleep(0.05)


