"""The boot-sector engine: its size, the image it lives in, and the text it prints in QEMU."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from bootllama import image, probe
from bootllama.checkpoint import Config, legacy_layout, load_checkpoint, packaged_path, random_model, write_legacy
from bootllama.cli import main
from bootllama.errors import BootllamaError
from bootllama.pcs import qemu
from bootllama.reference import Reference, Sampler, generate
from bootllama.tokenizer import Tokenizer

CKPT = packaged_path("stories260K.bin")
TOK = packaged_path("tok512.bin")


@pytest.fixture(scope="module")
def engine() -> image.Engine:
    return image.assemble()


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_checkpoint(CKPT)


def boot(img: image.Image) -> bytes:
    return qemu.boot(img.path, img.layout.memory_mib, img.layout.chunks, timeout=300).text


def test_size_table_adds_up(engine: image.Engine) -> None:
    names = [n for n, _ in engine.sizes]
    for routine in ("start", "mv", "rmsnorm", "layer", "softmax", "print", "signature"):
        assert routine in names
    assert engine.code[510:512] == b"\x55\xaa"
    # every byte the table does not count is padding
    assert engine.used <= len(engine.code)
    assert engine.sectors == len(engine.code) // 512
    # every routine belongs to a part, and the parts add up to the whole
    for defines in ((), ("SAMPLING",)):
        eng = image.assemble(defines) if defines else engine
        assert sum(n for _, n in image.part_sizes(eng)) == eng.used


def test_forward_pass_alone_outgrows_a_sector(engine: image.Engine) -> None:
    # why the engine is more than one sector (README, "Size"): the forward pass's routines
    # alone take more than the 510 bytes a boot sector has besides its signature
    parts = dict(image.part_sizes(engine))
    assert parts["forward pass"] > 510


def test_image_holds_files_unchanged(tmp_path: Path, engine: image.Engine) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", prompt="Hi", steps=10, engine=engine)
    data = (tmp_path / "a.img").read_bytes()
    lay = img.layout
    # the engine's sectors, sector 0 made an MBR (tests/test_pc_checks.py reads its fields)
    assert data[:440] == engine.code[:440] and data[510 : len(engine.code)] == engine.code[510:]
    man = data[lay.data_lba * 512 : lay.data_lba * 512 + 512]
    # its first 384 bytes: the verify record (bootllama verify), which the engine never reads
    record = image.unpack_record(man)
    assert record is not None and record.data_lba == lay.data_lba
    assert [p.name for p in record.parts][:5] == ["engine", "UEFI engine", "manifest", "checkpoint", "tokenizer"]
    ck = CKPT.read_bytes()
    off = (lay.checkpoint_addr - image.DATA) + lay.data_lba * 512
    assert data[off : off + len(ck)] == ck
    tk = TOK.read_bytes()
    off = (lay.tokenizer_addr - image.DATA) + lay.data_lba * 512
    assert data[off : off + len(tk)] == tk
    # the address table names the tensors where the legacy layout puts them
    fields = man[384:]
    table_addr = struct.unpack_from("<I", fields, 128 - 36)[0]  # M_TAB, bp-36
    assert table_addr == lay.table_addr
    off = (table_addr - image.DATA) + lay.data_lba * 512
    # forward's order: v, k, then q, each matrix's rows before its address
    rms_att, v_rows, wv, k_rows, wk, q_rows, wq = struct.unpack_from("<7I", data, off)
    c = lay.config
    assert (v_rows, k_rows, q_rows) == (c.kv_dim, c.kv_dim, c.dim)
    for addr, name in ((wv, "wv"), (wk, "wk"), (wq, "wq")):
        assert addr == lay.checkpoint_addr + legacy_layout(lay.config)[name][0]
    assert rms_att == lay.checkpoint_addr + legacy_layout(lay.config)["rms_att_weight"][0]
    assert len(data) % (16 * 63 * 512) == 0


def test_default_story_matches_oracle(tmp_path: Path, engine: image.Engine) -> None:
    # the quick suite's one boot of the default image on QEMU's IDE PC (the image is the dual
    # one: test_pcs.py and test_uefi.py boot it there too, behind the slow marker)
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", engine=engine)
    result = qemu.boot(img.path, img.layout.memory_mib, img.layout.chunks, timeout=300)
    assert result.text == shared_file("oracles/stories260K_greedy.txt").read_bytes()
    assert result.exit_status == qemu.EXIT_DONE
    assert result.tokens == 346  # forward passes, counted on port 0xE9
    assert result.dots == b"." * img.layout.chunks


@pytest.mark.parametrize(("prompt", "steps"), [
    ("Once upon a time, a little dog", 50),
    ("Tom and Sue", 24),
    ("", 7),
])
def test_prompts_match_reference(tmp_path: Path, engine: image.Engine, model, prompt: str, steps: int) -> None:  # type: ignore[no-untyped-def]
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", prompt=prompt, steps=steps, engine=engine)
    tok = Tokenizer.load(TOK, model.config.vocab_size)
    assert boot(img) == generate(Reference(model), tok, prompt, steps=steps)


@pytest.mark.parametrize(("temperature", "seed", "prompt", "steps"), [
    (1.0, 42, None, 120),
    (0.7, 7, "Tom had a", 90),
    (1.3, 123456789, None, 60),
    (0.25, 2**40 + 3, "Lily", 60),
])
def test_sampling_matches_reference(tmp_path: Path, model, temperature: float, seed: int,  # type: ignore[no-untyped-def]
                                    prompt: str | None, steps: int) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", prompt=prompt, steps=steps,
                            temperature=temperature, seed=seed)
    assert "sample" in img.engine.symbols
    tok = Tokenizer.load(TOK, model.config.vocab_size)
    want = generate(Reference(model), tok, prompt, steps=steps,
                    sampler=Sampler(model.config.vocab_size, temperature, 1.0, seed))
    assert boot(img) == want


def test_run_counts_forward_passes(tmp_path: Path, engine: image.Engine) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", prompt="Hi", steps=17, engine=engine)
    result = qemu.boot(img.path, img.layout.memory_mib, img.layout.chunks, timeout=120)
    assert result.tokens == 17 and result.tok_per_s > 0


def test_intermediates_bit_identical() -> None:
    rows = probe.compare(CKPT, TOK, steps=3)
    bad = [(name, d) for name, d in rows if d != 0.0]
    assert not bad, f"first routine that differs: {bad[0]}"


@pytest.mark.slow  # 15 to 60 s (a 59 MiB load, 30 CPU-seconds): the quick sweep has a 32,000-piece vocabulary
def test_15m_shape_matches_reference(tmp_path: Path, engine: image.Engine) -> None:
    big_tok = shared_file("models/tokenizer.bin")
    cfg = Config(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, seq_len=256)
    m = random_model(cfg, seed=15)
    path = tmp_path / "m15.bin"
    write_legacy(m, path)
    img = image.build_image(path, big_tok, tmp_path / "a.img", prompt="Once upon", steps=24, engine=engine)
    tok = Tokenizer.load(big_tok, cfg.vocab_size)
    assert boot(img) == generate(Reference(load_checkpoint(path)), tok, "Once upon", steps=24)


@pytest.mark.parametrize("cfg", [
    Config(dim=64, hidden_dim=24, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, seq_len=48),
    pytest.param(Config(dim=1024, hidden_dim=16, n_layers=1, n_heads=8, n_kv_heads=4, vocab_size=512, seq_len=16,
                        shared_classifier=False), marks=pytest.mark.slow),
], ids=["64-24", "1024-16"])
def test_hidden_dim_smaller_than_dim(tmp_path: Path, engine: image.Engine, cfg: Config) -> None:
    # run.c runs such shapes (issue 19, item 12); xb holds max(dim, hidden_dim) floats
    m = random_model(cfg, seed=12)
    path = tmp_path / "narrow.bin"
    write_legacy(m, path)
    img = image.build_image(path, TOK, tmp_path / "a.img", prompt="Once upon", steps=cfg.seq_len, engine=engine)
    tok = Tokenizer.load(TOK, cfg.vocab_size)
    assert boot(img) == generate(Reference(load_checkpoint(path)), tok, "Once upon", steps=cfg.seq_len)


def test_build_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.img"
    assert main(["build", "-o", str(out), "-i", "a " * 600]) == 1
    assert "context" in capsys.readouterr().err
    assert not out.exists()
    assert main(["build", "-o", str(tmp_path / "p.img"), "-t", "0.8", "-p", "0.9"]) == 0  # top-p builds (-DTOPP)
    capsys.readouterr()
    trunc = tmp_path / "t.bin"
    trunc.write_bytes(CKPT.read_bytes()[:5000])
    assert main(["build", str(trunc), "-z", str(TOK), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_build_refuses_models_past_memory() -> None:
    cfg = Config(dim=1024, hidden_dim=1024, n_layers=40, n_heads=8, n_kv_heads=8, vocab_size=32000, seq_len=1024)
    with pytest.raises(BootllamaError, match="memory"):
        image.plan(cfg, 1, 3 << 30, 500_000, 1)


def test_missing_nasm(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["build", "-o", str(tmp_path / "x.img")]) == 1
    assert "nasm not found" in capsys.readouterr().err


def test_disk_error_is_reported(tmp_path: Path, engine: image.Engine) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", engine=engine)
    # cut the disk inside the checkpoint: the BIOS read fails, the sector prints '!' and stops
    with open(img.path, "r+b") as f:
        f.truncate(img.layout.data_lba * 512 + 200 * 512)
    with pytest.raises(BootllamaError, match="disk read error"):
        boot(img)


def test_kv_layout_is_position_major(model) -> None:  # type: ignore[no-untyped-def]
    # the probe reads the cache as [pos][layer][v|k][kv_dim]; make sure the plan reserves it,
    # and dim floats more: the last layer's q at the last position waits after the cache
    lay = image.plan(model.config, 1, CKPT.stat().st_size, TOK.stat().st_size, 0)
    c = model.config
    assert lay.memory_end - lay.kv_addr == (c.seq_len * c.n_layers * 2 * c.kv_dim + c.dim) * 4
    assert np.dtype("<f4").itemsize == 4
