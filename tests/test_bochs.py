"""The engine on a second PC: Bochs (its own CPU interpreter, BIOS, disk controller and UART)
must print the same story as run.c."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from bootllama import image
from bootllama.checkpoint import packaged_path
from bootllama.errors import BootllamaError
from bootllama.pcs import bochs

ORACLE = Path(__file__).resolve().parents[2] / "shared/oracles/stories260K_greedy.txt"
CKPT = packaged_path("stories260K.bin")
TOK = packaged_path("tok512.bin")
TIMEOUT = 60.0

needs_bochs = pytest.mark.skipif(shutil.which("bochs") is None and shutil.which("bochs-bin") is None,
                                 reason="bochs is not installed (scripts/setup.sh)")


@pytest.fixture(scope="module")
def oracle() -> bytes:
    if not ORACLE.is_file():
        pytest.skip(f"{ORACLE} is not present (shared/ is expected beside the repository)")
    return ORACLE.read_bytes()


@pytest.fixture(scope="module")
def engine() -> image.Engine:
    return image.assemble()


@pytest.mark.slow  # 20 to 60 s; the quick suite has Bochs' 12-step story (below, and test_pcs.py)
@needs_bochs
def test_bochs_prints_the_oracle_story(tmp_path: Path, engine: image.Engine, oracle: bytes) -> None:
    # 400 bytes are the story's first 168 tokens: about 10 s in Bochs (the whole story, 345
    # tokens, takes 25 s: attention grows with the position); 180 steps leave room
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=180, engine=engine)
    text = bochs.boot_bochs(img.path, img.layout, max_bytes=400, timeout=TIMEOUT)
    assert text == oracle[:400]


@needs_bochs
def test_bochs_returns_a_story_that_ends_early(tmp_path: Path, engine: image.Engine, oracle: bytes) -> None:
    # 12 steps end the story before max_bytes: the harness sees the sector's exit in the log
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=12, engine=engine)
    text = bochs.boot_bochs(img.path, img.layout, max_bytes=10_000, timeout=TIMEOUT)
    assert len(text) > 20
    assert text.endswith(b"\n")
    assert oracle.startswith(text[:-1])


@needs_bochs
def test_bochs_reports_a_disk_error(tmp_path: Path, engine: image.Engine) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=4, engine=engine)
    lay = img.layout
    # a one-cylinder disk ends inside the checkpoint: the BIOS read fails, the sector prints '!'
    cylinder = 16 * 63
    assert lay.disk_sectors > cylinder
    with open(img.path, "r+b") as f:
        f.truncate(cylinder * image.SECTOR)
    lay = dataclasses.replace(lay, disk_sectors=cylinder)
    with pytest.raises(BootllamaError, match=r"disk read error.*function 42"):
        bochs.boot_bochs(img.path, lay, max_bytes=1000, timeout=TIMEOUT)


def test_bochs_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BootllamaError, match=r"bochs not found: install bochs bochsbios vgabios"):
        bochs.bochs_binary()


def test_bochs_bad_input(tmp_path: Path, engine: image.Engine) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=4, engine=engine)
    with pytest.raises(BootllamaError, match="max_bytes"):
        bochs.boot_bochs(img.path, img.layout, max_bytes=0, timeout=10)
    with pytest.raises(BootllamaError, match="timeout"):
        bochs.boot_bochs(img.path, img.layout, max_bytes=10, timeout=0)
    with pytest.raises(BootllamaError, match="does not exist"):
        bochs.boot_bochs(tmp_path / "missing.img", img.layout, max_bytes=10, timeout=10)
    short = tmp_path / "short.img"
    short.write_bytes(img.path.read_bytes()[:-image.SECTOR])
    with pytest.raises(BootllamaError, match="rebuild it"):
        bochs.boot_bochs(short, img.layout, max_bytes=10, timeout=10)


def test_bochsrc_geometry(tmp_path: Path, engine: image.Engine) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=4, engine=engine)
    rc = bochs.bochsrc("d.img", img.layout, "c.out", "b.log")
    cyl = img.layout.disk_sectors // (16 * 63)
    assert f"cylinders={cyl}, heads=16, spt=63" in rc
    assert f"megs: {img.layout.memory_mib}\n" in rc
