"""Boot an image in QEMU, headless, and stream what the sector writes to COM1.

The PCs (``MACHINES``): ``pc``, today's i440FX PC with the image as its first IDE disk;
``ahci``, a q35 PC with the disk on its AHCI controller; ``usb-ehci`` and ``usb-xhci``, an
i440FX PC whose only disk is the image as a USB stick (usb-storage) on an EHCI or XHCI
controller, which SeaBIOS boots; ``uefi`` and ``uefi-usb``, the same PC on IDE and on XHCI with
OVMF (a UEFI firmware without CSM) instead of SeaBIOS, which boots the image's UEFI engine.
Under OVMF, COM1 carries the firmware's console text first: the harness drops it up to the
UEFI engine's form feed.  The serial protocol and exit statuses are in ``bootllama.pcs.base``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bootllama.errors import BootllamaError
from bootllama.interrupts import temp_dir
from bootllama.pcs.base import (
    EXIT_DISK,
    EXIT_DONE,
    GUARDS,
    Input,
    RunResult,
    describe_exit,
    emulator,
    own_error,
    read_serial,
    start_input,
)

__all__ = ["EXIT_DISK", "EXIT_DONE", "GUARDS", "MACHINES", "QMP", "RunResult", "boot", "boot_and_stop",
           "choose_accel", "key_codes", "qemu_command"]

T = TypeVar("T")

# the keyboard: what each typed ASCII character is on a US layout, as QEMU's key names (qcodes)
_PLAIN = {" ": "spc", "\n": "ret", "\t": "tab", "\b": "backspace", "-": "minus", "=": "equal",
          "[": "bracket_left", "]": "bracket_right", ";": "semicolon", "'": "apostrophe",
          "`": "grave_accent", "\\": "backslash", ",": "comma", ".": "dot", "/": "slash"}
_SHIFTED = dict(zip('!@#$%^&*()_+{}:"~|<>?', [*"1234567890", "minus", "equal", "bracket_left",
                                               "bracket_right", "semicolon", "apostrophe",
                                               "grave_accent", "backslash", "comma", "dot", "slash"],
                    strict=True))
KEY_GAP = 0.05  # seconds between keystrokes where no BIOS keyboard buffer can be watched (OVMF)


def key_codes(ch: str) -> list[str]:
    """The keys pressed together to type ``ch`` (shift for capitals and symbols; Ctrl-D for EOT)."""
    if ch.isascii() and ch.isalnum():
        return ["shift", ch.lower()] if ch.isupper() else [ch]
    if ch in _PLAIN:
        return [_PLAIN[ch]]
    if ch in _SHIFTED:
        return ["shift", _SHIFTED[ch]]
    if ch == "\x04":
        return ["ctrl", "d"]
    raise BootllamaError(f"cannot type {ch!r} on the keyboard: ASCII letters, digits, symbols, space, "
                         "newline, tab, backspace and Ctrl-D (\\x04) only")

def qemu_binary(x86_64: bool = False) -> str:
    for name in ("qemu-system-x86_64",) if x86_64 else ("qemu-system-i386", "qemu-system-x86_64"):
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

    def type_text(self, text: str, gap: float = KEY_GAP, bios: bool = True, timeout: float = 600.0,
                  stopped: threading.Event | None = None) -> None:
        """Type ``text`` on the PC's keyboard, each keystroke once the PC has taken the last one.

        Each keystroke is its presses and releases in one ``input-send-event`` (modifiers down
        first, up last), not ``send-key``, whose releases come from a timer: under load a release
        could land after the next key's press, so a held Ctrl or Shift changed the next key (the
        quick suite's keyboard tests saw NULs).

        ``bios``: the PC's keyboard is the BIOS's (SeaBIOS under the legacy engine). Then the
        next keystroke waits until the last is in the BIOS's keyboard buffer (the tail word at
        0x41C moved), however long that takes: QEMU's PS/2 controller queues only 16 bytes and
        drops what comes after, and a PC slowed by load (or computing with interrupts off) could
        let a shift's press fall out and the key after it arrive unshifted. Else (OVMF's own
        PS/2 driver) one keystroke every ``gap`` seconds. ``timeout``: the longest wait for one
        keystroke; ``stopped``: an event that ends the typing."""
        last: tuple[str, int] | None = None  # the last keystroke and the tail before it
        for ch in text:
            keys = [{"type": "qcode", "data": k} for k in key_codes(ch)]
            events = [{"type": "key", "data": {"down": True, "key": k}} for k in keys]
            events += [{"type": "key", "data": {"down": False, "key": k}} for k in reversed(keys)]
            if last is not None:  # (none after the last keystroke: the PC may be done with keys)
                self._taken(*last, timeout, stopped)
            if stopped is not None and stopped.is_set():
                return
            if bios:
                last = ch, self._bios_tail()
            self.execute("input-send-event", events=events)
            if not bios:
                time.sleep(gap)

    def _taken(self, ch: str, tail: int, timeout: float, stopped: threading.Event | None) -> None:
        """Wait until the BIOS has stored the keystroke ``ch`` typed when its buffer's tail was ``tail``."""
        deadline = time.monotonic() + timeout
        while self._bios_tail() == tail:
            if stopped is not None and stopped.is_set():
                return
            if time.monotonic() > deadline:
                raise BootllamaError(f"the PC took no keystroke ({ch!r}) within {timeout:.0f} s")
            time.sleep(0.01)

    def _bios_tail(self) -> int:
        """The BIOS data area's keyboard buffer tail (0x41C): where int 9 stores the next key."""
        reply = self.execute("human-monitor-command", **{"command-line": "xp /1hx 0x41c"})
        return int(str(reply).split(":")[1], 16)

    def close(self) -> None:
        self.sock.close()


class Typist:
    """Types ``text`` on a running QEMU's keyboard (over the run's own QMP socket, ``path``) once
    the loader's dots are in and the story so far contains ``after``, from a thread of its own
    (keys typed while the BIOS boots would be lost)."""

    def __init__(self, path: Path, text: str, after: bytes, bios: bool = True) -> None:
        for ch in text:
            key_codes(ch)  # refuse what cannot be typed before QEMU starts
        self.path, self.text, self.after, self.bios = path, text, after, bios
        self.seen = bytearray()
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.error: BootllamaError | None = None
        self.thread = threading.Thread(target=self._run, name="bootllama-keys", daemon=True)

        self.loaded = False

    def start(self) -> None:
        self.thread.start()

    def on_loaded(self) -> None:
        """The loader's last dot has come."""
        self.loaded = True
        self.saw(b"")

    def saw(self, data: bytes) -> None:
        """Story bytes as they arrive."""
        if not self.ready.is_set():
            self.seen += data
            if self.loaded and self.after in self.seen:
                self.ready.set()

    def _run(self) -> None:
        try:
            qmp = QMP(self.path)
        except BootllamaError as e:
            self.error = e
            return
        try:
            while not self.ready.wait(0.2):
                if self.stopped.is_set():
                    return
            qmp.type_text(self.text, bios=self.bios, stopped=self.stopped)
        except (BootllamaError, OSError) as e:
            if not self.stopped.is_set():
                self.error = BootllamaError(f"typing on QEMU's keyboard failed: {e}")
        finally:
            qmp.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5.0)


def _disk_args(image: str, machine: str) -> list[str]:
    drive = f"file={image},format=raw,media=disk"
    if machine == "pc":
        return ["-drive", f"{drive},if=ide,index=0"]
    if machine == "ahci":  # q35's ICH9 AHCI controller, port 0
        return ["-M", "q35", "-drive", f"{drive},if=none,id=disk0", "-device", "ide-hd,drive=disk0,bus=ide.0"]
    if machine == "uefi":  # OVMF, the disk on IDE
        return ["-bios", ovmf(), "-drive", f"{drive},if=ide,index=0"]
    if machine == "uefi-usb":  # OVMF, the image as a USB stick on XHCI
        return ["-bios", ovmf(), *_disk_args(image, "usb-xhci")]
    if machine in ("usb-ehci", "usb-xhci"):
        ctrl = "usb-ehci" if machine == "usb-ehci" else "qemu-xhci"
        return ["-device", f"{ctrl},id=usb", "-drive", f"{drive},if=none,id=stick",
                "-device", "usb-storage,bus=usb.0,drive=stick,bootindex=0"]
    raise BootllamaError(f"unknown QEMU machine {machine!r}: use one of {', '.join(MACHINES)}")


MACHINES = ("pc", "ahci", "usb-ehci", "usb-xhci", "uefi", "uefi-usb")
UEFI_MACHINES = ("uefi", "uefi-usb")
OVMF = Path("/usr/share/ovmf/OVMF.fd")  # Debian's ovmf: UEFI firmware for QEMU, no CSM
# memory for OVMF beyond the region the UEFI engine allocates: with 64 MiB more, a 15M shape's
# 67 MiB found no free run of pages that long below 4 GiB (OVMF's own allocations cut it up)
OVMF_MIB = 256
FORM_FEED = b"\x0c"  # the UEFI engine's first COM1 byte: OVMF's console text comes before it


def ovmf() -> str:
    if not OVMF.is_file():
        raise BootllamaError(f"{OVMF} is missing: install Debian's ovmf (scripts/setup.sh)")
    return str(OVMF)


def qemu_command(image: str | os.PathLike[str], memory_mib: int, accel: str,
                 extra: list[str] | None = None, machine: str = "pc", cpu: str | None = None) -> list[str]:
    """QEMU's command line; ``cpu`` is passed as ``-cpu`` (None: ``max`` under TCG, ``host`` under KVM)."""
    if machine in UEFI_MACHINES:
        memory_mib += OVMF_MIB
    cmd = [qemu_binary(machine in UEFI_MACHINES), "-accel", accel, "-m", str(memory_mib),
           *_disk_args(os.fspath(image), machine),
           "-display", "none", "-serial", "stdio", "-monitor", "none",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-no-reboot"]
    if cpu is None:
        cpu = "max" if accel == "tcg" else "host"
    cmd += ["-cpu", cpu]
    return cmd + (extra or [])


def boot_and_stop(image: str | os.PathLike[str], memory_mib: int, over: Callable[[bytes, QMP], bool], what: str,
                  grab: Callable[[QMP, Path], T], machine: str = "pc", poll: float = 0.2) -> T:
    """Boot ``image`` under TCG with a QMP monitor, hand COM1's bytes so far (dots included) and
    the monitor to ``over`` until it says the PC is where it should be (``over`` raises on a
    timeout or wrong text, and may type), then stop the PC and return ``grab(monitor, folder)``
    (a screendump or pmemsave into that temporary folder) before QEMU is ended. For images built
    with -DHALT, which stay up after the story. ``what``: what QEMU's exit came before, for the
    error."""
    with temp_dir("bootllama-qemu-") as tmp:
        sock = tmp / "qmp.sock"
        cmd = qemu_command(image, memory_mib, "tcg", ["-qmp", f"unix:{sock},server=on,wait=off"], machine=machine)
        with emulator(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            fd, serial = proc.stdout.fileno(), b""
            with contextlib.closing(QMP(sock)) as qmp:
                while not over(serial, qmp):
                    if select.select([fd], [], [], poll)[0]:
                        data = os.read(fd, 65536)
                        if not data:
                            raise BootllamaError(f"QEMU exited before {what}")
                        serial += data
                time.sleep(0.5)  # the BIOS teletype follows each COM1 byte: let the last ones land
                qmp.execute("stop")
                return grab(qmp, tmp)


def boot(image: str | os.PathLike[str], memory_mib: int, chunks: int, accel: str = "tcg",
         timeout: float = 600.0, on_bytes: Callable[[bytes], None] | None = None,
         extra: list[str] | None = None, machine: str = "pc", cpu: str | None = None,
         input: Input | None = None, keys: str | None = None, keys_after: bytes = b"",
         done: int = EXIT_DONE) -> RunResult:
    """Boot ``image``; return the story bytes and timings.

    ``chunks`` is how many progress dots precede the story; ``done`` the status of a finished
    story (an engine from before E_DONE exited with 1, bench/speedup.py's old ones).  ``on_bytes`` gets story bytes as
    they arrive.  ``input`` goes to COM1's receiver (``-serial stdio``: QEMU reads its stdin only
    as the UART has room), then a LF if a line is open and EOT (talk.md).  ``keys`` is typed on
    the keyboard (QMP.type_text) once the story contains ``keys_after``.  Raises
    BootllamaError on a timeout, a disk error, an unexpected exit, or QEMU's own failure (its
    generic status 1; the sector's "story over" is 21, and a run counts as finished only when
    the loader's dots all came and QEMU printed no error), with QEMU's message.
    """
    name = "QEMU" if machine == "pc" else f"QEMU ({machine})"
    qemu_binary(machine in UEFI_MACHINES)  # not found: say so before anything is created
    with temp_dir("bootllama-qemu-") as tmp:
        beats = tmp / "beats"
        # the sector writes one byte to port 0xE9 per forward pass: QEMU's debug console
        more = [*(extra or []), "-debugcon", f"file:{beats}"]
        typist = None
        if keys is not None:
            sock = tmp / "qmp.sock"
            # (refuses untypable keys before QEMU starts; OVMF has no BIOS keyboard buffer)
            typist = Typist(sock, keys, keys_after, bios=machine not in UEFI_MACHINES)
            more += ["-qmp", f"unix:{sock},server=on,wait=off"]
        cmd = qemu_command(image, memory_mib, accel, more, machine=machine, cpu=cpu)
        # OVMF's serial terminal polls COM1 until the UEFI engine raises the TPL to run: input
        # sent before the engine's first byte after the dots could be taken by the firmware, so
        # on the UEFI PCs it starts then (every interactive mode prints a guide before it reads)
        late = machine in UEFI_MACHINES and input is not None
        feeder = None
        procs: list[subprocess.Popen[bytes]] = []

        def watch(data: bytes) -> None:
            nonlocal feeder
            if late and feeder is None and procs:
                feeder = start_input(procs[0], input)
            if typist is not None:
                typist.saw(data)
            if on_bytes:
                on_bytes(data)
        try:
            with emulator(cmd, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
                procs.append(proc)
                if not late:
                    feeder = start_input(proc, input)
                if typist is not None:
                    typist.start()
                serial = read_serial(proc, chunks, timeout, name, watch,
                                     after=FORM_FEED if machine in UEFI_MACHINES else b"",
                                     on_loaded=typist.on_loaded if typist else None)
                status = proc.wait(timeout=10)
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        finally:  # the PC has exited (emulator() saw to it): the input and the keys stop
            if feeder is not None:
                feeder.stop()
            if typist is not None:
                typist.stop()
        tokens = beats.stat().st_size if beats.exists() else 0
    dots = bytes(serial.dots)
    if typist is not None and typist.error is not None:
        raise typist.error
    message = own_error(err, Path(cmd[0]).name)
    if status != done:
        if status % 2 == 1 and status > 1:  # written by the sector to isa-debug-exit
            raise BootllamaError(describe_exit(status, "" if machine == "pc" else name, serial.printed))
        if message and Path(cmd[0]).name in message:  # QEMU's own failure (its status 1)
            raise BootllamaError(f"{name} failed: {message}")
        detail = f": {message}" if message else ""
        raise BootllamaError(f"{name} exited with status {status} before the sector finished{detail}")
    if (message and Path(cmd[0]).name in message) or (len(dots) < chunks and b"!" not in dots):
        # QEMU's own failure, with the sector's status: the sector did not finish its story
        raise BootllamaError(f"{name} failed: {message}" if message else
                             f"{name} exited with status {status} after {len(dots)} of {chunks} progress dots, "
                             "without the sector's exit and without a message")
    if dots != b"." * chunks:
        raise BootllamaError(f"unexpected loader output {dots[:20]!r}")
    load, gen = serial.timings()
    return RunResult(bytes(serial.text), accel, load, gen, tokens, status, dots)
