"""Boot an image in v86, a third PC: an x86 emulator compiled to WebAssembly (with its own JIT),
run under Node, the same PC the web page runs (``bootllama web``).

The harness (``v86_boot.mjs`` beside this module) gives v86 Debian's SeaBIOS and its stdvga
VGA BIOS and the image as the first IDE disk, and hooks two I/O ports: 0xF4 (the sector's exit
code, reported as QEMU's isa-debug-exit status) and 0xE9 (one beat per forward pass).  It also
stops when the guest halts with interrupts off, and at the timeout.  v86 comes from npm at the
version pinned in the repository's package.json (``npm ci`` in scripts/setup.sh puts it in
``node_modules/`` at the repository root); ``BOOTLLAMA_V86`` may name another v86 package folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from bootllama.errors import BootllamaError
from bootllama.pcs.base import EXIT_DONE, Input, RunResult, describe_exit, emulator, own_error, read_serial, start_input

SEABIOS = Path("/usr/share/seabios")
BIOS = SEABIOS / "bios.bin"
VGA_BIOS = SEABIOS / "vgabios-stdvga.bin"
INSTALL_HINT = "run scripts/setup.sh (Debian nodejs, npm and seabios, then npm ci)"


def node_binary() -> str:
    for name in ("node", "nodejs"):
        exe = shutil.which(name)
        if exe:
            return exe
    raise BootllamaError(f"node not found: {INSTALL_HINT}")


def harness() -> Path:
    res = resources.files("bootllama").joinpath("pcs", "v86_boot.mjs")
    if not isinstance(res, Path) or not res.is_file():
        raise BootllamaError("v86_boot.mjs is missing from the bootllama installation")
    return res


def _candidates() -> list[Path]:
    env = os.environ.get("BOOTLLAMA_V86")
    if env:
        return [Path(env)]
    here = Path(__file__).resolve()
    found = [p / "node_modules" / "v86" for p in here.parents]
    return [*found, Path.cwd() / "node_modules" / "v86"]


def v86_dir() -> Path:
    """The v86 npm package: BOOTLLAMA_V86, else node_modules/v86 in a folder above this module
    (the repository root of an editable install) or in the current directory."""
    for cand in _candidates():
        if (cand / "build" / "libv86.mjs").is_file() and (cand / "build" / "v86.wasm").is_file():
            return cand
    raise BootllamaError(f"v86 not found (no node_modules/v86 with build/libv86.mjs and build/v86.wasm): "
                         f"{INSTALL_HINT}")


def bios_files() -> tuple[Path, Path]:
    for rom in (BIOS, VGA_BIOS):
        if not rom.is_file():
            raise BootllamaError(f"{rom} is missing (Debian seabios): {INSTALL_HINT}")
    return BIOS, VGA_BIOS


def boot(image: str | os.PathLike[str], memory_mib: int, chunks: int, timeout: float = 600.0,
         on_bytes: Callable[[bytes], None] | None = None, input: Input | None = None,
         done: int = EXIT_DONE) -> RunResult:
    """Boot ``image`` in v86; return the story bytes, timings and the forward-pass count.

    ``input`` goes to COM1's receiver (the harness's stdin, passed to v86's UART as it comes;
    v86 queues received bytes without a bound, so nothing is lost), then LF and EOT as on QEMU.

    Raises BootllamaError when node, v86 or the BIOS is missing, on a timeout, a disk error or
    any exit code other than "finished".
    """
    if not timeout > 0:
        raise BootllamaError(f"timeout must be positive, not {timeout}")
    if not Path(image).is_file():
        raise BootllamaError(f"image {image} does not exist")
    bios, vga = bios_files()
    cmd = [node_binary(), str(harness()), str(v86_dir()), os.fspath(image), str(memory_mib), str(bios),
           str(vga), f"{timeout:g}", "serial-in" if input is not None else "no-input"]
    feeder = None
    try:
        with emulator(cmd, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            feeder = start_input(proc, input)
            # the harness stops itself at the timeout; this one is the guard against a stuck node
            serial = read_serial(proc, chunks, timeout + 30, "v86", on_bytes)
            code = proc.wait(timeout=10)
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    finally:  # node has exited (emulator() saw to it): the input stops
        if feeder is not None:
            feeder.stop()
    lines = err.splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        summary = None
    if not isinstance(summary, dict):  # node's or v86's own failure: its message, not a story
        message = own_error(err, "node")
        detail = f": {message}" if message else ""
        raise BootllamaError(f"v86 failed (node exit code {code}, after {len(serial.dots)} of {chunks} progress "
                             f"dots){detail}")
    status = summary.get("status")
    beats = int(summary.get("beats", 0))
    dots = bytes(serial.dots)
    if status == "timeout":
        raise BootllamaError(f"the sector did not finish within {timeout:g} s on v86 "
                             f"({len(dots)} of {chunks} progress dots, {len(serial.text)} bytes of text)")
    if status is None:
        raise BootllamaError(f"the sector halted on v86 without an exit code after {len(serial.text)} bytes")
    if status != done:  # (EXIT_DONE; an engine from before E_DONE: 1)
        raise BootllamaError(describe_exit(int(status), "v86", serial.printed))
    if dots != b"." * chunks:
        raise BootllamaError(f"unexpected loader output {dots[:20]!r} on v86")
    load, gen = serial.timings()
    return RunResult(bytes(serial.text), "v86", load, gen, beats, int(status), dots)
