"""A FAT16/FAT32 file system written by hand: the EFI System Partition of the boot image.

The builder needs few things of it: a handful of files with 8.3 names, each file in ONE run of
consecutive clusters (the data file must be, so that the legacy engine reads it by LBA), and
bytes that are the same on every build (fixed dates, volume id from the caller). ``Volume``
plans where everything goes from the files' sizes alone; ``Volume.metadata()`` gives the
sectors that are not file contents (boot sector, FSInfo, the FATs, the directories), and the
caller writes each file's bytes at ``Volume.offset(path)``.

The type follows the cluster count, as every FAT reader decides it (fewer than 4085 clusters is
FAT12, fewer than 65525 FAT16, else FAT32): FAT16 with the smallest cluster that keeps the count
below 65525 (padded with free clusters up to 4085, about 2 MiB, for small models), FAT32 with
4 KiB clusters past 2 GiB. Files are laid out in the order given, the first one at the first
data cluster; directories follow them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from bootllama.errors import BootllamaError

SECTOR = 512
FAT16_MIN, FAT16_MAX = 4085, 65524  # cluster counts of a FAT16 volume
FAT32_MIN = 65525
ROOT_ENTRIES = 512  # FAT16's fixed root directory: 32 sectors
DATE = (2024 - 1980) << 9 | 1 << 5 | 1  # every entry's date: 2024-01-01, 00:00 (builds are reproducible)
ATTR_DIR, ATTR_ARCHIVE, ATTR_LABEL = 0x10, 0x20, 0x08


def short_name(name: str) -> bytes:
    """An 8.3 name as a directory entry holds it ("BOOTX64.EFI" -> b"BOOTX64 EFI")."""
    base, _, ext = name.upper().partition(".")
    if not base or len(base) > 8 or len(ext) > 3 or not (base + ext).isascii() or not (base + ext).isalnum():
        raise BootllamaError(f"{name!r} is not a plain 8.3 file name")
    return base.ljust(8).encode() + ext.ljust(3).encode()


def _entry(name: bytes, attr: int, cluster: int, size: int) -> bytes:
    return struct.pack("<11sBBBHHHHHHHI", name, attr, 0, 0, 0, DATE, DATE, cluster >> 16, 0, DATE,
                       cluster & 0xFFFF, size)


@dataclass
class _Node:
    name: str
    size: int = 0
    children: dict[str, _Node] | None = None  # a directory
    cluster: int = 0
    clusters: int = 0


@dataclass(frozen=True)
class Volume:
    """A FAT volume holding ``files`` ((path, size), "/"-separated 8.3 names), at ``lba`` on the disk."""

    files: tuple[tuple[str, int], ...]
    lba: int  # the partition's first sector (the boot sector's hidden sectors)
    label: str = "BOOTLLAMA"
    volume_id: int = 0x424C4C4D
    bits: int = field(init=False)
    spc: int = field(init=False)  # sectors per cluster
    reserved: int = field(init=False)
    fat_sectors: int = field(init=False)
    root_sectors: int = field(init=False)
    clusters: int = field(init=False)
    nodes: dict[str, _Node] = field(init=False, repr=False)
    root: _Node = field(init=False, repr=False)
    dirs: list[_Node] = field(init=False, repr=False)
    used: int = field(init=False)  # clusters in use

    def __post_init__(self) -> None:
        root = _Node("", children={})
        nodes: dict[str, _Node] = {}
        order: list[_Node] = []
        for path, size in self.files:
            parts = path.split("/")
            d = root
            for i, part in enumerate(parts):
                short_name(part)
                assert d.children is not None
                key = part.upper()
                if i == len(parts) - 1:
                    if key in d.children:
                        raise BootllamaError(f"{path} is in the file system twice")
                    d.children[key] = node = _Node(part.upper(), size)
                    nodes[path.upper()] = node
                    order.append(node)
                else:
                    d = d.children.setdefault(key, _Node(part.upper(), children={}))
                    if d.children is None:
                        raise BootllamaError(f"{path}: {part} is a file")
        dirs: list[_Node] = []

        def walk(d: _Node) -> None:
            assert d.children is not None
            for c in d.children.values():
                if c.children is not None:
                    dirs.append(c)
                    walk(c)
        walk(root)
        sizes = [n.size for n in order] + [32 * (len(d.children or {}) + 2) for d in dirs]
        for spc in (1, 2, 4, 8, 16, 32, 64):
            need = sum(max(1, -(-s // (spc * SECTOR))) for s in sizes)
            if need <= FAT16_MAX:
                bits, clusters, reserved, root_sectors = 16, max(need, FAT16_MIN), 1, ROOT_ENTRIES * 32 // SECTOR
                break
        else:
            spc = 8
            need = sum(max(1, -(-s // (spc * SECTOR))) for s in sizes) + 1  # + the root directory
            bits, clusters, reserved, root_sectors = 32, max(need, FAT32_MIN), 32, 0
            dirs.insert(0, root)
        if clusters > 0x0FFFFFF5:
            raise BootllamaError("the files are too large for a FAT32 volume")
        fat_sectors = -(-(clusters + 2) * bits // 8 // SECTOR)
        nxt = 2
        for n in [*order, *dirs]:
            size = n.size if n.children is None else 32 * (len(n.children) + 2)
            n.clusters = max(1, -(-size // (spc * SECTOR)))
            n.cluster, nxt = nxt, nxt + n.clusters
        for name, value in (("bits", bits), ("spc", spc), ("reserved", reserved), ("fat_sectors", fat_sectors),
                            ("root_sectors", root_sectors), ("clusters", clusters), ("nodes", nodes),
                            ("root", root)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "dirs", dirs)
        object.__setattr__(self, "used", nxt - 2)

    @property
    def data_start(self) -> int:
        """The first data cluster's sector, from the volume's start."""
        return self.reserved + 2 * self.fat_sectors + self.root_sectors

    @property
    def sectors(self) -> int:
        return self.data_start + self.clusters * self.spc

    def offset(self, path: str) -> int:
        """Byte offset of a file's contents from the volume's start (one run of clusters)."""
        return (self.data_start + (self.nodes[path.upper()].cluster - 2) * self.spc) * SECTOR

    def file_lba(self, path: str) -> int:
        """The disk LBA where a file's contents start."""
        return self.lba + self.offset(path) // SECTOR

    def _boot_sector(self) -> bytes:
        label = self.label.upper().ljust(11)[:11].encode()
        bpb = struct.pack("<3s8sHBHBHHBHHHII", b"\xeb\x3c\x90" if self.bits == 16 else b"\xeb\x58\x90",
                          b"BOOTLLMA", SECTOR, self.spc, self.reserved, 2,
                          ROOT_ENTRIES if self.bits == 16 else 0, self.sectors if self.sectors < 0x10000 else 0,
                          0xF8, self.fat_sectors if self.bits == 16 else 0, 63, 16, self.lba,
                          self.sectors if self.sectors >= 0x10000 else 0)
        if self.bits == 32:  # fat size, flags, version, root cluster, FSInfo, backup boot sector
            bpb += struct.pack("<IHHIHH12x", self.fat_sectors, 0, 0, self.root.cluster, 1, 6)
        bpb += struct.pack("<BBBI11s8s", 0x80, 0, 0x29, self.volume_id, label,
                           b"FAT16   " if self.bits == 16 else b"FAT32   ")
        out = bytearray(SECTOR)
        out[:len(bpb)] = bpb
        out[len(bpb):len(bpb) + 4] = b"\xfa\xf4\xeb\xfd"  # the jump's target: cli, hlt forever (not bootable)
        out[510:512] = b"\x55\xaa"
        return bytes(out)

    def _fat(self) -> bytes:
        n = self.clusters + 2
        entries = [0] * n
        eoc = 0xFFFF if self.bits == 16 else 0x0FFFFFFF
        entries[0], entries[1] = (0xFFF8, 0xFFFF) if self.bits == 16 else (0x0FFFFFF8, 0x0FFFFFFF)
        for node in [*self.nodes.values(), *self.dirs]:
            for c in range(node.cluster, node.cluster + node.clusters):
                entries[c] = c + 1
            entries[node.cluster + node.clusters - 1] = eoc
        table = struct.pack(f"<{n}{'H' if self.bits == 16 else 'I'}", *entries)
        return table + bytes(self.fat_sectors * SECTOR - len(table))

    def _directory(self, d: _Node, parent: _Node | None) -> bytes:
        assert d.children is not None
        out = b""
        if parent is None:  # the root: the volume label first
            out += _entry(self.label.upper().ljust(11)[:11].encode(), ATTR_LABEL, 0, 0)
        else:
            out += _entry(b".          ", ATTR_DIR, d.cluster, 0)
            out += _entry(b"..         ", ATTR_DIR, 0 if parent is self.root else parent.cluster, 0)
        for c in d.children.values():
            out += _entry(short_name(c.name), ATTR_ARCHIVE if c.children is None else ATTR_DIR, c.cluster,
                          c.size if c.children is None else 0)
        return out

    def metadata(self) -> list[tuple[int, bytes]]:
        """(byte offset in the volume, bytes) of everything but the files' contents; the rest of
        the volume is zeros."""
        boot = self._boot_sector()
        out = [(0, boot)]
        if self.bits == 32:
            free = self.clusters - self.used
            fsinfo = bytearray(SECTOR)
            fsinfo[0:4] = b"RRaA"
            fsinfo[484:496] = b"rrAa" + struct.pack("<II", free, 0xFFFFFFFF)
            fsinfo[510:512] = b"\x55\xaa"
            out += [(SECTOR, bytes(fsinfo)), (6 * SECTOR, boot), (7 * SECTOR, bytes(fsinfo))]
        fat = self._fat()
        out += [(self.reserved * SECTOR, fat), ((self.reserved + self.fat_sectors) * SECTOR, fat)]

        def walk(d: _Node, parent: _Node | None) -> None:
            assert d.children is not None
            data = self._directory(d, parent)
            if parent is None and self.bits == 16:
                if len(d.children) + 1 > ROOT_ENTRIES:
                    raise BootllamaError("too many files in the root directory")
                out.append(((self.reserved + 2 * self.fat_sectors) * SECTOR, data))
            else:
                out.append(((self.data_start + (d.cluster - 2) * self.spc) * SECTOR, data))
            for c in d.children.values():
                if c.children is not None:
                    walk(c, d)
        walk(self.root, None)
        return out
