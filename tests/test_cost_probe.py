"""bench/cost_probe.py patches engine.inc textually: every variant must still apply and assemble."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bootllama import image
from bootllama.checkpoint import Config
from bootllama.errors import BootllamaError

PROBE = Path(__file__).resolve().parents[1] / "bench" / "cost_probe.py"


def _probe():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cost_probe", PROBE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cost_probe = _probe()
STORIES260K = Config(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, seq_len=512)


@pytest.fixture(scope="module")
def base_used() -> int:
    return image.assemble().used


@pytest.mark.parametrize("name", list(cost_probe.VARIANTS))
def test_variant_patches_and_assembles(name: str, tmp_path: Path, base_used: int) -> None:
    base = cost_probe.engine_source()
    _, counted, patches = cost_probe.VARIANTS[name]
    src = cost_probe.write_variant(tmp_path, base, patches)
    text = (tmp_path / "engine.inc").read_text()
    assert all(new in text for _, new in patches)
    used = image.assemble(source=src).used
    if name == "base":
        assert not patches and used == base_used
    else:  # every other variant adds code and says what its per-token count counts
        assert used > base_used
        assert counted in cost_probe.counts(STORIES260K, 100)


def test_a_changed_sector_is_reported() -> None:
    with pytest.raises(BootllamaError, match="no single 'call exp"):
        cost_probe.variant_source("nop\n", cost_probe.VARIANTS["exp (softmax)"][2])


def test_counts_of_stories260k() -> None:
    # one forward pass at position 0 (tokens = 1): one attention score per head and layer
    n = cost_probe.counts(STORIES260K, 1)
    assert n["softmax_exp"] == 5 * 8
    assert n["exp"] == 5 * 8 + 5 * 172
    assert n["product"] == 5 * (64 * (128 + 64) + 3 * 64 * 172) + 64 * 512 + 2 * 40 * 8
    assert n["fdiv"] == 512 + 80
    assert n["x87_fmul"] == 3 * 64 * 11 + 5 * 172
