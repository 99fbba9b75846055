"""bench/speedup.py's old image: laid out for the old engine's 2 sectors, its code unpatched, the same data area."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from bootllama import image
from bootllama.checkpoint import packaged_path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _speedup():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("speedup", BENCH / "speedup.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


speedup = _speedup()


def _has_old_commit() -> bool:
    proc = subprocess.run(["git", "-C", str(BENCH), "cat-file", "-e", f"{speedup.OLD_COMMIT}^{{commit}}"],
                          capture_output=True)
    return proc.returncode == 0


@pytest.mark.skipif(not _has_old_commit(), reason="the old engine's commit is not in this clone's history")
def test_old_image_layout(tmp_path: Path) -> None:
    ckpt, tok = packaged_path("stories260K.bin"), packaged_path("tok512.bin")
    old_engine, old = speedup.build_old(speedup.OLD_COMMIT, ckpt, tok, tmp_path)
    new = image.build_image(ckpt, tok, tmp_path / "new.img")
    assert old_engine.sectors == 2 and old.layout.data_lba == 2
    # today's image: the data area is the ESP's file, at M_DLBA
    assert new.layout.data_lba == new.layout.volume().file_lba(image.DATA_FILE) > image.MANIFEST_LBA
    assert old.path.read_bytes()[:2 * image.SECTOR] == old_engine.code  # the old builder's own image
    assert speedup.data_area(old) == speedup.data_area(new)
    # the same sectors read to a chunk (today's data area holds the piece directory more: 4 bytes
    # per vocabulary entry): the old engine's 32 KiB chunks (64 sectors), today's image.CHUNK
    assert 0 <= new.layout.chunks * image.CHUNK - old.layout.chunks * 64 <= image.CHUNK


def test_bad_commit_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(speedup.BootllamaError, match="git show"):
        speedup.old_source("0" * 40, tmp_path)
