"""Run one routine of the assembled engine in-process with Unicorn, on memory we lay out.

engine.inc is flat 32-bit protected-mode code, which Unicorn's 32-bit mode (flat segments)
runs as the PC does after the sector's switch to protected mode. A test writes vectors into
memory, sets the registers the routine takes, calls it by label and reads the results back,
to compare with the NumPy reference bit for bit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
from unicorn import UC_ARCH_X86, UC_MODE_32, Uc, UcError
from unicorn.x86_const import (
    UC_X86_REG_CR0,
    UC_X86_REG_CR4,
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

from bootllama.errors import BootllamaError
from bootllama.image import ORG, Engine

MEMORY = 4 << 20  # 4 MiB: low memory plus room above 1 MiB for weights
STACK = 0x2000  # the sector's own stack top (engine.inc's STACK)
RETURN = 0x0500  # a `hlt` the called routine returns to

REGS = {"eax": UC_X86_REG_EAX, "ebx": UC_X86_REG_EBX, "ecx": UC_X86_REG_ECX, "edx": UC_X86_REG_EDX,
        "esi": UC_X86_REG_ESI, "edi": UC_X86_REG_EDI, "ebp": UC_X86_REG_EBP}


@dataclass
class Machine:
    """Flat 32-bit memory with code loaded in it, ready to call its routines; :meth:`boot` puts
    the engine at 0x7C00 (``engine``), :meth:`load` any code anywhere (tests/unicorn32.py)."""

    uc: Uc
    symbols: dict[str, int] = field(default_factory=dict)  # label -> address, for call()
    engine: Engine | None = None

    @classmethod
    def load(cls, code: bytes, org: int, memory: int = MEMORY, symbols: dict[str, int] | None = None) -> Machine:
        """``memory`` bytes mapped from 0 (segment bases 0, as UC_MODE_32 starts), ``code`` at ``org``,
        a ``hlt`` at RETURN, the x87 and SSE on."""
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0, memory)
        uc.mem_write(org, code)
        uc.mem_write(RETURN, b"\xf4")
        uc.reg_write(UC_X86_REG_CR4, uc.reg_read(UC_X86_REG_CR4) | 0x200)  # OSFXSR: SSE on
        uc.reg_write(UC_X86_REG_CR0, uc.reg_read(UC_X86_REG_CR0) & ~0x4)  # EM off: x87/SSE on
        return cls(uc, dict(symbols or {}))

    @classmethod
    def boot(cls, engine: Engine) -> Machine:
        m = cls.load(engine.code, ORG, symbols=engine.symbols)
        m.engine = engine
        uc = m.uc
        # what engine.inc does after its data check: exp's constants and table, the x87 at
        # 24-bit precision (a small header, which a test may overwrite); it stops at gen
        uc.mem_write(engine.vars_at, engine.vars_sector)  # exp's constants (the boot read's)
        uc.mem_write(engine.vars_at, struct.pack("<7i", 64, 128, 2, 4, 2, 512, 32))
        uc.reg_write(UC_X86_REG_EBP, engine.vars_at)
        uc.reg_write(UC_X86_REG_ECX, 0)
        uc.reg_write(UC_X86_REG_ESP, STACK)
        uc.emu_start(engine.symbols["exptab"], engine.symbols["gen"])
        return m

    def run_code(self, code: bytes) -> None:
        """Execute a few instructions placed at a scratch address."""
        at = 0x0600
        self.uc.mem_write(at, code + b"\xf4")
        self.uc.reg_write(UC_X86_REG_ESP, STACK)
        self.uc.emu_start(at, at + len(code))

    def write_f32(self, addr: int, values: np.ndarray) -> None:
        self.uc.mem_write(addr, np.ascontiguousarray(values, dtype="<f4").tobytes())

    def read_f32(self, addr: int, n: int) -> np.ndarray:
        return np.frombuffer(bytes(self.uc.mem_read(addr, 4 * n)), dtype="<f4").copy()

    def write(self, addr: int, data: bytes) -> None:
        self.uc.mem_write(addr, data)

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.uc.mem_read(addr, n))

    def run(self, entry: int, until: int, stack: int, count: int = 0, **regs: int) -> dict[str, int]:
        """Run from ``entry`` to ``until`` with ESP = ``stack``, EFLAGS = 2 and the given 32-bit
        registers (the others as they are), at most ``count`` instructions (0: no limit); return
        the registers, eflags, esp, eip and the x87 status word after."""
        uc = self.uc
        for name, value in regs.items():
            uc.reg_write(REGS[name], value & 0xFFFFFFFF)
        uc.reg_write(UC_X86_REG_ESP, stack)
        uc.reg_write(UC_X86_REG_EFLAGS, 0x2)
        uc.emu_start(entry, until, timeout=0, count=count)
        out = {name: uc.reg_read(reg) for name, reg in REGS.items()}
        out["eflags"] = uc.reg_read(UC_X86_REG_EFLAGS)
        out["esp"] = uc.reg_read(UC_X86_REG_ESP)
        out["eip"] = uc.reg_read(UC_X86_REG_EIP)
        out["fpsw"] = uc.reg_read(UC_X86_REG_FPSW)
        return out

    def call(self, label: str, max_instructions: int = 50_000_000, **regs: int) -> dict[str, int]:
        """Call ``label`` with the given 32-bit registers; return the registers after its ret."""
        if label not in self.symbols:
            raise BootllamaError(f"the engine has no routine {label!r}")
        sp = STACK - 4
        self.uc.mem_write(sp, RETURN.to_bytes(4, "little"))
        try:
            out = self.run(self.symbols[label], RETURN, sp, max_instructions, **regs)
        except UcError as e:
            raise BootllamaError(f"{label} faulted in the emulator: {e}") from None
        return {name: out[name] for name in REGS}
