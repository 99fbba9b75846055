"""run.c's flag parsing: -s and -n through atoi (32-bit wrap, sign extension into the 64-bit
seed), -t/-p through atof into floats, top-p outside [0, 1] -> 0.9, -p 0 and -p 1 as plain
sampling in the reference and the engine, and the odd-head-size message."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL

from bootllama import image
from bootllama.checkpoint import Config, legacy_size, load_checkpoint, random_model, write_legacy
from bootllama.cli import main
from bootllama.reference import Reference, Sampler, generate
from bootllama.runc_args import atof, atoi, is_top_p, resolve_seed, resolve_temperature, resolve_topp
from bootllama.tokenizer import Tokenizer


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("42", 42), ("+7", 7), (" 12 ", 12), ("-1", -1),
    ("4294967297", 1),  # 2^32 + 1 wraps to 1
    ("4294967296", 0), ("2147483648", -(2**31)), ("-2147483649", 2**31 - 1),
    ("99999999999999999999", -1),  # strtol clamps to LONG_MAX, whose low 32 bits are -1
    ("-99999999999999999999", 0),  # LONG_MIN: low 32 bits 0
])
def test_atoi_is_glibcs(text: str, value: int) -> None:
    assert atoi(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1e3", "1.5", "0x10", "--1"])
def test_atoi_refuses_what_is_not_an_integer(text: str) -> None:
    with pytest.raises(ValueError):
        atoi(text)


def test_atof_reads_what_strtod_reads() -> None:
    assert atof("0.8") == 0.8 and atof(" -3 ") == -3.0 and atof("1e-3") == 1e-3 and atof(".5") == 0.5
    assert atof("0x1.8p1") == 3.0 and atof("-0x10") == -16.0 and atof("INF") == float("inf")
    assert np.isnan(atof("nan"))
    for bad in ("", "abc", "1,5", "1_0"):
        with pytest.raises(ValueError):
            atof(bad)


def test_seed_sign_extends_and_zero_means_the_clock() -> None:
    assert resolve_seed(atoi("-1")) == (2**64 - 1, False)
    assert resolve_seed(atoi("-2147483648")) == (2**64 - 2**31, False)
    assert resolve_seed(atoi("4294967297")) == (1, False)
    assert resolve_seed(atoi("4294967296"))[1]  # wraps to 0: the clock


def test_temperature_and_topp_as_runc_holds_them() -> None:
    assert resolve_temperature(-2.0) == 0.0
    assert resolve_temperature(1e-50) == 0.0  # a float: underflows to 0, greedy
    assert resolve_temperature(0.8) == float(np.float32(0.8))
    assert resolve_topp(1.5) == resolve_topp(-0.1) == float(np.float32(0.9))
    assert resolve_topp(0.0) == 0.0 and resolve_topp(1.0) == 1.0
    assert not is_top_p(1.0, 0.0) and not is_top_p(1.0, 1.0) and is_top_p(1.0, 0.5) and not is_top_p(0.0, 0.5)


# --- the reference (generate) -----------------------------------------------------------


def gen(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> bytes:
    code = main(["generate", *args])
    out, err = capsysbinary.readouterr()
    assert code == 0, err
    return out


def test_generate_wraps_seed_and_steps(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    base = ["-t", "1", "-n", "40"]
    one = gen(capsysbinary, *base, "-s", "1")
    assert gen(capsysbinary, *base, "-s", "4294967297") == one
    assert gen(capsysbinary, "-t", "1", "-s", "5", "-n", "4294967297") == gen(capsysbinary, "-t", "1", "-s", "5",
                                                                                "-n", "1")
    assert gen(capsysbinary, *base, "-s", "2") != one


def test_generate_negative_seed_is_the_sign_extended_rng_state(capsysbinary: pytest.CaptureFixture[bytes],
                                                              stories260k: Path, tok512: Path) -> None:
    out = gen(capsysbinary, "-t", "1", "-n", "40", "-s", "-3")
    ref = Reference(load_checkpoint(stories260k))
    want = generate(ref, Tokenizer.load(tok512, 512), None, steps=40, sampler=Sampler(512, 1.0, 1.0, 2**64 - 3))
    assert out == want


def test_generate_negative_steps_mean_the_whole_context(tmp_path: Path, tok512: Path,
                                                        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    path = tmp_path / "small.bin"
    write_legacy(random_model(SMALL, seed=1), path)
    whole = gen(capsysbinary, str(path), "-z", str(tok512), "-n", "0")
    assert gen(capsysbinary, str(path), "-z", str(tok512), "-n", "-5") == whole
    assert gen(capsysbinary, str(path), "-z", str(tok512), "-n", "3") != whole


def test_generate_p0_and_p1_are_plain_sampling(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    base = ["-t", "1", "-s", "7", "-n", "60"]
    plain = gen(capsysbinary, *base, "-p", "1")
    assert gen(capsysbinary, *base, "-p", "0") == plain
    assert gen(capsysbinary, *base, "-p", "1.5") == gen(capsysbinary, *base, "-p", "0.9")
    assert gen(capsysbinary, *base, "-p", "0.9") != plain


@pytest.mark.parametrize(("flag", "value"), [("-s", "abc"), ("-n", "1.5"), ("-t", "hot"), ("-p", "")])
def test_non_numbers_are_one_line_errors(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["generate", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {flag}" in err and "Traceback" not in err


# --- the engine's image ----------------------------------------------------------------


def manifest_fields(img: image.Image) -> bytes:
    with open(img.path, "rb") as f:
        f.seek(img.layout.data_lba * 512 + 384)
        return f.read(128)


def build(tmp_path: Path, *args: str) -> tuple[int, Path]:
    out = tmp_path / "x.img"
    return main(["build", "-o", str(out), *args]), out


def test_build_takes_runcs_seed_and_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[image.Image] = []
    real = image.build_image

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        built.append(real(*a, **k))
        return built[-1]

    monkeypatch.setattr(image, "build_image", spy)
    for args, seed, steps in ((["-s", "4294967297", "-n", "4294967297"], 1, 1),
                              (["-s", "-1", "-n", "-7"], 2**64 - 1, 512)):
        code, _ = build(tmp_path, "-t", "1", *args)
        assert code == 0
        fields = manifest_fields(built[-1])
        assert struct.unpack_from("<Q", fields, 128 - 48)[0] == seed  # M_SEED, bp-48
        assert struct.unpack_from("<I", fields, 128 - 56)[0] == steps  # M_STEPS, bp-56


@pytest.mark.parametrize("p", ["0", "1", "1.0", "0.0"])
def test_build_accepts_plain_sampling(tmp_path: Path, p: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = build(tmp_path, "-t", "0.8", "-s", "3", "-p", p)
    assert code == 0 and out.exists(), capsys.readouterr().err


@pytest.mark.parametrize("p", ["0.5", "0.9", "7", "-1"])  # 7 and -1 become 0.9, as in run.c
def test_build_takes_top_p(tmp_path: Path, p: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image with 0 < p < 1 (and a temperature) carries top-p (-DTOPP) and run.c's float p in its talk block."""
    built: list[image.Image] = []
    real = image.build_image
    monkeypatch.setattr(image, "build_image", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    code, out = build(tmp_path, "-t", "0.8", "-p", p)
    assert code == 0 and out.exists()
    img = built[0]
    assert "TOPP" in img.engine.defines and "topp" in img.engine.symbols
    data = out.read_bytes()
    at = img.layout.data_lba * image.SECTOR + img.layout.talk_addr - image.DATA
    assert struct.unpack_from("<f", data, at)[0] == np.float32(0.5 if p == "0.5" else 0.9)
    assert struct.unpack_from("<I", data, at + 4)[0] >= img.layout.kv_addr  # the scratch: RAM after the cache


def test_build_with_top_p_but_greedy_is_fine(tmp_path: Path) -> None:
    assert build(tmp_path, "-p", "0.5")[0] == 0


# --- odd head size ---------------------------------------------------------------------


def test_odd_head_size_gets_its_own_message(tmp_path: Path, tok512: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = Config(dim=30, hidden_dim=48, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=512, seq_len=16)
    path = tmp_path / "odd.bin"
    header = struct.pack("<7i", *config.header_ints())
    path.write_bytes(header + bytes(legacy_size(config) - len(header)))
    for cmd in (["generate", str(path), "-z", str(tok512)], ["build", str(path), "-z", str(tok512), "-o",
                                                              str(tmp_path / "o.img")]):
        assert main(cmd) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "head_size=15" in err and "odd" in err, err
        assert "magic" not in err and "not a valid legacy header" not in err
