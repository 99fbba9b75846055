"""bench/cost_probe.py patches sector.asm textually: every variant must still apply and assemble."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bootllama import image

PROBE = Path(__file__).resolve().parents[1] / "bench" / "cost_probe.py"


def _probe():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cost_probe", PROBE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cost_probe = _probe()


@pytest.fixture(scope="module")
def base_used() -> int:
    return image.assemble().used


@pytest.mark.parametrize("name", list(cost_probe.VARIANTS))
def test_variant_patches_and_assembles(name: str, tmp_path: Path, base_used: int) -> None:
    base = image.asm_source().read_text()
    _, patches = cost_probe.VARIANTS[name]
    src = tmp_path / "sector.asm"
    src.write_text(cost_probe.variant_source(base, patches))
    text = src.read_text()
    assert all(new in text for _, new in [cost_probe.LOADER, *patches])
    # every variant adds code (the loader line is one byte longer); none removes any
    assert image.assemble(source=src).used > base_used
