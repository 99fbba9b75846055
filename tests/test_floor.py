"""The floor (floor.asm, engine.inc with -DFLOOR): the fewest bytes that print llama2.c's default
stories260K story, byte for byte, under QEMU; its budget and its size table."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shared_file

from bootllama import image
from bootllama.checkpoint import packaged_path
from bootllama.cli import main
from bootllama.errors import BootllamaError
from bootllama.pcs import qemu

CKPT = packaged_path("stories260K.bin")
TOK = packaged_path("tok512.bin")
# code bytes (image.Engine.code_bytes): a change that grows the floor fails here
FLOOR_BUDGET = 598


@pytest.fixture(scope="module")
def floor() -> image.Engine:
    return image.assemble(("FLOOR",), image.asm_source().with_name("floor.asm"))


def test_floor_within_budget(floor: image.Engine) -> None:
    assert floor.code_bytes <= FLOOR_BUDGET
    assert floor.code[image.MBR_SIGNATURE_AT:510] == bytes(70)  # the MBR's fields are the builder's


def test_floor_size_table_shows_its_parts(floor: image.Engine) -> None:
    parts = dict(image.part_sizes(floor))
    assert sum(parts.values()) == floor.used
    assert {"loader", "generate loop", "printing", "forward pass"} <= parts.keys()
    assert "guards" not in parts and "sampling" not in parts  # what the floor drops
    table = image.format_size_table(floor)
    assert f"code bytes     {floor.code_bytes}" in table


def test_floor_tells_the_default_story(tmp_path: Path) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "floor.img", floor=True)
    # no progress dots: the floor writes only the story to COM1
    text = qemu.boot(img.path, img.layout.memory_mib, 0, timeout=300).text
    assert text == shared_file("oracles/stories260K_greedy.txt").read_bytes()


def test_floor_refuses_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BootllamaError, match="default story only"):
        image.build_image(CKPT, TOK, tmp_path / "f.img", prompt="Hi", floor=True)
    assert main(["build", "--floor", "-n", "10", "-o", str(tmp_path / "f.img")]) != 0
    assert "--floor" in capsys.readouterr().err
    assert not (tmp_path / "f.img").exists()
    assert main(["build", "--floor", "-o", str(tmp_path / "f.img")]) == 0
    assert "code bytes" in capsys.readouterr().err
