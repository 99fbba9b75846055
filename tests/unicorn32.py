"""A test helper: run 32-bit flat protected-mode routines (form.md) in-process with Unicorn.

``tests/asm/enc_wrapper.asm`` includes ``encode.inc`` and ``topp.inc`` at a known org; this
module assembles it with nasm, maps a flat 32 MiB memory (segment bases 0, as UC_MODE_32
starts), and calls an entry with the registers a test sets, stopping at the wrapper's ``hlt``.
Writes into the code's 4 KiB pages are caught (form.md: none allowed). It is separate from
``bootllama.unicorn_harness``, which runs the 16-bit engine.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from unicorn import UC_ARCH_X86, UC_HOOK_MEM_WRITE, UC_MODE_32, Uc
from unicorn.x86_const import (
    UC_X86_REG_EAX,
    UC_X86_REG_EBP,
    UC_X86_REG_EBX,
    UC_X86_REG_ECX,
    UC_X86_REG_EDI,
    UC_X86_REG_EDX,
    UC_X86_REG_EFLAGS,
    UC_X86_REG_EIP,
    UC_X86_REG_ESI,
    UC_X86_REG_ESP,
    UC_X86_REG_FPSW,
)

ASM = Path(__file__).resolve().parents[1] / "src" / "bootllama" / "asm"
WRAPPER = Path(__file__).resolve().parent / "asm" / "enc_wrapper.asm"
ORG = 0x10000
ENCODE = ORG + 16
TOPP = ORG + 64
STACK = 0xF000
MEMORY = 32 << 20
REGS = {"eax": UC_X86_REG_EAX, "ebx": UC_X86_REG_EBX, "ecx": UC_X86_REG_ECX, "edx": UC_X86_REG_EDX,
        "esi": UC_X86_REG_ESI, "edi": UC_X86_REG_EDI, "ebp": UC_X86_REG_EBP}


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
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.mem_map(0, MEMORY)
        self.uc.mem_write(ORG, self.code)
        self.code_writes: list[int] = []
        lo, hi = ORG & ~0xFFF, (ORG + len(self.code) + 0xFFF) & ~0xFFF
        if watch_code:  # slows every write down: tests that time nothing may afford it
            self.uc.hook_add(UC_HOOK_MEM_WRITE, lambda uc, access, addr, size, value, data:
                             self.code_writes.append(addr), begin=lo, end=hi - 1)

    def write(self, addr: int, data: bytes) -> None:
        self.uc.mem_write(addr, data)

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))

    def call(self, entry: int, **regs: int) -> dict[str, int]:
        """Run ``entry`` with ``regs`` set (the others 0); the registers, eflags and x87 status after."""
        for name, reg in REGS.items():
            self.uc.reg_write(reg, regs.get(name, 0) & 0xFFFFFFFF)
        self.uc.reg_write(UC_X86_REG_ESP, STACK)
        self.uc.reg_write(UC_X86_REG_EFLAGS, 0x2)
        self.uc.emu_start(entry, ORG, timeout=0, count=0)
        out = {name: self.uc.reg_read(reg) for name, reg in REGS.items()}
        out["eflags"] = self.uc.reg_read(UC_X86_REG_EFLAGS)
        out["esp"] = self.uc.reg_read(UC_X86_REG_ESP)
        out["eip"] = self.uc.reg_read(UC_X86_REG_EIP)
        out["fpsw"] = self.uc.reg_read(UC_X86_REG_FPSW)
        if self.code_writes:
            raise AssertionError(f"a write into a code page at {self.code_writes[0]:#x}")
        return out
