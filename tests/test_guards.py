"""Guard rails around the sector: what happens with a short disk, too many steps, a lying header.

* a disk image cut anywhere inside the data area the loader reads: the BIOS read fails, the
  sector prints '!' and stops, and ``qemu.boot`` raises a BootllamaError naming the disk read
  error; not one byte of story comes out (no garbage generated from a half-loaded model);
* a step count past seq_len: the builder clamps it to seq_len as run.c does, the manifest holds
  the clamped count, and the booted engine prints what run.c prints for that request;
* a checkpoint whose header promises more (or less) than the file holds: ``bootllama build``
  refuses it with one error line and writes nothing.

Each boot is a small model or a few steps, so the whole file takes a few seconds.
"""

from __future__ import annotations

import contextlib
import io
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import SMALL

from bootllama import image, pcs
from bootllama.checkpoint import legacy_size, load_checkpoint, packaged_path, random_model, write_legacy
from bootllama.cli import main
from bootllama.errors import BootllamaError
from bootllama.pcs import qemu
from bootllama.reference import Reference, generate
from bootllama.tokenizer import Tokenizer

CKPT = packaged_path("stories260K.bin")
TOK = packaged_path("tok512.bin")
STEPS = 8
STEPS_FIELD = image.SECTOR - image.FIELDS + 72  # M_STEPS: the manifest's 19th dword field


@pytest.fixture(scope="module")
def engine() -> image.Engine:
    return image.assemble()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, engine: image.Engine) -> tuple[image.Image, bytes]:
    """A short stories260K run (STEPS steps): the image and the disk bytes."""
    img = image.build_image(CKPT, TOK, tmp_path_factory.mktemp("guards") / "whole.img", steps=STEPS,
                            engine=engine)
    return img, img.path.read_bytes()


def _boot(path: Path, lay: image.Layout) -> tuple[bytes, list[bytes]]:
    seen: list[bytes] = []
    r = qemu.boot(path, lay.memory_mib, lay.chunks, timeout=60, on_bytes=seen.append)
    return r.text, seen


def _cut_points(lay: image.Layout) -> dict[str, int]:
    """Byte lengths to cut the disk to, each short of the data the loader reads."""
    d = lay.data_lba * image.SECTOR
    tok = d + lay.tokenizer_addr - image.DATA
    read_end = (lay.data_lba + lay.chunks * image.CHUNK) * image.SECTOR
    return {
        "in the first chunk (manifest and checkpoint header)": d + 10 * image.SECTOR,
        "mid-checkpoint, mid-sector": d + 200 * image.SECTOR + 100,
        "inside the tokenizer": tok + 3 * image.SECTOR,
        "before the prompt sector": lay.last_lba * image.SECTOR,
        "one sector short of the last chunk": read_end - image.SECTOR,
    }


CUTS = ["in the first chunk (manifest and checkpoint header)", "mid-checkpoint, mid-sector",
        "inside the tokenizer", "before the prompt sector", "one sector short of the last chunk"]


@pytest.mark.parametrize("where", CUTS)
def test_truncated_disk_is_a_disk_error_not_text(tmp_path: Path, built: tuple[image.Image, bytes],
                                                 where: str) -> None:
    img, data = built
    lay = img.layout
    cut = _cut_points(lay)[where]
    assert lay.data_lba * image.SECTOR < cut < len(data)
    short = tmp_path / "short.img"
    short.write_bytes(data[:cut])
    seen: list[bytes] = []
    with pytest.raises(BootllamaError, match="disk read error"):
        qemu.boot(short, lay.memory_mib, lay.chunks, timeout=60, on_bytes=seen.append)
    assert seen == [], f"story bytes came out of a half-loaded model: {b''.join(seen)[:80]!r}"


@pytest.mark.parametrize("where", CUTS)
def test_truncated_disk_is_a_disk_error_on_v86_too(tmp_path: Path, built: tuple[image.Image, bytes],
                                                   where: str) -> None:
    # v86 itself answers a read past the end with "busy" for ever (the run hung until its
    # timeout); the harness makes the read fail as QEMU does, so the sector's !disk comes at once
    img, data = built
    short = tmp_path / "short.img"
    short.write_bytes(data[:_cut_points(img.layout)[where]])
    seen: list[bytes] = []
    # a hang would end in "did not finish within 30 s" (the !disk takes about 2 s)
    with pytest.raises(BootllamaError, match=r"stopped on v86: !disk \(a disk read error"):
        pcs.boot("v86", short, img.layout, timeout=30, on_bytes=seen.append)
    assert seen == []


def test_disk_cut_after_the_last_chunk_still_boots(tmp_path: Path, built: tuple[image.Image, bytes]) -> None:
    # the control for the cuts above: only the cylinder padding (for Bochs) is gone
    img, data = built
    lay = img.layout
    read_end = (lay.data_lba + lay.chunks * image.CHUNK) * image.SECTOR
    assert read_end < len(data)
    short = tmp_path / "short.img"
    short.write_bytes(data[:read_end])
    model = load_checkpoint(CKPT)
    want = generate(Reference(model), Tokenizer.load(TOK, model.config.vocab_size), None, steps=STEPS)
    text, _ = _boot(short, lay)
    assert text == want
    assert pcs.boot("v86", short, lay, timeout=60).text == want


# --- steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10**6, 513, 0, -5])
def test_steps_clamp_to_seq_len_like_runc(tmp_path: Path, engine: image.Engine, steps: int) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=steps, engine=engine)
    seq_len = img.layout.config.seq_len
    assert img.steps == seq_len == 512
    man = img.path.read_bytes()[img.layout.data_lba * image.SECTOR:][: image.SECTOR]
    assert struct.unpack_from("<I", man, STEPS_FIELD)[0] == seq_len


def test_steps_within_seq_len_are_kept(tmp_path: Path, engine: image.Engine) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=7, engine=engine)
    man = img.path.read_bytes()[img.layout.data_lba * image.SECTOR:][: image.SECTOR]
    assert img.steps == 7 and struct.unpack_from("<I", man, STEPS_FIELD)[0] == 7


def test_huge_step_count_boots_to_seq_len(tmp_path: Path, engine: image.Engine) -> None:
    # a small model (seq_len 64) runs its whole context in a second; run.c stops at seq_len
    model = random_model(SMALL, seed=7)
    ckpt = tmp_path / "small.bin"
    write_legacy(model, ckpt)
    img = image.build_image(ckpt, TOK, tmp_path / "a.img", prompt="Once", steps=10**6, engine=engine)
    assert img.steps == SMALL.seq_len
    want = generate(Reference(load_checkpoint(ckpt)), Tokenizer.load(TOK, SMALL.vocab_size), "Once",
                    steps=10**6)
    text, _ = _boot(img.path, img.layout)
    assert text == want


# --- a header that lies about the file -----------------------------------------------------


def _cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue()


@pytest.mark.parametrize(("field", "index", "value"), [
    ("dim", 0, 64),
    ("hidden_dim", 1, 96),
    ("n_layers", 2, 3),
    ("vocab_size", 5, 1024),
    ("vocab_size (separate classifier)", 5, -512),
    ("seq_len", 6, 128),
])
def test_header_promising_more_than_the_file_holds(tmp_path: Path, field: str, index: int, value: int) -> None:
    ckpt = tmp_path / "lying.bin"
    write_legacy(random_model(SMALL, seed=5), ckpt)
    data = bytearray(ckpt.read_bytes())
    struct.pack_into("<i", data, 4 * index, value)
    ckpt.write_bytes(data)
    out = tmp_path / "x.img"
    code, err = _cli(["build", str(ckpt), "-z", str(TOK), "-o", str(out)])
    assert code == 1
    assert err.startswith("bootllama: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert f"file is {len(data)} bytes but its legacy header implies" in err and "(truncated?)" in err, err
    assert not out.exists() and not list(tmp_path.glob(".x.img.*"))


def test_header_promising_less_than_the_file_holds(tmp_path: Path) -> None:
    ckpt = tmp_path / "long.bin"
    write_legacy(random_model(replace(SMALL, shared_classifier=False), seed=6), ckpt)
    data = bytearray(ckpt.read_bytes())
    struct.pack_into("<i", data, 20, 512)  # claims the classifier is shared: the file has a spare one
    ckpt.write_bytes(data)
    assert legacy_size(SMALL) < len(data)
    out = tmp_path / "x.img"
    code, err = _cli(["build", str(ckpt), "-z", str(TOK), "-o", str(out)])
    assert code == 1 and err.count("\n") == 1 and "legacy header implies" in err, err
    assert not out.exists()


# --- damaged data: the engine's data check -----------------------------------------------


def _flip_points(img: image.Image) -> dict[str, int]:
    """Byte offsets in the image, one in each part of the data area the engine reads."""
    lay = img.layout
    d = lay.data_lba * image.SECTOR
    return {
        "header n_layers": d + image.SECTOR + 8,  # the hang: n_layers 133
        "a weight": d + image.SECTOR + 28 + 4 * 1000,
        "a tokenizer length": d + lay.tokenizer_addr - image.DATA + 4 + 4,
        "the steps field": d + STEPS_FIELD,
        "a RoPE value": d + lay.rope_addr - image.DATA + 64,
    }


def test_intact_image_sums_to_zero(built: tuple[image.Image, bytes]) -> None:
    img, _ = built
    assert image.data_sum(img.path, img.layout) == 0
    # an area of zeros (a data LBA that points at nothing) does not pass: the sum starts at DATA
    assert image.data_fixup(0) != 0 and (image.DATA + image.data_fixup(0)) & 0xFFFFFFFF == 0


@pytest.mark.parametrize("where", ["header n_layers", "a weight", "a tokenizer length", "the steps field",
                                   "a RoPE value"])
def test_damaged_data_gets_the_data_message(tmp_path: Path, built: tuple[image.Image, bytes], where: str) -> None:
    img, data = built
    lay = img.layout
    at = _flip_points(img)[where]
    bad = bytearray(data)
    bad[at] ^= 0x85 if where == "header n_layers" else 0x01  # 5 -> 128 + 5 layers; or one low bit
    path = tmp_path / "bad.img"
    path.write_bytes(bytes(bad))
    assert image.data_sum(path, lay) != 0
    cmd = qemu.qemu_command(path, lay.memory_mib, "tcg")
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (13, b"." * lay.chunks + b"!data")  # exit code 6
    seen: list[bytes] = []
    with pytest.raises(BootllamaError, match=r"!data \(the data loaded from the disk is damaged"):
        qemu.boot(path, lay.memory_mib, lay.chunks, timeout=60, on_bytes=seen.append)
    assert b"".join(seen) == b"!data"  # (after the last dot it streams as text would; the exit code tells)
