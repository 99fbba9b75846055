"""The PCs' input plumbing (talk.md), proven with a payload of its own: ``tests/asm/echo.asm``, a
boot sector that writes back to COM1 what it reads from COM1's receiver and the BIOS keyboard
(printable bytes as they are, others as <XX>) and exits on EOT.  What the engine does with the
same bytes is tested where the engine reads them."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bootllama import pcs
from bootllama.errors import BootllamaError
from bootllama.image import CYLINDER, SECTOR, nasm
from bootllama.pcs.base import closing_bytes
from bootllama.pcs.qemu import key_codes

ECHO = Path(__file__).resolve().parent / "asm" / "echo.asm"
# the echo payload's "layout": one progress dot, a whole Bochs cylinder of disk, a small PC
LAYOUT = SimpleNamespace(memory_mib=32, chunks=1, disk_sectors=CYLINDER)


@pytest.fixture(scope="module")
def echo_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("echo") / "echo.img"
    code = out.with_suffix(".bin")
    subprocess.run([nasm(), "-f", "bin", "-o", str(code), str(ECHO)], check=True)
    out.write_bytes(code.read_bytes().ljust(CYLINDER * SECTOR, b"\0"))
    return out


def echoed(data: bytes) -> bytes:
    """What the payload writes back for ``data`` from COM1 (up to the first EOT)."""
    out = bytearray()
    for b in data.split(b"\x04")[0]:
        out += bytes([b]) if b == 10 or 0x20 <= b <= 0x7E else f"<{b:02X}>".encode()
    return bytes(out)


def test_closing_bytes() -> None:
    assert closing_bytes(b"") == b"\x04"
    assert closing_bytes(b"Hi\n") == b"\x04"
    assert closing_bytes(b"Hi\nthere") == b"\n\x04"  # a last line without LF still counts
    assert closing_bytes(b"x" * 511) == b"\x04"  # a full line is over: the next byte starts another
    assert closing_bytes(b"x" * 512) == b"\n\x04"


def test_key_codes() -> None:
    assert key_codes("a") == ["a"]
    assert key_codes("Q") == ["shift", "q"]
    assert key_codes("?") == ["shift", "slash"]
    assert key_codes("\n") == ["ret"]
    assert key_codes("\x04") == ["ctrl", "d"]
    with pytest.raises(BootllamaError, match="cannot type"):
        key_codes("é")


# every byte value but EOT, a long line, and lines that do not end in LF
PAYLOAD = b"You are a poet.\nHi\n" + bytes(b for b in range(256) if b != 4) + b"\n" + b"y" * 700


@pytest.mark.parametrize("pc", ["qemu", "qemu-ahci", "qemu-usb-ehci", "qemu-usb-xhci", "v86", "bochs"])
def test_input_bytes(echo_image: Path, pc: str) -> None:
    result = pcs.boot(pc, echo_image, LAYOUT, timeout=120, input=PAYLOAD)  # type: ignore[arg-type]
    assert result.text == echoed(PAYLOAD + closing_bytes(PAYLOAD))
    assert result.text.endswith(b"y" * 189 + b"\n")  # the harness closed the open line, then sent EOT


@pytest.mark.parametrize("pc", ["qemu", "v86", "bochs"])
def test_input_stream(echo_image: Path, pc: str) -> None:
    """A stream, as an interactive terminal gives it: lines come one at a time, later."""
    read, write = os.pipe()
    lines = [b"first line\n", b"second\n", b"third, then the end"]

    def typist() -> None:
        for line in lines:
            time.sleep(0.5)
            os.write(write, line)
        os.close(write)

    t = threading.Thread(target=typist)
    t.start()
    with open(read, "rb", buffering=0) as stream:
        result = pcs.boot(pc, echo_image, LAYOUT, timeout=120, input=stream)  # type: ignore[arg-type]
    t.join()
    assert result.text == b"first line\nsecond\nthird, then the end\n"


def test_input_file_object(echo_image: Path) -> None:
    """A stream without a descriptor (read as it gives data)."""
    result = pcs.boot("qemu", echo_image, LAYOUT, timeout=120, input=io.BytesIO(b"abc\ndef\n"))  # type: ignore[arg-type]
    assert result.text == b"abc\ndef\n"


# (once behind slow: keystrokes sent at a fixed gap overflowed QEMU's 16-byte PS/2 queue when
# the guest was starved of the CPU; QMP.type_text now waits for the BIOS to take each one)
def test_keyboard_typing(echo_image: Path) -> None:
    """Text typed as keystrokes (QMP.type_text, shift for capitals and symbols) reaches int 16h;
    Ctrl-D is EOT."""
    text = "Once upon a time, Lily & Tom said: \"Hi!\" (1+1=2?) [x_y] {a|b} ~`'<>/\\;\n"
    result = pcs.boot("qemu", echo_image, LAYOUT, timeout=120, keys=text + "\x04")  # type: ignore[arg-type]
    assert result.text == text.encode()


def test_keyboard_after(echo_image: Path) -> None:
    """Typing waits for the story to contain ``keys_after`` (here what COM1's first line made the
    payload print); COM1 and the keyboard feed one PC."""
    read, write = os.pipe()
    os.write(write, b"ready\n")
    closer = threading.Timer(4.0, os.close, (write,))
    closer.start()
    with open(read, "rb", buffering=0) as stream:
        result = pcs.boot("qemu", echo_image, LAYOUT, timeout=120, input=stream, keys="Typed\n",  # type: ignore[arg-type]
                          keys_after=b"ready\n")
    closer.join()
    assert result.text == b"ready\nTyped\n"


def test_refusals(echo_image: Path) -> None:
    with pytest.raises(BootllamaError, match="QEMU PCs only"):
        pcs.boot("v86", echo_image, LAYOUT, keys="x")  # type: ignore[arg-type]
