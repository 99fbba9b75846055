"""The boot disk: the engine's sector(s), a one-sector manifest, the checkpoint and the tokenizer.

Disk layout (512-byte sectors)::

    LBA 0            the MBR: the engine's boot code (440 bytes at most), the disk signature,
                     partition entry 0 (active, type 0xDA) over the data area, 0x55AA
    LBA 1..          the engine's other sectors, then zeros
    LBA 10, 11       copies of the manifest sector and of the checkpoint header, with the
                     engine's exp constants after the header (its sector at VARS), for the
                     boot read (LBA 1..32 to 0x7E00: LBA 10 lands at 0x9000, the 4 KiB page
                     after the engine's code; an engine without a sector at VARS reads its
                     manifest and header in place, at LBA D = 10)
    LBA D = 12       the manifest: the verify record (CRC32s of the parts, for `bootllama verify`;
                     the engine never reads it) and zeros to byte 384, then 128 bytes of fields
    LBA D+1          the legacy checkpoint, byte for byte, zero-padded to a sector
    ...              tokenizer.bin, byte for byte, zero-padded to a sector
    ...              the prompt's token ids (int32, after the BOS, 0-terminated)
    ...              the address table: per layer, the addresses of its weight slices (and of
                     its k in the KV cache) in the order the engine uses them
    ...              the piece directory: each token's piece address in tokenizer.bin (its
                     length is the dword before it), what the engine's print reads
    ...              the RoPE rotation values run.c computes ([seq_len][head_size/2] pairs of
                     float32: cosf, sinf; see rope_region)
    ...              zero padding: the loader reads whole chunks, Bochs wants whole cylinders

That is the legacy-only layout (``build_image(uefi=False)``: the web page's). The default image
boots both ways, legacy BIOS and UEFI (plan_esp)::

    LBA 0            the MBR as above, partition entry 0 (active, type 0xEF) over the ESP
    LBA 1..9         the engine's other sectors, then zeros
    LBA 10, 11       as above: the manifest's copy, the header and the exp constants
    LBA ESP_LBA = 64 the EFI System Partition (bootllama.fat: FAT16, or FAT32 past 2 GiB):
                     LLAMA.BIN, the data area above (manifest first) as one contiguous file
                     of whole loader chunks, at LBA M_DLBA; EFI/BOOT/BOOTX64.EFI, the UEFI
                     engine (uefi.asm)
    ...              zeros to whole cylinders

The sector loads LBA D.. (M_DLBA..) to physical address 1 MiB, and the UEFI engine reads
LLAMA.BIN to 1 MiB into the memory it allocates, so every file lands at a known address;
the manifest holds those addresses (byte offsets, never arithmetic), the run settings, and
where the KV cache and the logits go in the memory above the data.

The rotation values are the one thing the builder computes rather than copies: run.c calls
``powf``/``cosf``/``sinf`` for them, and glibc's ``cosf``/``sinf`` reduce arguments of 120 and
more with a table of 2/pi bits, more code than the sector has room for. They depend on the header
alone (head size, seq_len, and the RoPE base: 10000 as in run.c, or the base a converted
model's freq_cis tables encode), and are computed with ``bootllama.libm``'s port of glibc, the
same function the reference uses; the checkpoint's own freq_cis tables stay on the disk unread.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from bootllama.checkpoint import Config, atomic_write, legacy_layout, read_legacy_config, tensor_shapes
from bootllama.errors import BootllamaError
from bootllama.fat import Volume
from bootllama.interrupts import temp_dir
from bootllama.tokenizer import BOS, Tokenizer, scan_byte_piece, sidecar_path

if TYPE_CHECKING:
    import numpy as np

    from bootllama.talkblock import Talk

SECTOR = 512
MANIFEST_LBA = 10  # sector.asm's MLBA: the manifest's sector, after the engine's and zeros
CHUNK = 32  # sectors per BIOS read (16 KiB); must match CHUNK in sector.asm
DATA = 0x100000  # where the data area (the manifest) lands
CYLINDER = 16 * 63  # sectors per cylinder of the geometry Bochs is given
FIELDS = 128  # the manifest's fields: its last 128 bytes
# the floor (floor.asm): it reads LBA 1 on to the disk's end in one stream to 0x7E00 and up, so
# the data area sits at the LBA that lands at DATA (zeros before it)
FLOOR_MANIFEST_LBA = 1 + (DATA - 0x7E00) // SECTOR
# activation buffers in the sector's 64 KiB window (floats)
MAX_DIM = 1024
MAX_HIDDEN = 2048
MAX_SEQ = 1024
# the memory the image may ask of a PC (QEMU on this machine): 3 GiB below the PCI hole
MAX_MEMORY = 3 << 30
# the manifest's "id of <0x00>" for a tokenizer without byte pieces: id - 0xFF00 has a nonzero
# high byte for every id below 0xFF00, so the engine reads no id as a raw byte
NO_BYTE_PIECES = 0xFF00
# the MBR: partition entry 0 covers the data area, of a type no OS mounts (non-FS data)
MBR_SIGNATURE_AT = 440
MBR_TABLE_AT = 446
PARTITION_TYPE = 0xDA
# the image that boots both ways: an EFI System Partition (its MBR type) from LBA ESP_LBA, past
# the legacy boot read's 64 sectors, holding the UEFI engine and the data area as one file
ESP_TYPE = 0xEF
ESP_LBA = 64
EFI_FILE = "EFI/BOOT/BOOTX64.EFI"
DATA_FILE = "LLAMA.BIN"


def asm_source() -> Path:
    res = resources.files("bootllama").joinpath("asm", "sector.asm")
    if not isinstance(res, Path) or not res.is_file():
        raise BootllamaError("sector.asm is missing from the bootllama installation")
    return res


@dataclass(frozen=True)
class Engine:
    """The assembled engine: its bytes and its routine sizes from the NASM listing."""

    code: bytes
    sizes: list[tuple[str, int]]
    defines: tuple[str, ...]
    symbols: dict[str, int] = field(default_factory=dict)  # label -> address (org 0x7C00)
    # the sector the boot read puts at VARS (LBA MANIFEST_LBA + 1) as sector.asm assembles it:
    # exp's constants after the checkpoint header's place (HEADER_BYTES, which the builder fills);
    # empty for an engine without one (the floor, older engines)
    vars_sector: bytes = b""

    @property
    def sectors(self) -> int:
        return len(self.code) // SECTOR

    @property
    def used(self) -> int:
        """Bytes of code and data, the 0x55AA signature included, padding excluded."""
        return sum(size for _, size in self.sizes)

    @property
    def vars_at(self) -> int:
        """VARS (BP): where the checkpoint header lands in the boot read, after the manifest
        (sector.asm: 0x7C00 + MLBA*512 + 512)."""
        return ORG + (MANIFEST_LBA + 1) * SECTOR

    @property
    def code_bytes(self) -> int:
        """The engine's size: everything assembled from the NASM source except the 0x55AA
        signature, the MBR's disk signature and partition table, and padding."""
        return sum(size for name, size in self.sizes if name != "signature")

    @property
    def cpu(self) -> str:
        """The processor the build needs."""
        return "i486DX (an FPU; no SSE, no CPUID)" if "CPU486" in self.defines else \
            "SSE2 (Pentium 4 / Athlon 64 or later)"


def nasm() -> str:
    exe = shutil.which("nasm")
    if exe is None:
        raise BootllamaError("nasm not found: install it (Debian: apt-get install nasm), "
                             "or run scripts/setup.sh")
    return exe


def assemble(defines: tuple[str, ...] = (), source: Path | None = None) -> Engine:
    """Assemble sector.asm (or ``source``) with NASM; return the bytes and the size table."""
    src = source or asm_source()
    with temp_dir("bootllama-nasm-") as tmp:  # removed whatever happens, signals included
        out = Path(tmp, "sector.bin")
        lst = Path(tmp, "sector.lst")
        # NASM's map names every label it assembled with its address; the listing also shows
        # labels of false %if branches, so a label counts only where the map puts it
        pre = Path(tmp, "map.asm")
        pre.write_text(f"[map symbols {Path(tmp, 'sector.map')}]\n")
        cmd = [nasm(), "-f", "bin", "-o", str(out), "-l", str(lst), f"-P{pre}", f"-I{src.parent}{os.sep}"]
        cmd += [f"-D{d}" for d in defines] + [str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BootllamaError(f"nasm failed: {proc.stderr.strip().splitlines()[0]}")
        code = out.read_bytes()
        listing = lst.read_text()
        symbols = {name: int(addr, 16) for addr, name in _MAP_LABEL.findall(Path(tmp, "sector.map").read_text())}
        sizes = size_table(listing, len(code), symbols)
    if len(code) % SECTOR or code[510:512] != b"\x55\xaa":
        raise BootllamaError("assembled engine is not a boot sector (no 0x55AA at byte 510)")
    vars_sector = b""
    end = symbols.get("engine_end", ORG + len(code)) - ORG
    if len(code) > end:  # sector.asm's sector at VARS, after zeros (the manifest's sector)
        vars_sector = code[(MANIFEST_LBA + 1) * SECTOR:]
        if len(vars_sector) != SECTOR or any(code[end:(MANIFEST_LBA + 1) * SECTOR]) or any(vars_sector[:HEADER_BYTES]):
            raise BootllamaError("the engine's sector at VARS is not one sector after zeros (header's place: zero)")
        code = code[:end]
    return Engine(code, sizes, defines, symbols, vars_sector)


@dataclass(frozen=True)
class UefiEngine:
    """The assembled UEFI engine (\\EFI\\BOOT\\BOOTX64.EFI): its bytes and its routine sizes."""

    code: bytes
    sizes: list[tuple[str, int]]  # (label, bytes) in each section's address order
    defines: tuple[str, ...]
    symbols: dict[str, int] = field(default_factory=dict)
    sections: dict[str, str] = field(default_factory=dict)  # label -> uefi.asm's section
    eng_offset: int = 0  # where section eng (engine.inc's bytes first) is in the file

    @property
    def header_bytes(self) -> int:
        """The PE32+ header's bytes (its sector, padding excluded)."""
        return sum(n for name, n in self.sizes if self.sections[name] == "hdr")

    @property
    def code_bytes(self) -> int:
        """The UEFI engine's size: everything NASM assembles but the PE header and padding."""
        return sum(n for name, n in self.sizes if self.sections[name] != "hdr")


UEFI_HEADER = 512  # the PE32+ header: its own sector (the file alignment)


def assemble_uefi(defines: tuple[str, ...] = (), engine_org: int | None = None,
                  source: Path | None = None) -> UefiEngine:
    """Assemble uefi.asm (engine.inc inside, with the legacy build's ``defines``) into a PE32+
    UEFI application, padded to its file alignment.  engine.inc's bytes go to ``engine_org``,
    the address they have in the legacy build (None: assemble that build to find it), so that
    both engines run the same bytes."""
    src = source or asm_source().with_name("uefi.asm")
    if not src.is_file():
        raise BootllamaError("uefi.asm is missing from the bootllama installation")
    if not src.with_name("engine.inc").is_file():
        defines = (*defines, "TESTPAYLOAD")  # until the shared forward pass exists: a payload of its own
    legacy = tuple(d for d in defines if d != "TESTPAYLOAD")
    first = engine_first_label(src.with_name("engine.inc")) if "TESTPAYLOAD" not in defines else "engine_start"
    if engine_org is None and "TESTPAYLOAD" not in defines:
        engine_org = assemble(legacy, src.with_name("sector.asm")).symbols[first]
    if engine_org is not None:
        defines = (*defines, f"ENGINE_ORG={engine_org:#x}")
    with temp_dir("bootllama-nasm-") as tmp:  # removed whatever happens, signals included
        out = Path(tmp, "uefi.efi")
        pre = Path(tmp, "map.asm")
        pre.write_text(f"[map all {Path(tmp, 'uefi.map')}]\n")
        cmd = [nasm(), "-f", "bin", "-o", str(out), f"-P{pre}", f"-I{src.parent}{os.sep}"]
        cmd += [f"-D{d}" for d in defines] + [str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BootllamaError(f"nasm failed on uefi.asm: {proc.stderr.strip().splitlines()[0]}")
        code = out.read_bytes()
        map_text = Path(tmp, "uefi.map").read_text()
        sizes, symbols, sections = _uefi_sizes(map_text, len(code))
        m = re.search(r"^\s*[0-9A-F]+\s+([0-9A-F]+)\s+[0-9A-F]+\s+[0-9A-F]+\s+progbits\s+eng$", map_text, re.M)
        if m is None:
            raise BootllamaError("NASM's map of uefi.asm has no section eng")
    size_of_raw = struct.unpack_from("<I", code, 0x40 + 24 + 4)[0]  # the optional header's SizeOfCode
    if code[:2] != b"MZ" or len(code) > UEFI_HEADER + size_of_raw:
        raise BootllamaError("assembled UEFI engine is not a PE32+ image of the size its header says")
    if engine_org is not None and symbols.get(first) != engine_org:
        raise BootllamaError(f"engine.inc's first label, {first}, is not at its first byte: its bytes would not "
                             "sit where the legacy build has them")
    code += bytes(UEFI_HEADER + size_of_raw - len(code))
    return UefiEngine(code, sizes, defines, symbols, sections, int(m.group(1), 16))


def engine_first_label(path: Path | None = None) -> str:
    """The first label engine.inc defines: where its bytes start, in both builds."""
    text = (path or asm_source().with_name("engine.inc")).read_text()
    m = re.search(r"^([A-Za-z_]\w*):", text, re.M)
    if m is None:
        raise BootllamaError("engine.inc defines no label")
    return m.group(1)


def _uefi_sizes(map_text: str, total: int) -> tuple[list[tuple[str, int]], dict[str, int], dict[str, str]]:
    """Bytes per top-level label of uefi.asm (local .labels fold into their parent), from NASM's
    map: the summary gives each section's file extent, the symbol part each label's file
    position ("real") and address ("virtual"); a label runs to the next one in its section or
    to the section's end.  Labels named ``*_end`` and _MARKERS mark places (the padding after
    them counts nowhere)."""
    stops = {name: int(stop, 16) for stop, name in
             re.findall(r"^\s*[0-9A-F]+\s+[0-9A-F]+\s+([0-9A-F]+)\s+[0-9A-F]+\s+progbits\s+(\w+)$", map_text, re.M)}
    symbols_part = map_text[map_text.index("-- Symbols"):]
    rows: list[tuple[str, int]] = []
    symbols: dict[str, int] = {}
    sections: dict[str, str] = {}
    for name, body in re.findall(r"---- Section (\w+) -+\n(.*?)(?=\n---- Section |\Z)", symbols_part, re.S):
        labels = sorted((int(real, 16), sym) for real, virt, sym in
                        re.findall(r"^\s*([0-9A-F]+)\s+([0-9A-F]+)\s+([A-Za-z_]\w*)$", body, re.M))
        for real, virt, sym in re.findall(r"^\s*([0-9A-F]+)\s+([0-9A-F]+)\s+([A-Za-z_]\w*)$", body, re.M):
            symbols[sym] = int(virt, 16)
            del real
        end = stops.get(name, total)
        labels = [(real, sym) for real, sym in labels if real < end]
        for i, (real, sym) in enumerate(labels):
            nxt = labels[i + 1][0] if i + 1 < len(labels) else end
            if nxt > real and not sym.endswith("_end") and sym not in _MARKERS:
                rows.append((sym, nxt - real))
                sections[sym] = name
    return rows, symbols, sections


_UEFI_STUBS = ("uefi_entry", "putc", "exit")  # uefi.asm's own, in section eng after engine.inc
_MARKERS = ("eng_image", "thunk_image")  # where section eng's and thunk's bytes are in the file
# the UEFI engine's own parts (the rest are engine.inc's, named as in PARTS)
UEFI_PARTS = {
    "PE header": ("hdr",),  # sections of uefi.asm
    "UEFI loader": ("text",),
    "mode switch": ("thunk", *_UEFI_STUBS),  # a section, and the 32-bit stubs
    "test payload": ("engine_start", "test_msg"),  # -DTESTPAYLOAD only
}


def uefi_part_sizes(uefi: UefiEngine) -> list[tuple[str, int]]:
    """Bytes per part of the UEFI engine: its PE header, loader and mode switch, then engine.inc's
    routines by PARTS (the header first; code_bytes is the sum of the others)."""
    own = {name: part for part, names in UEFI_PARTS.items() for name in names}
    part_of = {name: part for part, names in PARTS.items() for name in names}
    totals = dict.fromkeys([*UEFI_PARTS, *PARTS], 0)
    test = "TESTPAYLOAD" in uefi.defines
    last = None
    for name, size in uefi.sizes:
        section = uefi.sections[name]
        part = own.get(section) or (own.get(name) if name not in part_of or test or name in _UEFI_STUBS else None) \
            or part_of.get(name)
        if part is None and section == "eng":
            part = last  # a constant's label inside a routine (exp's exlo): the routine's part
        if part is None:
            raise BootllamaError(f"routine {name!r} of uefi.asm belongs to no part")
        totals[part] += size
        last = part
    return [(part, n) for part, n in totals.items() if n]


def format_uefi_size_table(uefi: UefiEngine) -> str:
    parts = uefi_part_sizes(uefi)
    return (f"UEFI engine: {uefi.code_bytes} code bytes, {uefi.header_bytes} of PE header apart; "
            f"\\EFI\\BOOT\\BOOTX64.EFI {len(uefi.code)} bytes\nby part: "
            + ", ".join(f"{part} {n}" for part, n in parts if part != "PE header"))


# listing lines: line number, [address, bytes], [<n> for included files], source
_LABEL = re.compile(r"\s*\d+\s+(?:<\d+>\s+)?([A-Za-z_]\w*):")
_CODE = re.compile(r"\s*\d+\s+([0-9A-F]{8})\s+([0-9A-F]+|\[|\()")
_MAP_LABEL = re.compile(r"\s+([0-9A-F]+)\s+[0-9A-F]+\s+([A-Za-z_]\w*)$", re.M)  # a top-level label in the map


ORG = 0x7C00
HEADER_BYTES = 28  # the legacy checkpoint header (7 int32), which the engine reads at VARS


def label_offsets(listing: str, symbols: dict[str, int] | None = None) -> list[tuple[int, str]]:
    """(offset, name) of every top-level label in a NASM listing, in address order; with
    ``symbols`` (NASM's map: name -> address), only the labels at the address the map gives."""
    found: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in listing.splitlines():
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _CODE.match(line)
        if m and pending:
            found += [(int(m.group(1), 16), name) for name in pending]
            pending = []
    if symbols is not None:
        found = [(off, name) for off, name in found if symbols.get(name) == ORG + off]
    return sorted(found)


def size_table(listing: str, total: int, symbols: dict[str, int] | None = None) -> list[tuple[str, int]]:
    """Bytes per top-level label, from a NASM listing (local .labels fold into their parent).

    Trailing zero padding (``times``/``align``) is excluded: the table counts what the engine
    uses.  The signature counts as its own row.
    """
    starts = label_offsets(listing, symbols)
    pads: list[int] = []
    for line in listing.splitlines():
        m = _CODE.match(line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        if "times" in line or re.search(r"\balign\b", line):
            pads.append(addr)
        if "0xaa55" in line:
            starts.append((addr, "signature"))
    starts.sort()
    rows: list[tuple[str, int]] = []
    for i, (addr, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else total
        # stop a routine at the first padding directive inside it
        end = min([p for p in pads if addr <= p < end] or [end])
        if name == "signature":
            end = addr + 2
        if end > addr:
            rows.append((name, end - addr))
    return rows


# What each routine of sector.asm is for: the size table sums them per part, which shows where
# the bytes go (the forward pass alone is more than a sector holds; see the README).
PARTS = {
    "loader": ("start", "init", "loadall", "load", "topm", "pe", "gdt", "gdtr", "signature"),
    "guards": ("guards", "a20fail", "diskfail", "datafail", "cpufail", "die", "exit", "engine_start", "datacheck"),
    "generate loop": ("gen", "done"),
    "printing": ("print", "putc", "rputc"),
    "forward pass": ("forward", "layer", "exptab", "exp", "consts", "rmsnorm", "mvw", "mvwn", "mv",
                     "tox", "softmax", "divmax",
                     # EXPCONSTS's labels (the UEFI engine's map names them apart from consts)
                     "eps", "xlo", "xhi", "exhi", "cw53", "two_m24", "invln2n", "c0", "c2", "c1", "exlo", "cw24"),
    "sampling": ("sample",),
    "top-p": ("topp",),
    "encoder": ("encode", "enc_done", "enc_lookup", "enc_concat", "enc_none", "enc_delete", "enc_bpe",
                "enc_stretch", "enc_word", "enc_bpeword", "enc_pair"),
    "talk": ("talk", "story", "chat", "full", "bye", "pick", "render", "encode_ids", "say", "readline",
             "m_prompt", "m_sys", "m_user", "m_asst", "m_ascii", "m_full"),
    "input": ("getc", "echo", "rmode"),
}


def part_sizes(engine: Engine) -> list[tuple[str, int]]:
    """Bytes per part (PARTS), in PARTS order; a routine in no part is an error."""
    part_of = {name: part for part, names in PARTS.items() for name in names}
    totals = dict.fromkeys(PARTS, 0)
    for name, size in engine.sizes:
        if name not in part_of:
            raise BootllamaError(f"routine {name!r} of sector.asm belongs to no part in image.PARTS")
        totals[part_of[name]] += size
    return [(part, n) for part, n in totals.items() if n]


def format_size_table(engine: Engine) -> str:
    lines = [f"{'routine':<12} {'bytes':>5}"]
    lines += [f"{name:<12} {size:>5}" for name, size in engine.sizes]
    lines.append(f"{'code bytes':<12} {engine.code_bytes:>5}   ({engine.sectors} sector"
                 f"{'s' if engine.sectors != 1 else ''} on disk, the MBR's first)")
    lines.append("by part: " + ", ".join(f"{part} {n}" for part, n in part_sizes(engine)))
    return "\n".join(lines)


@dataclass(frozen=True)
class Layout:
    """Where everything goes: disk sectors and physical addresses."""

    config: Config
    data_lba: int
    checkpoint_addr: int
    tokenizer_addr: int
    prompt_addr: int
    logits_addr: int
    kv_addr: int
    memory_end: int
    last_lba: int
    disk_sectors: int
    table_addr: int = 0  # the engine's per-layer address table (see table())
    rope_addr: int = 0  # run.c's rotation values: rows of (fcr, fci) pairs (see rope_region())
    esp_lba: int = 0  # the EFI System Partition (0: a legacy-only image, the data area at data_lba)
    esp_sectors: int = 0
    efi_size: int = 0  # bytes of \EFI\BOOT\BOOTX64.EFI

    @property
    def data_bytes(self) -> int:
        """The data area as the loader reads it (whole chunks): the ESP's data file."""
        return self.chunks * CHUNK * SECTOR

    def volume(self) -> Volume:
        """The ESP's file system (a UEFI layout only)."""
        if not self.esp_lba:
            raise BootllamaError("a legacy-only image has no EFI System Partition")
        return Volume(((DATA_FILE, self.data_bytes), (EFI_FILE, self.efi_size)), self.esp_lba)
    talk_addr: int = 0  # the talk block (talkblock.py: top-p, typed input), after the RoPE values
    ram_addr: int = 0  # the talk block's buffers (and top-p's scratch), after the KV cache
    pdir_addr: int = 0  # the piece directory (see piece_directory()), after the address table

    @property
    def rope_row_bytes(self) -> int:
        """One position's (fcr, fci) pairs (the manifest's M_RADV)."""
        return 8 * (self.config.head_size // 2)

    @property
    def chunks(self) -> int:
        """How many BIOS reads (and progress dots) the loader makes."""
        return (self.last_lba - self.data_lba) // CHUNK + 1

    @property
    def memory_mib(self) -> int:
        """Memory to give the PC: everything below memory_end, rounded up, plus headroom."""
        return max(32, math.ceil(self.memory_end / (1 << 20)) + 2)


def _pad(n: int, to: int = SECTOR) -> int:
    return -(-n // to) * to


def plan(config: Config, engine_sectors: int, checkpoint_size: int, tokenizer_size: int,
         n_prompt: int, manifest_lba: int = MANIFEST_LBA, talk_bytes: int = 0, ram_bytes: int = 0) -> Layout:
    for name, value, limit in (("dim", config.dim, MAX_DIM), ("hidden_dim", config.hidden_dim, MAX_HIDDEN),
                               ("seq_len", config.seq_len, MAX_SEQ)):
        if value > limit:
            raise BootllamaError(f"{name}={value} is larger than the engine's buffers allow ({limit})")
    # the manifest lands in the page after the engine's code (sector.asm's MLBA): the engine's
    # sectors, then zeros up to it
    data_lba = max(engine_sectors, manifest_lba)
    ckpt = DATA + SECTOR
    tok = ckpt + _pad(checkpoint_size)
    prompt = tok + _pad(tokenizer_size)
    table = prompt + _pad(4 * (n_prompt + 1))
    pdir = table + _pad(4 * table_entries(config))
    rope = pdir + _pad(4 * config.vocab_size)
    talk = rope + _pad(rope_bytes(config))
    data_end = talk + _pad(talk_bytes)
    logits = _pad(data_end, 4096)
    kv = _pad(logits + 4 * config.vocab_size, 4096)
    # [pos][layer][v|k], then dim floats: the last layer's q at the last position waits there
    # (engine.inc's forward keeps each layer's q in the next slot until that slot's v)
    kv_bytes = (config.seq_len * config.n_layers * 2 * config.kv_dim + config.dim) * 4
    ram = _pad(kv + kv_bytes, 4096)
    memory_end = ram + ram_bytes if ram_bytes else kv + kv_bytes
    if memory_end > MAX_MEMORY:
        raise BootllamaError(
            f"model needs {memory_end / 2**30:.2f} GiB of memory with its KV cache; "
            f"the engine can be given at most {MAX_MEMORY / 2**30:.0f} GiB")
    last_lba = data_lba + (data_end - DATA) // SECTOR - 1
    read_end = data_lba + ((last_lba - data_lba) // CHUNK + 1) * CHUNK
    disk = _pad(read_end, CYLINDER)
    return Layout(config, data_lba, ckpt, tok, prompt, logits, kv, memory_end, last_lba, disk, table, rope,
                  talk_addr=talk if talk_bytes else 0, ram_addr=ram if ram_bytes else 0, pdir_addr=pdir)


def plan_esp(layout: Layout, efi_size: int) -> Layout:
    """The layout of an image that boots both ways: the data area moves into the EFI System
    Partition as one contiguous file (DATA_FILE, its first LBA the manifest's M_DLBA) beside
    the UEFI engine (EFI_FILE); LBA MANIFEST_LBA and the one after it keep a copy of the
    manifest sector and of the checkpoint's first sector for the legacy engine's boot read."""
    lay = replace(layout, esp_lba=ESP_LBA, efi_size=efi_size)
    vol = lay.volume()
    data_lba = vol.file_lba(DATA_FILE)
    return replace(lay, data_lba=data_lba, last_lba=data_lba + layout.last_lba - layout.data_lba,
                   esp_sectors=vol.sectors, disk_sectors=_pad(ESP_LBA + vol.sectors, CYLINDER))


def rope_bytes(config: Config) -> int:
    """Size of the rotation-value region: seq_len x head_size/2 pairs (fcr, fci) of float32."""
    return 2 * config.seq_len * (config.head_size // 2) * 4


def read_freq_cis(checkpoint: str | os.PathLike[str], config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's freq_cis_real and freq_cis_imag tables, read from their place in the file."""
    import numpy as np  # here, not at the top: the web page builds images under Pyodide, without NumPy

    lay = legacy_layout(config)
    shape = (config.seq_len, config.head_size // 2)
    tables = []
    with open(checkpoint, "rb") as f:
        for name in ("freq_cis_real", "freq_cis_imag"):
            f.seek(lay[name][0])
            data = f.read(4 * shape[0] * shape[1])
            tables.append(np.frombuffer(data, dtype="<f4").reshape(shape))
    return tables[0], tables[1]


def rope_region(checkpoint: str | os.PathLike[str], config: Config) -> bytes:
    """The rotation values the engine reads: per position, run.c's (fcr, fci) pairs (float32 LE,
    interleaved: the engine reads a pair as [edi] and [edi+4]).

    bootllama.libm.checkpoint_rope computes them from the header (and the base the checkpoint's
    tables encode, 10000 for llama2.c's), the function the reference uses. They depend on the model
    alone, so the web page is given them once (``build_image(rope=...)``) instead of NumPy."""
    import numpy as np

    from bootllama.libm import checkpoint_rope

    fcr, fci = checkpoint_rope(*read_freq_cis(checkpoint, config), config.head_size)
    return np.ascontiguousarray(np.stack([fcr, fci], axis=-1), dtype="<f4").tobytes()


# The address table the engine walks through one forward pass: per layer, the addresses of
# that layer's slices in the order the engine uses them, each matrix's rows (its output's
# length) before its address ("k": for each query head h, the k of its kv head, h // kv_mul,
# in that layer's KV cache slot at position 0: attention takes one per head, which is run.c's
# GQA mapping), then the final rmsnorm weights and the classifier.
_LAYER_TABLE = ("rms_att_weight", "wv", "wk", "wq", "k", "wo", "rms_ffn_weight", "w1", "w3", "w2")
_FINAL_TABLE = ("rms_final_weight", "wcls")
_VECTORS = ("rms_att_weight", "rms_ffn_weight", "rms_final_weight")  # no rows entry


def _rows(config: Config, name: str) -> int:
    """A matrix's rows: the length of what the engine's mv writes."""
    return {"wv": config.kv_dim, "wk": config.kv_dim, "w1": config.hidden_dim, "w3": config.hidden_dim,
            "wcls": config.vocab_size}.get(name, config.dim)


def _entries(config: Config, name: str) -> int:
    """Dwords table() writes for one name: a k address per query head, a vector's address, or a
    matrix's rows and address."""
    return config.n_heads if name == "k" else 1 if name in _VECTORS else 2


def table_entries(config: Config) -> int:
    """How many dwords table() writes."""
    return (sum(_entries(config, n) for n in _LAYER_TABLE) * config.n_layers
            + sum(_entries(config, n) for n in _FINAL_TABLE))


def table(layout: Layout) -> bytes:
    """The per-layer address table (byte addresses only, uint32)."""
    c = layout.config
    lay = legacy_layout(c)
    shapes = tensor_shapes(c)
    base = layout.checkpoint_addr
    kv_mul = c.n_heads // c.n_kv_heads
    addrs = []
    for layer, names in [(layer, _LAYER_TABLE) for layer in range(c.n_layers)] + [(0, _FINAL_TABLE)]:
        for name in names:
            if name == "k":  # [pos][layer][v|k][kv_dim]: k after v
                addrs += [layout.kv_addr + ((layer * 2 + 1) * c.kv_dim + h // kv_mul * c.head_size) * 4
                          for h in range(c.n_heads)]
                continue
            if name not in _VECTORS:
                addrs.append(_rows(c, name))
            addrs.append(base + lay[name][0] + layer * 4 * math.prod(shapes[name][1:]))
    assert len(addrs) == table_entries(c)
    return struct.pack(f"<{len(addrs)}I", *addrs)


def piece_directory(tok: Tokenizer, tokenizer_addr: int) -> bytes:
    """Each token's piece address in tokenizer.bin as loaded at ``tokenizer_addr`` (uint32 per id;
    its length is the dword before it): the engine's print looks a piece up here instead of
    walking the records from the first. The same kind of entry as the address table's: where
    the builder put the model's bytes, never code or constants."""
    addrs = []
    off = tokenizer_addr + 4  # after max_token_length: the first record (score, len, bytes)
    for piece in tok.pieces:
        addrs.append(off + 8)
        off += 8 + len(piece)
    return struct.pack(f"<{len(addrs)}I", *addrs)


def manifest(layout: Layout, prompt_ids: list[int], steps: int, temperature: float,
             seed: int, stop_id: int = BOS, byte_base: int | None = 3) -> bytes:
    """The manifest sector (fields at its end, right before the checkpoint header).

    The fields are its last 128 bytes (engine.inc's M_*, [ebp-128..-1]): the dimensions the
    engine derives from the header (head_size, head_size * 4, a RoPE row's bytes, the piece
    directory's address, kv_dim * 4, a cache position's bytes, |vocab_size|, a free field), the LBA
    the data area starts at (the loader reads it from there), the memory the run needs (the
    end of the KV cache and logits), the id that ends the story (run.c's BOS, or a chat
    model's end of answer), the addresses and settings (the weights' addresses are in the
    per-layer table, see table()), sqrtf(head_size), the data check's fix-up, head_size / 2,
    the id of <0x00> (3 in llama2.c's tokenizers; NO_BYTE_PIECES when the tokenizer has
    none), and the first values of the engine's work variables (pos 0, token BOS).
    """
    c = layout.config
    lay = legacy_layout(c)
    base = layout.checkpoint_addr
    hs = c.head_size
    # (the field after |vocab_size|, once n_heads / n_kv_heads, is free: the address table has a
    # k address per query head)
    fields = struct.pack("<8I", hs, 4 * hs, layout.rope_row_bytes, layout.pdir_addr, 4 * c.kv_dim,
                         c.n_layers * 2 * c.kv_dim * 4, c.vocab_size, 0)
    fields += struct.pack("<IIII", layout.data_lba, layout.memory_end, stop_id, layout.kv_addr)
    fields += struct.pack("<IIIIIIIfQI", base + lay["token_embedding_table"][0], layout.rope_addr,
                          c.n_kv_heads + c.n_heads,  # the heads RoPE rotates (k's, then q's)
                          layout.tokenizer_addr + 4, layout.logits_addr, layout.prompt_addr,
                          steps, temperature, seed & (2**64 - 1),
                          DATA + layout.chunks * CHUNK * SECTOR)  # where the loader stops
    fields += struct.pack("<I", layout.table_addr)
    # sqrtf(head_size), the fix-up (0 here), head_size / 2, the id of <0x00>, the talk block (0: none), then pos,
    # the table pointer (DATA: sector.asm's load loop adds the loaded dwords to it, the data check's seed;
    # forward sets it before reading it), BOS
    fields += struct.pack("<fIIIIIII", _sqrtf(hs), 0, hs // 2, NO_BYTE_PIECES if byte_base is None else byte_base,
                          layout.talk_addr, 0, DATA, BOS)
    assert len(fields) == FIELDS
    return bytes(SECTOR - FIELDS) + fields


def _sqrtf(n: int) -> float:
    """sqrtf(n) as run.c computes it: the float32 nearest to the square root. The double root is
    correctly rounded, and rounding it again to float32 gives the correctly rounded float32 root
    (a double has more than 2 * 24 + 2 bits, enough for square roots); no NumPy: the web page
    builds images under Pyodide."""
    return struct.unpack("<f", struct.pack("<f", math.sqrt(n)))[0]


@dataclass(frozen=True)
class Image:
    path: Path
    layout: Layout
    engine: Engine
    prompt_ids: list[int]
    steps: int
    uefi: UefiEngine | None = None  # the UEFI engine in its ESP (when assembled here or given)


def build_image(checkpoint: str | os.PathLike[str], tokenizer_path: str | os.PathLike[str],
                out: str | os.PathLike[str], prompt: str | bytes | None = None, steps: int = 0,
                temperature: float = 0.0, seed: int = 0,
                engine: Engine | None = None, rope: bytes | None = None,
                manifest_lba: int = MANIFEST_LBA, uefi: bool | bytes | UefiEngine = True,
                floor: bool = False, topp: float = 1.0, talk: Talk | None = None) -> Image:
    """Lay out a bootable raw disk image (written atomically). ``rope``: this checkpoint's
    rope_region(), when the caller has it already; ``manifest_lba``: for engines from before
    MLBA (bench/speedup.py's old one reads its manifest right after its sectors); ``uefi``:
    True (assemble the UEFI engine with the legacy engine's defines) or one (or its bytes) give the
    image that boots both ways (plan_esp), False the legacy-only one (the data at LBA
    ``manifest_lba``: the web page's, which has no NASM, and old engines'); ``floor``:
    floor.asm's image, the default story only (legacy BIOS only). ``topp``: run.c's -p (with a
    temperature, 0 < p < 1 is top-p sampling); ``talk``: typed input at boot (talkblock.py;
    both engines: COM1 and the keyboard)."""
    if floor:
        if prompt or steps or temperature or seed or engine is not None:
            raise BootllamaError("the floor tells the default story only: no prompt, -n, -t, -s or engine options")
        engine, manifest_lba = assemble(("FLOOR",), asm_source().with_name("floor.asm")), FLOOR_MANIFEST_LBA
        uefi = False
    config = read_legacy_config(checkpoint)
    tok = Tokenizer.load(tokenizer_path, config.vocab_size)
    byte_base = check_byte_pieces(tok)
    tok.check_fits(prompt, config.seq_len)
    ids = tok.encode(prompt or b"", bos=True, eos=False)
    if 0 in ids[1:]:
        raise BootllamaError("the prompt holds token id 0, which ends the engine's prompt list")
    if steps <= 0 or steps > config.seq_len:
        steps = config.seq_len
    if len(ids) > config.seq_len:
        raise BootllamaError(f"prompt is {len(ids)} tokens; the context holds {config.seq_len}")
    top_p = topp if temperature > 0 and 0.0 < topp < 1.0 else None
    if engine is None:
        # temperature sampling, top-p and typed input are assembly-time options: the greedy engine stays smaller
        engine = assemble(engine_defines(tok, temperature, top_p is not None, talk))
    if temperature > 0 and "sample" not in engine.symbols:
        raise BootllamaError("this engine build samples greedily only; assemble it with -DSAMPLING")
    if (top_p is not None) != ("topp" in engine.symbols) or (talk is not None) != ("talk" in engine.symbols):
        raise BootllamaError("this engine build does not match the image's top-p or typed-input settings")
    ckpt_size = os.path.getsize(checkpoint)
    tok_size = os.path.getsize(tokenizer_path)
    talk_bytes = ram = 0
    if top_p is not None or talk is not None:
        from bootllama import talkblock

        talk_bytes = talkblock.block_size(tok, talk, top_p, 0)
        ram = talkblock.ram_bytes(tok, talk, top_p is not None)
    app = assemble_uefi(engine.defines, engine.symbols.get(engine_first_label())) if uefi is True else uefi or None
    efi = app.code if isinstance(app, UefiEngine) else app
    if engine.vars_sector and manifest_lba != MANIFEST_LBA:
        raise BootllamaError(f"this engine reads its manifest's copy at LBA {MANIFEST_LBA}")
    # an engine with a sector at VARS owns LBA MANIFEST_LBA + 1 (the manifest's copy before it): the
    # data area starts after both, in the legacy-only layout too
    engine_lbas = MANIFEST_LBA + 2 if engine.vars_sector else engine.sectors
    layout = plan(config, engine_lbas, ckpt_size, tok_size, len(ids) - 1, manifest_lba, talk_bytes, ram)
    if efi is not None:
        if manifest_lba != MANIFEST_LBA or engine.sectors > MANIFEST_LBA:
            raise BootllamaError("an image with an EFI System Partition needs the manifest's copy at LBA "
                                 f"{MANIFEST_LBA}, after the engine's sectors")
        layout = plan_esp(layout, len(efi))
    if rope is None:
        rope = rope_region(checkpoint, config)
    elif len(rope) != rope_bytes(config):
        raise BootllamaError("the rotation values given do not fit this checkpoint")
    man = manifest(layout, ids, steps, temperature, seed, stop_id=tok.stop_id, byte_base=byte_base)
    with atomic_write(out, inputs=image_inputs(checkpoint, tokenizer_path)) as raw:
        boot = mbr(engine.code, layout, zlib.crc32(man))
        raw.write(boot)
        parts = [Part("engine", 0, len(boot), zlib.crc32(boot))]
        copies = efi is not None or bool(engine.vars_sector)
        if copies:
            # the legacy boot read's copies: the manifest sector (rewritten below with the record
            # and the fix-up), then the sector at VARS: the checkpoint header and the engine's
            # exp constants after it (an older engine: the checkpoint's first sector)
            raw.write(bytes(MANIFEST_LBA * SECTOR - len(engine.code)))
            raw.write(man)
            with open(checkpoint, "rb") as src:
                first = src.read(SECTOR)
            if engine.vars_sector:
                first = first[:HEADER_BYTES] + engine.vars_sector[HEADER_BYTES:]
            raw.write(first + bytes(SECTOR - len(first)))
        if efi is not None:
            vol = layout.volume()
            for offset, data in vol.metadata():
                raw.seek(layout.esp_lba * SECTOR + offset)
                raw.write(data)
            raw.seek(layout.esp_lba * SECTOR + vol.offset(EFI_FILE))
            parts.append(Part("UEFI engine", raw.tell(), len(efi), zlib.crc32(efi)))
            raw.write(efi)
        raw.seek(layout.data_lba * SECTOR)  # the data area, written once (in the ESP: its data file)
        man_at = raw.tell()
        f = DwordSum(raw)  # the data area, summed as the engine's data check sums it
        f.write(man)
        parts.append(Part("manifest", man_at + SECTOR - FIELDS, FIELDS, fields_crc(man)))
        for name, path in (("checkpoint", checkpoint), ("tokenizer", tokenizer_path)):
            at = raw.tell()
            crc, n = _copy_padded(path, f)
            parts.append(Part(name, at, n, crc))
        table_bytes = table(layout)
        for name, data in (("prompt ids", struct.pack(f"<{len(ids)}i", *ids[1:], 0)), ("address table", table_bytes),
                           ("piece directory", piece_directory(tok, layout.tokenizer_addr)), ("RoPE values", rope)):
            parts.append(Part(name, raw.tell(), len(data), zlib.crc32(data)))
            f.write(data + bytes(_pad(len(data)) - len(data)))
        if talk_bytes:
            block = talkblock.talk_block(tok, talk, top_p, layout.talk_addr, layout.ram_addr, layout.tokenizer_addr)
            parts.append(Part("talk block", raw.tell(), len(block), zlib.crc32(block)))
            f.write(block + bytes(_pad(len(block)) - len(block)))
        # the loader's last chunk past the data: each dword its own address, not zeros. The data
        # check is an additive sum, which a zero tail would make blind to the data area moved on
        # by less than the tail (the dwords shifted out would have added nothing).
        area = layout.data_lba * SECTOR
        tail = DATA + raw.tell() - area
        f.write(struct.pack(f"<{(DATA + layout.data_bytes - tail) // 4}I", *range(tail, DATA + layout.data_bytes, 4)))
        raw.truncate(layout.disk_sectors * SECTOR)  # (zeros: they add nothing to the sum)
        # the checksums go into the manifest sector's first bytes, which the engine never reads
        # (they replace zeros there, so their dwords join the sum)
        record = pack_record(parts, layout.data_lba, layout.disk_sectors * SECTOR)
        padded = record + bytes(-len(record) % 4)
        total = f.total + sum(struct.unpack(f"<{len(padded) // 4}I", padded))
        # the very last step: the fix-up that makes the engine's sum over DATA..M_END come out 0
        # (in the data area's manifest, and, with the record, in its copy at LBA MANIFEST_LBA for the
        # boot read)
        for at in {man_at, MANIFEST_LBA * SECTOR if copies else man_at}:
            raw.seek(at)
            raw.write(record)
            raw.seek(at + FIX_AT)
            raw.write(struct.pack("<I", data_fixup(total)))
    return Image(Path(out), layout, engine, ids, steps, app if isinstance(app, UefiEngine) else None)


def image_inputs(checkpoint: str | os.PathLike[str], tokenizer: str | os.PathLike[str]) -> dict[str, Path]:
    """The files an image is built from, by what they are (for atomic_write's refusal)."""
    return {"checkpoint": Path(checkpoint), "tokenizer": Path(tokenizer),
            "tokenizer's sidecar": sidecar_path(tokenizer)}


FIX_AT = SECTOR - 28  # engine.inc's M_FIX (ebp-28): the data check's fix-up, in the manifest sector


class DwordSum:
    """A writer that passes bytes on and keeps the additive sum (mod 2^32) of their little-endian
    dwords, as the engine's data check adds them up; ``total`` counts whole dwords only."""

    def __init__(self, f) -> None:  # type: ignore[no-untyped-def]
        self.f = f
        self.total = 0
        self.rest = b""

    def write(self, data: bytes) -> None:
        self.f.write(data)
        buf = self.rest + data
        n = len(buf) & ~3
        self.total = (self.total + sum(struct.unpack_from(f"<{n // 4}I", buf))) & 0xFFFFFFFF if n else self.total
        self.rest = buf[n:]


def data_fixup(total: int) -> int:
    """The M_FIX dword for a data area whose dwords (with M_FIX = 0) sum to ``total``: the engine
    seeds its sum with DATA (so an area of zeros fails) and wants 0 (mod 2^32)."""
    return -(total + DATA) & 0xFFFFFFFF


def data_sum(path: str | os.PathLike[str], layout: Layout) -> int:
    """The engine's data check over an image: DATA plus the dwords from the manifest's LBA to
    the loader's end (M_END), mod 2^32; 0 for an intact image."""
    total = DATA
    with open(path, "rb") as f:
        f.seek(layout.data_lba * SECTOR)
        left = layout.chunks * CHUNK * SECTOR
        while left:
            block = f.read(min(left, 1 << 20))
            block += bytes(min(left, 1 << 20) - len(block))  # (past the file's end: the read fails anyway)
            total += sum(struct.unpack(f"<{len(block) // 4}I", block))
            left -= len(block)
    return total & 0xFFFFFFFF


def engine_defines(tok: Tokenizer, temperature: float, top_p: bool, talk: Talk | None,
                   cpu: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The NASM defines of the engine an image needs: -DSAMPLING for a temperature, -DTOPP for
    top-p, -DTALK (with only the encoder kind this tokenizer uses) for typed input."""
    out = ("SAMPLING",) if temperature > 0 else ()
    out += ("TOPP",) if top_p else ()
    if talk is not None:
        from bootllama.tokenizer import ByteLevelTokenizer

        out += ("TALK", "ENC_RUNC=0" if isinstance(tok, ByteLevelTokenizer) else "ENC_BPE=0")
    return out + cpu


def _chs(lba: int) -> bytes:
    """An MBR CHS triple for ``lba`` in the 16-head, 63-sector geometry (1023/15/63 past it)."""
    c, rest = divmod(lba, CYLINDER)
    h, s = divmod(rest, 63)
    if c > 1023:
        c, h, s = 1023, 15, 62
    return bytes((h, (s + 1) | ((c >> 2) & 0xC0), c & 0xFF))


def mbr(code: bytes, layout: Layout, disk_signature: int) -> bytes:
    """The engine's sectors with sector 0 made a valid MBR: the disk signature, and partition
    entry 0 active (0x80), of type 0xDA, covering the data area to the end of the disk (an
    image with an ESP: of type 0xEF, covering the ESP's file system)."""
    if any(code[MBR_SIGNATURE_AT:510]):
        raise BootllamaError("the engine's boot code runs into the MBR's partition table")
    first, count, kind = layout.data_lba, layout.disk_sectors - layout.data_lba, PARTITION_TYPE
    if layout.esp_lba:  # the EFI System Partition instead
        first, count, kind = layout.esp_lba, layout.esp_sectors, ESP_TYPE
    entry = bytes((0x80,)) + _chs(first) + bytes((kind,)) + _chs(first + count - 1)
    entry += struct.pack("<II", first, count)
    out = bytearray(code)
    out[MBR_SIGNATURE_AT:MBR_SIGNATURE_AT + 4] = struct.pack("<I", disk_signature)
    out[MBR_TABLE_AT:MBR_TABLE_AT + 16] = entry
    return bytes(out)


def _copy_padded(path: str | os.PathLike[str], f) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Copy a file, zero-padded to a sector; return its CRC32 and length."""
    n = crc = 0
    with open(path, "rb") as src:
        while block := src.read(1 << 20):
            f.write(block)
            n += len(block)
            crc = zlib.crc32(block, crc)
    f.write(bytes(_pad(n) - n))
    return crc, n


# The verify record (``bootllama verify``): CRC32s of the image's parts, in the manifest sector's
# first RECORD_MAX bytes, which the engine never reads. Little-endian: the magic, a version, the
# count of parts, FIXUP_AT, the data area's LBA, the disk's size in bytes; per part its name
# (16 bytes, NUL-padded), its byte offset on the disk, its length and its CRC32; then the CRC32
# of everything before it. Each part is found through its own offset, so a layout that moves the
# data area (the manifest's M_DLBA) needs no change here.
RECORD_MAGIC = b"bootllama-crc32\0"
RECORD_VERSION = 1
RECORD_MAX = SECTOR - FIELDS
_RECORD_HEAD = struct.Struct("<16sHHHHIQ")
_RECORD_PART = struct.Struct("<16sQII")
# the byte in the manifest sector where the engine's data-check fix-up dword goes (branch golf),
# written after the record: the manifest's CRC32 reads it as zero. None: no fix-up dword.
FIXUP_AT: int | None = FIX_AT


@dataclass(frozen=True)
class Part:
    """One checksummed part of an image: its name, byte offset on the disk, length and CRC32."""

    name: str
    offset: int
    length: int
    crc: int


def fields_crc(sector: bytes, fixup_at: int | None = FIXUP_AT) -> int:
    """CRC32 of a manifest sector's fields, the fix-up dword (if any) read as zero."""
    fields = bytearray(sector[SECTOR - FIELDS:SECTOR])
    if fixup_at:
        at = fixup_at - (SECTOR - FIELDS)
        fields[at:at + 4] = bytes(4)
    return zlib.crc32(fields)


def pack_record(parts: list[Part], data_lba: int, disk_bytes: int) -> bytes:
    head = _RECORD_HEAD.pack(RECORD_MAGIC, RECORD_VERSION, len(parts), FIXUP_AT or 0, 0, data_lba, disk_bytes)
    body = head + b"".join(_RECORD_PART.pack(p.name.encode(), p.offset, p.length, p.crc) for p in parts)
    record = body + struct.pack("<I", zlib.crc32(body))
    assert len(record) <= RECORD_MAX
    return record


@dataclass(frozen=True)
class Record:
    data_lba: int
    disk_bytes: int
    fixup_at: int | None
    parts: list[Part]


def unpack_record(sector: bytes) -> Record | None:
    """The verify record of a manifest sector; None when it holds none (no magic). Raises
    BootllamaError when the record itself is damaged (its CRC32 differs)."""
    if sector[:len(RECORD_MAGIC)] != RECORD_MAGIC:
        return None
    _, version, count, fixup_at, _, data_lba, disk_bytes = _RECORD_HEAD.unpack_from(sector)
    end = _RECORD_HEAD.size + count * _RECORD_PART.size
    if version != RECORD_VERSION or end + 4 > RECORD_MAX or any(sector[end + 4:RECORD_MAX]) or \
            struct.unpack_from("<I", sector, end)[0] != zlib.crc32(sector[:end]):
        raise BootllamaError("its verify record (the manifest sector's first bytes) is damaged")
    parts = []
    for i in range(count):
        name, offset, length, crc = _RECORD_PART.unpack_from(sector, _RECORD_HEAD.size + i * _RECORD_PART.size)
        parts.append(Part(name.rstrip(b"\0").decode("ascii", "replace"), offset, length, crc))
    return Record(data_lba, disk_bytes, fixup_at or None, parts)


def check_byte_pieces(tok: Tokenizer) -> int | None:
    """The id of <0x00> for the manifest (3, or None for a tokenizer without byte pieces).

    The engine prints ids 3..258 as the raw bytes 0..255, which is what run.c's decode does
    exactly when those ids hold <0x00>..<0xFF> and no other piece reads as a byte to sscanf;
    a tokenizer with no piece that reads as a byte (byte-level BPE) needs no such ids.

    The engine's test is 16-bit (id - base has a zero high byte), so it would read ids from
    0x10000 + 3 on (from NO_BYTE_PIECES on, without byte pieces) as raw bytes too: a larger
    vocabulary is refused."""
    first = NO_BYTE_PIECES if tok.byte_piece_base is None else 3 + 0x10000  # the first id it misreads
    if tok.vocab_size > first:
        raise BootllamaError(f"tokenizer has {tok.vocab_size} pieces: the engine would print ids from {first} on "
                             "as raw bytes (its byte-piece test is 16-bit)")
    if tok.byte_piece_base is None:
        for i, piece in enumerate(tok.pieces[: tok.vocab_size]):
            if scan_byte_piece(piece) is not None:
                raise BootllamaError(f"tokenizer piece {i} {piece!r} would print as a raw byte in run.c, "
                                     "but this tokenizer has no byte pieces")
        return None
    for i in range(256):
        want = f"<0x{i:02X}>".encode()
        if tok.vocab_size <= 3 + i or tok.pieces[3 + i] != want:
            raise BootllamaError("tokenizer does not have the byte pieces <0x00>..<0xFF> at ids 3..258, "
                                 "which the engine relies on")
    for i, piece in enumerate(tok.pieces[: tok.vocab_size]):
        if not 3 <= i < 259 and scan_byte_piece(piece) is not None:
            raise BootllamaError(f"tokenizer piece {i} {piece!r} would print as a raw byte in run.c; "
                                 "the engine only treats ids 3..258 so")
    return 3
