"""The PCs the engine boots on, behind one face: ``boot(name, image, layout) -> RunResult``.

``qemu`` (the default: an i440FX PC, the disk on IDE), ``qemu-ahci`` (q35, the disk on AHCI),
``qemu-usb-ehci`` and ``qemu-usb-xhci`` (the image as a USB stick), ``qemu-uefi`` and
``qemu-uefi-usb`` (OVMF, UEFI without CSM: the image's UEFI engine), ``bochs`` (its own CPU
interpreter and BIOS) and ``v86`` (WebAssembly under Node, the web page's PC).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from bootllama.errors import BootllamaError
from bootllama.image import Layout
from bootllama.pcs import bochs, qemu, v86
from bootllama.pcs.base import EXIT_DONE, Input, RunResult

QEMU_PCS = {"qemu": "pc", "qemu-ahci": "ahci", "qemu-usb-ehci": "usb-ehci", "qemu-usb-xhci": "usb-xhci",
            "qemu-uefi": "uefi", "qemu-uefi-usb": "uefi-usb"}
NAMES = (*QEMU_PCS, "bochs", "v86")
DEFAULT = "qemu"

__all__ = ["DEFAULT", "EXIT_DONE", "NAMES", "RunResult", "boot"]


def boot(name: str, image: str | os.PathLike[str], layout: Layout, *, timeout: float = 600.0,
         on_bytes: Callable[[bytes], None] | None = None, accel: str = "tcg", cpu: str | None = None,
         max_bytes: int = 1 << 30, input: Input | None = None, keys: str | None = None,
         keys_after: bytes = b"") -> RunResult:
    """Boot ``image`` (laid out as ``layout``) on the PC called ``name``; return the story.

    ``accel`` and ``cpu`` (QEMU's ``-cpu``; None keeps each accelerator's default) apply to the
    QEMU PCs only.  Bochs reports no forward-pass count and returns its text at the end (or
    after ``max_bytes``).

    ``input`` (bytes, or a readable binary stream such as a terminal's standard input) goes to
    COM1's receiver as the PC takes it; when it ends, the harness sends a LF if a line is open,
    then EOT (0x04: end of input, talk.md).  ``keys`` is typed on the keyboard (QEMU PCs only)
    once the story contains ``keys_after``.
    """
    if keys is not None and name not in QEMU_PCS:
        raise BootllamaError(f"typing on the keyboard works on the QEMU PCs only, not {name} "
                             "(give the text as input: it goes to COM1)")
    if name in QEMU_PCS:
        if QEMU_PCS[name] in qemu.UEFI_MACHINES and not layout.esp_lba:
            raise BootllamaError(f"{name} boots the UEFI engine, and this image has none (built legacy-only)")
        if QEMU_PCS[name] in qemu.UEFI_MACHINES and cpu == "486":
            raise BootllamaError(f"{name} is an x86-64 PC: the 486 build boots on the legacy PCs")
        return qemu.boot(image, layout.memory_mib, layout.chunks, accel=accel, timeout=timeout,
                         on_bytes=on_bytes, machine=QEMU_PCS[name], cpu=cpu, input=input, keys=keys,
                         keys_after=keys_after)
    if cpu is not None:
        raise BootllamaError(f"--cpu applies to the QEMU PCs only, not {name}")
    if name == "v86":
        return v86.boot(image, layout.memory_mib, layout.chunks, timeout=timeout, on_bytes=on_bytes,
                        input=input)
    if name == "bochs":
        times: dict[str, float] = {}
        t0 = time.monotonic()
        text = bochs.boot_bochs(image, layout, max_bytes=max_bytes, timeout=timeout, timings=times, input=input)
        if on_bytes and text:
            on_bytes(text)
        return RunResult(text, "bochs", times.get("load_seconds", time.monotonic() - t0),
                         max(times.get("gen_seconds", 0.0), 1e-9), 0, EXIT_DONE, b"." * layout.chunks)
    raise BootllamaError(f"unknown PC {name!r}: use one of {', '.join(NAMES)}")
