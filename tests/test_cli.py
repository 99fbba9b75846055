from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import SMALL, shared_file, write_v1, write_v2

from bootllama import __version__
from bootllama.checkpoint import load_checkpoint, random_model, write_legacy
from bootllama.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "bootllama.cli", *args], capture_output=True, env=env, cwd=cwd,
                          timeout=120)


def call(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, bytes, str]:
    code = main(list(args))
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1
    assert err.startswith("bootllama: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


# --- generate --------------------------------------------------------------------------


def test_generate_without_arguments_prints_the_oracle() -> None:
    oracle = shared_file("oracles/stories260K_greedy.txt").read_bytes()
    proc = run_cli("generate")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == oracle
    assert re.fullmatch(rb"achieved tok/s: \d+\.\d{6}\n", proc.stderr), proc.stderr


def test_clock_seed_is_printed_and_repeats_the_run(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, err = call(capsysbinary, "generate", "-t", "1.0", "-n", "30")
    assert code == 0
    seed = re.search(r"^seed: (\d+)$", err, re.M)
    assert seed, err
    code, again, err = call(capsysbinary, "generate", "-t", "1.0", "-n", "30", "-s", seed.group(1))
    assert code == 0 and again == out and "seed:" not in err


def test_runc_argument_fixups(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    _, greedy, _ = call(capsysbinary, "generate", "-n", "25")
    _, negative_t, _ = call(capsysbinary, "generate", "-n", "25", "-t", "-3")
    assert negative_t == greedy  # negative temperature is greedy
    _, p09, _ = call(capsysbinary, "generate", "-n", "25", "-t", "1", "-s", "3", "-p", "0.9")
    _, p5, _ = call(capsysbinary, "generate", "-n", "25", "-t", "1", "-s", "3", "-p", "5")
    assert p5 == p09  # top-p outside [0, 1] becomes 0.9
    _, short, _ = call(capsysbinary, "generate", "-n", "3")
    assert len(short) < len(greedy)


def test_prompt_is_forced(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, _ = call(capsysbinary, "generate", "-i", "The little dog", "-n", "20")
    assert code == 0 and out.startswith(b"The little dog")


def test_explicit_model_and_tokenizer(tmp_path: Path, stories260k: Path, tok512: Path,
                                      capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    _, default, _ = call(capsysbinary, "generate", "-n", "12")
    code, out, _ = call(capsysbinary, "generate", str(stories260k), "-z", str(tok512), "-n", "12")
    assert code == 0 and out == default


def test_math_mode_flags(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, _ = call(capsysbinary, "generate", "-n", "12", "--rope", "table", "--exp", "exact")
    assert code == 0 and out.startswith(b"Once")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bootllama {__version__}"


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_bad_option_value_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate", "-t", "warm"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument -t: expected a number" in err


# --- convert ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["v0", "v1", "v2"])
@pytest.mark.parametrize("shared", [True, False])
def test_convert_round_trips_every_format(fmt: str, shared: bool, tmp_path: Path,
                                          capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    model = random_model(replace(SMALL, shared_classifier=shared), seed=6)
    src, out = tmp_path / f"in-{fmt}.bin", tmp_path / "out.bin"
    {"v0": write_legacy, "v1": write_v1, "v2": write_v2}[fmt](model, src)
    code, _, err = call(capsysbinary, "convert", str(src), str(out))
    assert code == 0, err
    original, converted = load_checkpoint(src), load_checkpoint(out)
    assert converted.config == original.config
    for name, arr in original.tensors().items():
        assert arr.tobytes() == getattr(converted, name).tobytes(), name
    if fmt == "v0":
        assert out.read_bytes() == src.read_bytes()
    # and converting the legacy output again changes nothing
    code, _, _ = call(capsysbinary, "convert", str(out), str(tmp_path / "again.bin"))
    assert code == 0 and (tmp_path / "again.bin").read_bytes() == out.read_bytes()


# --- bad input -------------------------------------------------------------------------


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.bin"
    write_legacy(random_model(SMALL, seed=1), path)
    return path


def _corrupt(path: Path, how: str) -> Path:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[:-10]
    elif how == "wrong size":
        data += b"\0" * 4
    elif how == "bad magic":
        data[:8] = b"ak43" + struct.pack("<i", 1)
    elif how == "bad dims":
        data[:4] = struct.pack("<i", 33)
    bad = path.with_name(f"bad-{how.replace(' ', '-')}.bin")
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize(
    ("how", "needle"),
    [("truncated", "truncated"), ("wrong size", "implies"), ("bad magic", "bad magic"),
     ("bad dims", "not a multiple of n_heads")],
)
def test_bad_checkpoints(how: str, needle: str, small_file: Path, tok512: Path,
                         capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    bad = _corrupt(small_file, how)
    code, out, err = call(capsysbinary, "generate", str(bad), "-z", str(tok512))
    assert_one_line_error(code, err, str(bad), needle)
    assert out == b""
    target = bad.with_name("converted.bin")
    code, _, err = call(capsysbinary, "convert", str(bad), str(target))
    assert_one_line_error(code, err, needle)
    assert not target.exists()


def test_missing_files(tmp_path: Path, small_file: Path, capsysbinary: pytest.CaptureFixture[bytes],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    absent = tmp_path / "absent.bin"
    code, out, err = call(capsysbinary, "generate", str(absent))
    assert_one_line_error(code, err, str(absent), "No such file")
    code, out, err = call(capsysbinary, "generate", "-z", str(absent))
    assert_one_line_error(code, err, str(absent))
    monkeypatch.chdir(tmp_path)  # no ./tokenizer.bin here: run.c's default tokenizer is missing
    code, out, err = call(capsysbinary, "generate", str(small_file))
    assert_one_line_error(code, err, "tokenizer.bin")
    code, out, err = call(capsysbinary, "convert", str(absent), str(tmp_path / "o.bin"))
    assert_one_line_error(code, err, str(absent))
    assert out == b"" and not (tmp_path / "o.bin").exists()


def test_mismatched_tokenizer(tmp_path: Path, tok512: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    path = tmp_path / "big-vocab.bin"
    write_legacy(random_model(replace(SMALL, vocab_size=1000), seed=1), path)
    code, out, err = call(capsysbinary, "generate", str(path), "-z", str(tok512))
    assert_one_line_error(code, err, "512 pieces", "1000")
    assert out == b""


def test_prompt_too_long(small_file: Path, tok512: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, out, err = call(capsysbinary, "generate", str(small_file), "-z", str(tok512), "-i", "zq " * 100)
    assert_one_line_error(code, err, "longer than the model's context of 64")
    assert out == b""


def test_convert_failures_leave_no_file(small_file: Path, tmp_path: Path,
                                        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, _, err = call(capsysbinary, "convert", str(small_file), str(tmp_path / "no-dir" / "x.bin"))
    assert_one_line_error(code, err, "cannot write")
    existing = tmp_path / "keep.bin"
    existing.write_bytes(b"precious")
    code, _, err = call(capsysbinary, "convert", str(_corrupt(small_file, "truncated")), str(existing))
    assert code == 1 and existing.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-truncated.bin", "keep.bin", "small.bin"]


def test_non_finite_temperature(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, _, err = call(capsysbinary, "generate", "-t", "nan")
    assert_one_line_error(code, err, "temperature")


def test_errors_in_a_real_process_have_no_traceback(tmp_path: Path) -> None:
    proc = run_cli("generate", str(tmp_path / "absent.bin"))
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().count("\n") == 1 and b"Traceback" not in proc.stderr
