"""Boot an interactive image under QEMU TCG with lines on COM1 (QEMU's ``-serial stdio``), 0x04 after them.

talk.md's protocol: the engine reads COM1's receiver; the host sends EOT (0x04) when its input
ends. This is the tests' own feeding (the harness's is ``bootllama run``'s).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bootllama import image
from bootllama.pcs import qemu
from bootllama.pcs.base import EXIT_DONE, read_serial

EOT = b"\x04"


def boot_typed(img: image.Image, lines: bytes, timeout: float = 600.0, eot: bool = True,
               extra: list[str] | None = None, cpu: str | None = None) -> bytes:
    """What COM1 carries after the loading dots, for ``lines`` typed on COM1 (then EOT)."""
    lay = img.layout
    cmd = qemu.qemu_command(Path(img.path), lay.memory_mib, "tcg", extra, cpu=cpu)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        proc.stdin.write(lines + (EOT if eot else b""))
        proc.stdin.flush()
        serial = read_serial(proc, lay.chunks, timeout, "QEMU")
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
    assert status == EXIT_DONE, (status, bytes(serial.text[-200:]), bytes(serial.message))
    assert bytes(serial.dots) == b"." * lay.chunks
    return bytes(serial.text)
