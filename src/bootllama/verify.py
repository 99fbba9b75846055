"""``bootllama verify IMAGE``: check a built image against the CRC32s its builder kept in it.

The builder (image.build_image) writes a verify record into the manifest sector's first bytes
(the engine never reads them): the CRC32, byte offset and length of each part of the image (the
engine's sectors, the UEFI engine's file in the EFI System Partition, the manifest's fields, the
checkpoint, the tokenizer, the prompt's ids, the address table, the RoPE values). ``verify``
finds the record in the manifest sector the boot read loads (LBA image.MANIFEST_LBA, else the
first LBA of the MBR's partition), checks the record's own CRC32, then every part, and checks
that the manifest's address fields point where the record says the parts are. A damaged part is
named; nothing is repaired.

What it cannot see: damage to the zero padding between parts (nothing reads it), and a stick
whose record and part were both rewritten consistently. The data check's fix-up dword, written
after the record, is outside every CRC: verify checks it as the engine does, by the sum of the
data area's dwords.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import zlib

from bootllama import image
from bootllama.errors import BootllamaError

# the manifest's address fields (image.manifest: byte offset in the sector, the part it points
# into, and the offset of that address from the part's first byte)
_ADDRESS_FIELDS = (
    (432, "checkpoint", 28),  # the token embedding table, after the legacy header (7 ints)
    (436, "RoPE values", 0),
    (444, "tokenizer", 4),  # its pieces, after max_token_length
    (452, "prompt ids", 0),
    (476, "address table", 0),
    (396, "piece directory", 0),  # M_PDIR: each piece's address, for print
)


def _read(f, offset: int, length: int) -> bytes:  # type: ignore[no-untyped-def]
    f.seek(offset)
    return f.read(length)


def _crc(f, offset: int, length: int) -> int:  # type: ignore[no-untyped-def]
    f.seek(offset)
    crc = 0
    left = length
    while left > 0:
        block = f.read(min(left, 1 << 20))
        if not block:
            break
        crc = zlib.crc32(block, crc)
        left -= len(block)
    return crc


def find_record(f, size: int) -> tuple[int, image.Record]:  # type: ignore[no-untyped-def]
    """(the manifest sector's byte offset, its record): at the boot read's manifest LBA, else at
    the first LBA of the MBR's partition 0. Raises BootllamaError for a file that has neither."""
    if size < image.SECTOR or _read(f, 510, 2) != b"\x55\xaa":
        raise BootllamaError("not a bootllama image (no boot sector)")
    lbas = [image.MANIFEST_LBA]
    first = struct.unpack("<I", _read(f, image.MBR_TABLE_AT + 8, 4))[0]
    if first not in lbas:
        lbas.append(first)
    for lba in lbas:
        sector = _read(f, lba * image.SECTOR, image.SECTOR)
        if len(sector) < image.SECTOR:
            continue
        record = image.unpack_record(sector)
        if record is not None:
            return lba * image.SECTOR, record
    if size < (image.MANIFEST_LBA + 1) * image.SECTOR:
        raise BootllamaError(f"not a bootllama image, or truncated before its manifest ({size} bytes)")
    raise BootllamaError("no verify record in its manifest sector: not a bootllama image, or built "
                         "before `bootllama verify` existed")


def _data_sum(f, data_at: int, sector: bytes) -> int:  # type: ignore[no-untyped-def]
    """The engine's data check (image.data_sum) over the data area at ``data_at``, up to the
    loader's end that the manifest ``sector`` gives (M_END, ebp-40): 0 for an intact image."""
    end = struct.unpack_from("<I", sector, image.SECTOR - 40)[0]
    total = image.DATA
    f.seek(data_at)
    left = max(0, end - image.DATA)
    while left:
        block = f.read(min(left, 1 << 20))
        block += bytes(-len(block) % 4)
        if not block:
            break
        total += sum(struct.unpack(f"<{len(block) // 4}I", block))
        left -= min(left, 1 << 20)
    return total & 0xFFFFFFFF


def verify(path: str | os.PathLike[str]) -> tuple[list[image.Part], list[str]]:
    """(the parts the record lists, the names of the damaged ones, in disk order). Raises
    BootllamaError for a file that is no image, a truncated image or a damaged record."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)  # a device's size too (getsize says 0 for one)
        man_at, record = find_record(f, size)
        if size < record.disk_bytes:
            raise BootllamaError(f"truncated: {size} of its {record.disk_bytes} bytes")
        by_name = {p.name: p for p in record.parts}
        optional = {"UEFI engine", "talk block"}  # an image that boots UEFI PCs; one that takes typed input
        if set(by_name) - optional != {"engine", "manifest", *(name for _, name, _ in _ADDRESS_FIELDS)}:
            raise BootllamaError("its verify record lists other parts than this bootllama writes")
        damaged = [p.name for p in record.parts if p.name != "manifest" and _crc(f, p.offset, p.length) != p.crc]
        man = by_name["manifest"]
        sector = _read(f, man.offset - (image.SECTOR - image.FIELDS), image.SECTOR)
        # the data check's fix-up is written after the record: the manifest's CRC reads it as zero
        if len(sector) < image.SECTOR or image.fields_crc(sector, record.fixup_at) != man.crc:
            damaged.append("manifest")
        # the manifest's own fields must point where the record says the parts are
        if man.offset - (image.SECTOR - image.FIELDS) != man_at and sector != _read(f, man_at, image.SECTOR):
            damaged.append("manifest")  # the boot read's copy of the manifest differs from the data area's
        data_at = record.data_lba * image.SECTOR
        for at, name, skip in _ADDRESS_FIELDS:
            addr = struct.unpack_from("<I", sector, at)[0]
            if addr - image.DATA + data_at != by_name[name].offset + skip and "manifest" not in damaged:
                damaged.append("manifest")
        if not damaged and record.fixup_at and _data_sum(f, data_at, sector) != 0:
            damaged.append("manifest")  # only the fix-up itself (outside every CRC) can be wrong here
    order = [p.name for p in record.parts]
    return record.parts, sorted(set(damaged), key=order.index)


def cmd_verify(args: argparse.Namespace) -> int:
    path = args.image
    if os.path.isdir(path):
        raise BootllamaError(f"{path} is a folder, not an image")
    try:
        parts, damaged = verify(path)
    except BootllamaError as e:
        raise BootllamaError(f"{path}: {e}") from None
    if damaged:
        raise BootllamaError(f"{path} is damaged: {', '.join(damaged)} (CRC32 differs from what the builder "
                             f"recorded); rebuild it or write it again")
    total = sum(p.length for p in parts)
    print(f"{path}: intact ({', '.join(p.name for p in parts)}: {total} bytes, CRC32s as built)", file=sys.stdout)
    return 0


def add_verify_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    v = subparsers.add_parser("verify", help="check a built image (or a stick) against the CRC32s its builder kept")
    v.add_argument("image", help="the image file, or a device such as /dev/sdX")
    v.set_defaults(func=cmd_verify)

