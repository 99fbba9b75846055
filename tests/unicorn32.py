"""A test helper: run 32-bit flat protected-mode routines (form.md) in-process with Unicorn.

``tests/asm/enc_wrapper.asm`` includes ``encode.inc`` and ``topp.inc`` at a known org; this
module assembles it with nasm, maps a flat 32 MiB memory (segment bases 0, as UC_MODE_32
starts), and calls an entry with the registers a test sets, stopping at the wrapper's ``hlt``.
Writes into the code's 4 KiB pages are caught (form.md: none allowed). The machine is
``bootllama.unicorn_harness``'s (which runs the engine's routines the same way).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from unicorn import UC_HOOK_MEM_WRITE

from bootllama.unicorn_harness import REGS, Machine

ASM = Path(__file__).resolve().parents[1] / "src" / "bootllama" / "asm"
WRAPPER = Path(__file__).resolve().parent / "asm" / "enc_wrapper.asm"
ORG = 0x10000
ENCODE = ORG + 16
TOPP = ORG + 64
STACK = 0xF000
MEMORY = 32 << 20


def assemble(source: Path = WRAPPER, defines: dict[str, int] | None = None) -> bytes:
    """nasm -f bin of ``source`` with the engine's asm folder on the include path."""
    defs = {"ORG": ORG, **(defines or {})}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "out.bin")
        cmd = ["nasm", "-f", "bin", f"-I{ASM}/", *(f"-D{k}={v}" for k, v in defs.items()), "-o", str(out), str(source)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return out.read_bytes()


class Flat32:
    """One machine with the wrapper loaded at ORG; memory is kept between calls."""

    def __init__(self, watch_code: bool = True, defines: dict[str, int] | None = None) -> None:
        self.code = assemble(defines=defines)
        self.machine = Machine.load(self.code, ORG, MEMORY)
        self.code_writes: list[int] = []
        lo, hi = ORG & ~0xFFF, (ORG + len(self.code) + 0xFFF) & ~0xFFF
        if watch_code:  # slows every write down: tests that time nothing may afford it
            self.machine.uc.hook_add(UC_HOOK_MEM_WRITE, lambda uc, access, addr, size, value, data:
                                     self.code_writes.append(addr), begin=lo, end=hi - 1)

    def write(self, addr: int, data: bytes) -> None:
        self.machine.write(addr, data)

    def read(self, addr: int, size: int) -> bytes:
        return self.machine.read(addr, size)

    def call(self, entry: int, **regs: int) -> dict[str, int]:
        """Run ``entry`` with ``regs`` set (the others 0) until the wrapper's ``hlt`` at ORG; the
        registers, eflags and x87 status after."""
        out = self.machine.run(entry, ORG, STACK, **{name: regs.get(name, 0) for name in REGS})
        if self.code_writes:
            raise AssertionError(f"a write into a code page at {self.code_writes[0]:#x}")
        return out
