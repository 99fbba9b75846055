"""The boot disk: the engine's sector(s), a one-sector manifest, the checkpoint and the tokenizer.

Disk layout (512-byte sectors)::

    LBA 0            the MBR: the engine's boot code (440 bytes at most), the disk signature,
                     partition entry 0 (active, type 0xDA) over the data area, 0x55AA
    LBA 1..          the engine's other sectors, then zeros
    LBA D = 10       the manifest: 384 bytes of zeros, then 128 bytes of fields (LBA 10 puts it
                     at 0x9000, the 4 KiB page after the engine's code, in the boot read)
    LBA D+1          the legacy checkpoint, byte for byte, zero-padded to a sector
    ...              tokenizer.bin, byte for byte, zero-padded to a sector
    ...              the prompt's token ids (int32, after the BOS, 0-terminated)
    ...              the address table: per layer, the addresses of its weight slices (and of
                     its k in the KV cache) in the order the engine uses them
    ...              the RoPE rotation values run.c computes (cosf rows, then sinf rows, each
                     [seq_len][head_size/2] float32; see rope_region)
    ...              zero padding: the loader reads whole chunks, Bochs wants whole cylinders

The sector loads LBA D.. to physical address 1 MiB, so every file lands at a known address;
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
import tempfile
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from bootllama.checkpoint import Config, atomic_write, legacy_layout, read_legacy_config, tensor_shapes
from bootllama.errors import BootllamaError
from bootllama.tokenizer import BOS, Tokenizer, scan_byte_piece

if TYPE_CHECKING:
    import numpy as np

    from bootllama.talkblock import Talk

SECTOR = 512
MANIFEST_LBA = 10  # sector.asm's MLBA: the manifest's sector, after the engine's and zeros
CHUNK = 64  # sectors per BIOS read; must match CHUNK in sector.asm
DATA = 0x100000  # where the data area (the manifest) lands
CYLINDER = 16 * 63  # sectors per cylinder of the geometry Bochs is given
FIELDS = 128  # the manifest's fields: its last 128 bytes
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
    with tempfile.TemporaryDirectory() as tmp:
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
    return Engine(code, sizes, defines, symbols)


# listing lines: line number, [address, bytes], [<n> for included files], source
_LABEL = re.compile(r"\s*\d+\s+(?:<\d+>\s+)?([A-Za-z_]\w*):")
_CODE = re.compile(r"\s*\d+\s+([0-9A-F]{8})\s+([0-9A-F]+|\[|\()")
_MAP_LABEL = re.compile(r"\s+([0-9A-F]+)\s+[0-9A-F]+\s+([A-Za-z_]\w*)$", re.M)  # a top-level label in the map


ORG = 0x7C00


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
    "loader": ("start", "init", "load", "topm", "gdtr", "signature"),
    "guards": ("guards", "diskfail", "cpufail", "die", "exit", "engine_start"),
    "generate loop": ("gen", "done"),
    "printing": ("print", "putc", "rputc"),
    "forward pass": ("forward", "exptab", "exp", "consts", "rope", "nextw", "rmsnorm", "mvw", "mvwn", "mv",
                     "swiglu", "tox", "attention", "softmax_att", "softmax", "divmax"),
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
    rope_addr: int = 0  # run.c's rotation values: fcr rows, then fci rows (see rope_region())
    talk_addr: int = 0  # the talk block (talkblock.py: top-p, typed input), after the RoPE values
    ram_addr: int = 0  # the talk block's buffers (and top-p's scratch), after the KV cache

    @property
    def rope_row_bytes(self) -> int:
        return 4 * (self.config.head_size // 2)

    @property
    def rope_fi_offset(self) -> int:
        """Bytes from fcr row 0 to fci row 0 (the manifest's M_FI)."""
        return self.config.seq_len * self.rope_row_bytes

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
    rope = table + _pad(4 * (len(_LAYER_TABLE) * config.n_layers + len(_FINAL_TABLE)))
    talk = rope + _pad(rope_bytes(config))
    data_end = talk + _pad(talk_bytes)
    logits = _pad(data_end, 4096)
    kv = _pad(logits + 4 * config.vocab_size, 4096)
    kv_bytes = config.seq_len * config.n_layers * 2 * config.kv_dim * 4
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
                  talk if talk_bytes else 0, ram if ram_bytes else 0)


def rope_bytes(config: Config) -> int:
    """Size of the rotation-value region: fcr and fci, each seq_len x head_size/2 float32."""
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
    """The rotation values the engine reads: run.c's fcr rows, then its fci rows (float32 LE).

    bootllama.libm.checkpoint_rope computes them from the header (and the base the checkpoint's
    tables encode, 10000 for llama2.c's), the function the reference uses. They depend on the model
    alone, so the web page is given them once (``build_image(rope=...)``) instead of NumPy."""
    import numpy as np

    from bootllama.libm import checkpoint_rope

    fcr, fci = checkpoint_rope(*read_freq_cis(checkpoint, config), config.head_size)
    return np.ascontiguousarray(fcr, dtype="<f4").tobytes() + np.ascontiguousarray(fci, dtype="<f4").tobytes()


# The address table the engine walks through one forward pass: per layer, the addresses of
# that layer's slices in the order the engine uses them ("k" is that layer's k in the KV
# cache at position 0), then the final rmsnorm weights and the classifier.
_LAYER_TABLE = ("rms_att_weight", "wq", "wk", "wv", "k", "wo", "rms_ffn_weight", "w1", "w3", "w2")
_FINAL_TABLE = ("rms_final_weight", "wcls")


def table(layout: Layout) -> bytes:
    """The per-layer address table (byte addresses only, uint32)."""
    c = layout.config
    lay = legacy_layout(c)
    shapes = tensor_shapes(c)
    base = layout.checkpoint_addr
    addrs = []
    for layer in range(c.n_layers):
        for name in _LAYER_TABLE:
            if name == "k":  # [pos][layer][k|v][kv_dim]
                addrs.append(layout.kv_addr + layer * 2 * c.kv_dim * 4)
            else:
                addrs.append(base + lay[name][0] + layer * 4 * math.prod(shapes[name][1:]))
    addrs += [base + lay[name][0] for name in _FINAL_TABLE]
    return struct.pack(f"<{len(addrs)}I", *addrs)


def manifest(layout: Layout, prompt_ids: list[int], steps: int, temperature: float,
             seed: int, stop_id: int = BOS, byte_base: int | None = 3) -> bytes:
    """The manifest sector (fields at its end, right before the checkpoint header).

    The fields are its last 128 bytes (engine.inc's M_*, [ebp-128..-1]): the dimensions the
    engine derives from the header (head_size, head_size * 4, a RoPE row's bytes, kv_dim,
    kv_dim * 4, a cache position's bytes, |vocab_size|, the query heads per kv head), the LBA
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
    fields = struct.pack("<8I", hs, 4 * hs, layout.rope_row_bytes, c.kv_dim, 4 * c.kv_dim,
                         c.n_layers * 2 * c.kv_dim * 4, c.vocab_size, c.n_heads // c.n_kv_heads)
    fields += struct.pack("<IIII", layout.data_lba, layout.memory_end, stop_id, layout.kv_addr)
    fields += struct.pack("<IIIIIIIfQI", base + lay["token_embedding_table"][0], layout.rope_addr,
                          layout.rope_fi_offset,
                          layout.tokenizer_addr + 4, layout.logits_addr, layout.prompt_addr,
                          steps, temperature, seed & (2**64 - 1),
                          DATA + layout.chunks * CHUNK * SECTOR)  # where the loader stops
    fields += struct.pack("<I", layout.table_addr)
    # sqrtf(head_size), the fix-up (0 here), head_size / 2, the id of <0x00>, the talk block (0: none), then pos,
    # the table pointer, BOS
    fields += struct.pack("<fIIIIIII", _sqrtf(hs), 0, hs // 2, NO_BYTE_PIECES if byte_base is None else byte_base,
                          layout.talk_addr, 0, 0, BOS)
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


def build_image(checkpoint: str | os.PathLike[str], tokenizer_path: str | os.PathLike[str],
                out: str | os.PathLike[str], prompt: str | bytes | None = None, steps: int = 0,
                temperature: float = 0.0, seed: int = 0,
                engine: Engine | None = None, rope: bytes | None = None,
                manifest_lba: int = MANIFEST_LBA, topp: float = 1.0, talk: Talk | None = None) -> Image:
    """Lay out a bootable raw disk image (written atomically). ``rope``: this checkpoint's
    rope_region(), when the caller has it already; ``manifest_lba``: for engines from before
    MLBA (bench/speedup.py's old one reads its manifest right after its sectors). ``topp``:
    run.c's -p (with a temperature, 0 < p < 1 is top-p sampling); ``talk``: typed input at boot
    (talkblock.py)."""
    config = read_legacy_config(checkpoint)
    tok = Tokenizer.load(tokenizer_path, config.vocab_size)
    byte_base = check_byte_pieces(tok)
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
    layout = plan(config, engine.sectors, ckpt_size, tok_size, len(ids) - 1, manifest_lba, talk_bytes, ram)
    man = manifest(layout, ids, steps, temperature, seed, stop_id=tok.stop_id, byte_base=byte_base)
    with atomic_write(out) as raw:
        raw.write(mbr(engine.code, layout, zlib.crc32(man)))
        raw.write(bytes(layout.data_lba * SECTOR - len(engine.code)))  # zeros up to the manifest's LBA
        f = DwordSum(raw)  # the data area, summed as the engine's data check sums it
        f.write(man)
        _copy_padded(checkpoint, f)
        _copy_padded(tokenizer_path, f)
        prompt_bytes = struct.pack(f"<{len(ids)}i", *ids[1:], 0)
        f.write(prompt_bytes + bytes(_pad(len(prompt_bytes)) - len(prompt_bytes)))
        table_bytes = table(layout)
        f.write(table_bytes + bytes(_pad(len(table_bytes)) - len(table_bytes)))
        if rope is None:
            rope = rope_region(checkpoint, config)
        elif len(rope) != rope_bytes(config):
            raise BootllamaError("the rotation values given do not fit this checkpoint")
        f.write(rope + bytes(_pad(len(rope)) - len(rope)))
        if talk_bytes:
            block = talkblock.talk_block(tok, talk, top_p, layout.talk_addr, layout.ram_addr, layout.tokenizer_addr)
            f.write(block + bytes(_pad(len(block)) - len(block)))
        raw.truncate(layout.disk_sectors * SECTOR)  # (zeros: they add nothing to the sum)
        # the very last step: the fix-up that makes the engine's sum over DATA..M_END come out 0
        raw.seek(layout.data_lba * SECTOR + FIX_AT)
        raw.write(struct.pack("<I", data_fixup(f.total)))
    return Image(Path(out), layout, engine, ids, steps)


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
    entry 0 active (0x80), of type 0xDA, covering the data area to the end of the disk."""
    if any(code[MBR_SIGNATURE_AT:510]):
        raise BootllamaError("the engine's boot code runs into the MBR's partition table")
    first, count = layout.data_lba, layout.disk_sectors - layout.data_lba
    entry = bytes((0x80,)) + _chs(first) + bytes((PARTITION_TYPE,)) + _chs(first + count - 1)
    entry += struct.pack("<II", first, count)
    out = bytearray(code)
    out[MBR_SIGNATURE_AT:MBR_SIGNATURE_AT + 4] = struct.pack("<I", disk_signature)
    out[MBR_TABLE_AT:MBR_TABLE_AT + 16] = entry
    return bytes(out)


def _copy_padded(path: str | os.PathLike[str], f) -> None:  # type: ignore[no-untyped-def]
    n = 0
    with open(path, "rb") as src:
        while block := src.read(1 << 20):
            f.write(block)
            n += len(block)
    f.write(bytes(_pad(n) - n))


def check_byte_pieces(tok: Tokenizer) -> int | None:
    """The id of <0x00> for the manifest (3, or None for a tokenizer without byte pieces).

    The engine prints ids 3..258 as the raw bytes 0..255, which is what run.c's decode does
    exactly when those ids hold <0x00>..<0xFF> and no other piece reads as a byte to sscanf;
    a tokenizer with no piece that reads as a byte (byte-level BPE) needs no such ids."""
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
