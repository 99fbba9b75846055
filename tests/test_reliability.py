"""Nothing lost, nothing misreported (issue 19): outputs that name inputs, the emulators' own
failures, concurrent runs sharing --image, signals at random moments, damaged images
(``bootllama verify``), tokenizers and prompts that cannot fit, and the small command-line things."""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import shared_file

from bootllama import image, interrupts
from bootllama.checkpoint import load_checkpoint, packaged_path
from bootllama.cli import main
from bootllama.errors import BootllamaError
from bootllama.pcs import bochs, qemu, v86
from bootllama.reference import Reference, generate
from bootllama.tokenizer import Tokenizer
from bootllama.verify import verify

CKPT = packaged_path("stories260K.bin")
TOK = packaged_path("tok512.bin")
SRC = Path(__file__).resolve().parents[1] / "src"


def _env(tmpdir: Path | None = None, path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    if path is not None:
        env["PATH"] = path
    return env


def _cli(*args: str, tmpdir: Path | None = None, path: str | None = None, cwd: Path | None = None,
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "bootllama.cli", *args], capture_output=True, timeout=300,
                          env=_env(tmpdir, path), cwd=cwd)


def _one_line(proc_or_err: subprocess.CompletedProcess[bytes] | str, *needles: str) -> str:
    if isinstance(proc_or_err, str):
        err = proc_or_err
    else:
        assert proc_or_err.returncode == 1, proc_or_err
        err = proc_or_err.stderr.decode()
    assert err.startswith("bootllama: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and ".tmp" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the packaged model in a folder of their own (the test may link to them)."""
    ckpt, tok = tmp_path / "a.bin", tmp_path / "t.bin"
    shutil.copyfile(CKPT, ckpt)
    shutil.copyfile(TOK, tok)
    return ckpt, tok


def _untouched(ckpt: Path, tok: Path) -> None:
    assert ckpt.read_bytes() == CKPT.read_bytes() and tok.read_bytes() == TOK.read_bytes()
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".")], list(ckpt.parent.iterdir())


# --- 1. an output that names an input -----------------------------------------------------------


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("which", ["checkpoint", "tokenizer"])
def test_build_refuses_an_output_that_is_an_input(how: str, which: str, inputs: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, tok = inputs
    target = ckpt if which == "checkpoint" else tok
    out = target
    if how == "symlink":
        out = target.parent / "link.img"
        out.symlink_to(target.name)
    elif how == "hardlink":
        out = target.parent / "hard.img"
        os.link(target, out)
    code, err = _call(capsys, "build", str(ckpt), "-z", str(tok), "-o", str(out))
    assert code == 1
    _one_line(err, str(out), f"is the {which}")
    if how != "same":
        out.unlink()
    _untouched(ckpt, tok)


def test_run_image_convert_and_web_refuse_their_inputs(inputs: tuple[Path, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, tok = inputs
    for args in (["run", str(ckpt), "-z", str(tok), "--image", str(tok)],
                 ["convert", str(ckpt), str(ckpt)],
                 ["convert", str(ckpt), "-o", str(ckpt)],
                 ["web", str(ckpt), "-z", str(tok), "-o", str(ckpt)]):
        code, err = _call(capsys, *args)
        assert code == 1, args
        _one_line(err, "choose another output path")
    # a site folder that already holds the model: web would copy it onto itself
    site = ckpt.parent / "site"
    (site / "model").mkdir(parents=True)
    shutil.copyfile(ckpt, site / "model" / "a.bin")
    code, err = _call(capsys, "web", str(site / "model" / "a.bin"), "-z", str(tok), "-o", str(site))
    _one_line(err, f"{site / 'model' / 'a.bin'} is the checkpoint")
    assert (site / "model" / "a.bin").read_bytes() == CKPT.read_bytes()
    # a GGUF's outputs: neither may be the input, nor each other
    gguf = ckpt.parent / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    for args in (["convert", str(gguf), "-o", str(gguf)],
                 ["convert", str(gguf), "-o", str(ckpt.parent / "x.bin"), "--tokenizer-out", str(gguf)],
                 ["convert", str(gguf), "-o", str(ckpt.parent / "x.bin"), "--tokenizer-out",
                  str(ckpt.parent / "x.bin")]):
        code, err = _call(capsys, *args)
        _one_line(err, "x.bin" if "x.bin" in args[-1] else str(gguf))
    assert gguf.read_bytes() == b"GGUF" + bytes(60) and not (ckpt.parent / "x.bin").exists()
    (site / "model" / "a.bin").unlink()
    shutil.rmtree(site)
    gguf.unlink()
    _untouched(ckpt, tok)


def test_output_errors_name_the_users_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no such folder" / "x.img"
    _, err = _call(capsys, "build", "-o", str(missing))
    _one_line(err, f"cannot write {missing}: No such file or directory")
    _, err = _call(capsys, "build", "-o", str(tmp_path))
    _one_line(err, f"cannot write {tmp_path}: Is a directory")
    assert list(tmp_path.iterdir()) == []


def _drain(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    """A reader of ``fifo`` (a writer's open waits for one), its bytes in the list once it ends."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    return reader, got


def test_outputs_that_are_links_fifos_or_devices_stay_what_they_are(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # an output is written where it leads, as cp and dd write: a rename over a device or a link
    # would put a regular file in its place (`build -o /dev/null` as root replaced /dev/null)
    size = 0

    def whole(data: bytes) -> bool:  # an intact image of the build's size (each build draws
        nonlocal size                # its own disk signature: no two are the same bytes)
        copy = tmp_path / "copy.img"
        copy.write_bytes(data)
        ok = verify(copy)[1] == [] and len(data) == size
        copy.unlink()
        return ok

    img = tmp_path / "ref.img"
    assert _call(capsys, "build", "-n", "2", "-o", str(img))[0] == 0
    size = img.stat().st_size
    img.unlink()
    # a symbolic link: its file gets the bytes, the link stays
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.img"
    link.symlink_to(Path("real") / "boot.img")
    for args in (["build", "-n", "2", "-o", str(link)], ["run", "-n", "2", "--image", str(link)]):
        assert _call(capsys, *args)[0] == 0, args
        assert link.is_symlink() and whole((tmp_path / "real" / "boot.img").read_bytes()), args
    # a FIFO (a pipe to dd, say): the image flows through, the FIFO stays
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (["build", "-n", "2", "-o", str(fifo)], ["run", "-n", "2", "--image", str(fifo)]):
        reader, got = _drain(fifo)
        assert _call(capsys, *args)[0] == 0, args
        reader.join(30)
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and whole(got[0]), args
    # standard output through /proc's link to it (what /dev/stdout is): the file it is gets the bytes
    out = tmp_path / "stdout.img"
    with open(out, "wb") as f:
        proc = subprocess.run([sys.executable, "-m", "bootllama.cli", "build", "-n", "2", "-o", "/proc/self/fd/1"],
                              stdout=f, stderr=subprocess.PIPE, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert whole(out.read_bytes())
    # a character device: /dev/null's own numbers, where this machine lets a test make one
    null = tmp_path / "null"
    try:
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pass
    else:
        for args in (["build", "-n", "2", "-o", str(null)], ["run", "-n", "2", "--image", str(null)]):
            assert _call(capsys, *args)[0] == 0, args
            assert stat.S_ISCHR(os.lstat(null).st_mode), args
    assert not [p for p in tmp_path.rglob(".*")], list(tmp_path.rglob("*"))


# --- 2. the emulators' own failures, and runs that share --image --------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> image.Image:
    return image.build_image(CKPT, TOK, tmp_path_factory.mktemp("rel") / "a.img", steps=20)


def test_qemu_own_failure_is_not_a_finished_story(built: image.Image) -> None:
    lay = built.layout
    # another QEMU holds the image's write lock: QEMU exits with its generic status 1
    sock = built.path.parent / "qmp.sock"
    qmp = ["-S", "-qmp", f"unix:{sock},server=on,wait=off"]
    holder = subprocess.Popen([*qemu.qemu_command(built.path, 32, "tcg"), *qmp],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        qemu.QMP(sock).close()  # QEMU serves QMP once its disk is open (and locked)
        with pytest.raises(BootllamaError) as caught:
            qemu.boot(built.path, lay.memory_mib, lay.chunks, timeout=60)
        assert str(caught.value).startswith('QEMU failed: qemu-system-') and "\n" not in str(caught.value)
        assert 'Failed to get "write" lock' in str(caught.value)
    finally:
        holder.kill()
        holder.wait()
        sock.unlink(missing_ok=True)
    with pytest.raises(BootllamaError, match=r"QEMU failed: .*Could not open"):
        qemu.boot(built.path.parent / "missing.img", lay.memory_mib, lay.chunks, timeout=60)


def test_bochs_and_node_own_failures_show_their_message(built: image.Image) -> None:
    import dataclasses

    huge = dataclasses.replace(built.layout, memory_end=5000 << 20)
    if shutil.which("bochs") and bochs.BIOS.is_file():
        with pytest.raises(BootllamaError, match=r"Bochs failed .*out of range 1 to 2048"):
            bochs.boot_bochs(built.path, huge, max_bytes=100, timeout=60)
    try:
        v86.v86_dir()
    except BootllamaError:
        return
    with pytest.raises(BootllamaError, match=r"v86 failed \(node exit code \d+.*\): RangeError"):
        v86.boot(built.path, 100_000, built.layout.chunks, timeout=60)


def _story(prompt: str, steps: int) -> bytes:
    model = load_checkpoint(CKPT)
    return generate(Reference(model), Tokenizer.load(TOK, model.config.vocab_size), prompt.encode(), steps=steps)


def test_concurrent_runs_sharing_an_image_never_cross(tmp_path: Path) -> None:
    shared = tmp_path / "shared.img"
    pairs = [(("Lily", 24), ("The cat", 30)), (("Tom had a", 20), ("Once", 26))]
    for pair in pairs:
        procs = [subprocess.Popen([sys.executable, "-m", "bootllama.cli", "run", "-i", p, "-n", str(n),
                                   "--image", str(shared)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=_env(tmp_path)) for p, n in pair]
        for (prompt, steps), proc in zip(pair, procs, strict=True):
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            assert out == _story(prompt, steps), (prompt, out)
        # the image left at --image is one of the two, whole
        assert verify(shared)[1] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.img"]


# --- 3. signals at random moments ---------------------------------------------------------------


def _emulators_in(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (the run's image lives there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(folder).encode() in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def _program() -> list[str]:
    """The installed ``bootllama`` command (what a user interrupts), else the module."""
    script = Path(sys.executable).parent / "bootllama"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bootllama.cli"]


def _cpython_startup(err: str) -> bool:
    """A KeyboardInterrupt traceback from CPython's own start-up, before any bootllama code ran
    (site, encodings, the import system): the one moment bootllama cannot handle a signal."""
    frames = [line for line in err.splitlines() if line.startswith('  File "')]
    return err.rstrip().endswith("KeyboardInterrupt") and not any(f"{os.sep}bootllama{os.sep}" in f for f in frames)


def _chaos(tmp_path: Path, runs: int, seed: int) -> None:
    rng = random.Random(seed)
    sigs = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    early: list[str] = []
    for i in range(runs):
        sig = sigs[i % 3]
        tmpdir = tmp_path / f"run{i}"
        tmpdir.mkdir()
        # a third of the moments in the first 0.2 s (imports), the rest over the build and the boot
        delay = rng.uniform(0, 0.2) if i % 3 == rng.randrange(3) else rng.uniform(0.2, 2.5)
        proc = subprocess.Popen([*_program(), "run", "-n", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmpdir))
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        what = f"run {i}: {signal.Signals(sig).name} after {delay:.2f} s"
        # finished first (0), cleaned up (128 + n), or ended by the default action before Python
        # had installed any handler (SIGTERM and SIGHUP at start-up: nothing was created yet)
        codes = {0, 128 + sig, -sig}
        if b"Traceback" in err:
            assert _cpython_startup(err.decode()), (what, err.decode())
            early.append(what)
            # a SIGINT while CPython imports site ends in its "Fatal Python error: init_import_site"
            # and exit status 1 (the interpreter's own code, before bootllama's first line)
            codes.add(1)
        assert proc.returncode in codes, (what, proc.returncode, err.decode())
        assert list(tmpdir.iterdir()) == [], (what, list(tmpdir.rglob("*")))
        assert _emulators_in(tmpdir) == [], what
    print(f"{len(early)} of {runs} signals came during CPython's own start-up: {early}")


def test_signals_at_random_moments_leave_nothing(tmp_path: Path) -> None:
    _chaos(tmp_path, 6, seed=int(time.time()))


@pytest.mark.slow
def test_signals_at_random_moments_leave_nothing_many(tmp_path: Path) -> None:
    _chaos(tmp_path, 30, seed=int(time.time()))


def test_deferred_signal_is_raised_at_the_end_of_the_block() -> None:
    restore = interrupts.install()
    try:
        with pytest.raises(interrupts.Interrupted) as caught, interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler ran meanwhile, and waited
            done = True
        assert done and caught.value.signum == signal.SIGTERM
        # the first signal wins: a second one during the clean-up is ignored
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# --- 4. bootllama verify ------------------------------------------------------------------------


def test_verify_passes_an_intact_image(built: image.Image, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(built.path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{built.path}: intact (engine, UEFI engine, manifest, checkpoint, tokenizer, "
                          "prompt ids, address table, piece directory, RoPE values")


def test_verify_names_the_part_a_flipped_bit_is_in(built: image.Image, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    parts, damaged = verify(built.path)
    assert damaged == [] and len(parts) == 9
    data = built.path.read_bytes()
    rng = random.Random(int(time.time()))
    damaged_file = tmp_path / "d.img"
    for i in range(21):
        part = parts[i % len(parts)]  # every part three times, at random places in it
        at = part.offset + rng.randrange(part.length)
        flipped = bytearray(data)
        flipped[at] ^= 1 << rng.randrange(8)
        damaged_file.write_bytes(flipped)
        assert verify(damaged_file)[1] == [part.name], (part, at)
    code = main(["verify", str(damaged_file)])
    _one_line(capsys.readouterr().err, f"{damaged_file} is damaged: {parts[20 % len(parts)].name}")
    assert code == 1


def test_verify_record_truncation_and_non_images(built: image.Image, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = built.path.read_bytes()
    man = image.MANIFEST_LBA * 512  # the boot read's copy, where verify looks first
    cases = {
        "record.img": data[:man + 30] + bytes([data[man + 30] ^ 8]) + data[man + 31:],
        "tail.img": data[:man + 300] + b"\1" + data[man + 301:],  # the record's zero tail
        "cut.img": data[: len(data) // 2],
        "short.img": data[:3000],
        "checkpoint.bin": CKPT.read_bytes(),
        "old.img": data[:man] + bytes(384) + data[man + 384:],  # built before verify existed
    }
    needles = {"record.img": "verify record", "tail.img": "verify record",
               "cut.img": f"truncated: {len(data) // 2} of its {len(data)} bytes", "short.img": "truncated",
               "checkpoint.bin": "not a bootllama image", "old.img": "no verify record"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert main(["verify", str(tmp_path / name)]) == 1
        _one_line(capsys.readouterr().err, str(tmp_path / name), needles[name])


# --- 5. tokenizers and prompts that cannot fit ---------------------------------------------------


def test_a_larger_tokenizer_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = shared_file("models/tokenizer.bin")
    for command in ("generate", "build"):
        args = [command, "-z", str(big)] + (["-o", str(tmp_path / "x.img")] if command == "build" else [])
        _, err = _call(capsys, *args)
        _one_line(err, "tokenizer has 32000 pieces but the model's vocabulary has 512", "garbage")


def test_a_prompt_too_long_is_refused_before_the_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bootllama import pagebuild

    def no_merges(*_args: object, **_kwargs: object) -> list[int]:
        raise AssertionError("the merges ran")

    prompt = "Once upon a time, " * 1700  # 30,600 bytes
    monkeypatch.setattr(Tokenizer, "encode", no_merges)
    with pytest.raises(BootllamaError, match=r"prompt of 30600 bytes is at least \d+ tokens .* context holds 512"):
        image.build_image(CKPT, TOK, tmp_path / "x.img", prompt=prompt)
    model = load_checkpoint(CKPT)
    with pytest.raises(BootllamaError, match="context holds 512"):
        generate(Reference(model), Tokenizer.load(TOK, 512), prompt.encode())
    # the page's Python: pagebuild over a site's files (only what build() reads)
    site = tmp_path / "site"
    (site / "model").mkdir(parents=True)
    (site / "engine").mkdir()
    shutil.copyfile(CKPT, site / "model" / "m.bin")
    shutil.copyfile(TOK, site / "model" / "t.bin")
    eng = image.assemble()
    (site / "engine" / "greedy.bin").write_bytes(eng.code)
    (site / "engine" / "greedy.efi").write_bytes(image.assemble_uefi((), eng.symbols[image.engine_first_label()]).code)
    import json

    spec = {**pagebuild.engine_spec(eng, "engine/greedy.bin"), "efi": "engine/greedy.efi"}
    (site / "site.json").write_text(json.dumps({"checkpoint": "model/m.bin", "tokenizer": "model/t.bin",
                                                "rope": "model/rope.bin", "engines": {"greedy": spec}}))
    (site / "model" / "rope.bin").write_bytes(image.rope_region(CKPT, model.config))
    with pytest.raises(BootllamaError, match="context holds 512"):
        pagebuild.build(site, site / "boot.img", prompt, 0, 0, 1)
    assert not (site / "boot.img").exists()


@pytest.mark.parametrize("tokenizer", ["tok512", "32k"])
def test_min_tokens_is_a_lower_bound(tokenizer: str) -> None:
    path = TOK if tokenizer == "tok512" else shared_file("models/tokenizer.bin")
    tok = Tokenizer.load(path, 512 if tokenizer == "tok512" else 32000)
    rng = random.Random(7)
    words = ["Once", " upon", "a", "time", ",", "é", "日本", "\n", "zzzz", "the", "  ", "\x01", "ly"]
    for _ in range(200):
        text = "".join(rng.choice(words) for _ in range(rng.randrange(0, 40)))
        assert tok.min_tokens(text) <= len(tok.encode(text)), text


def test_min_tokens_is_a_lower_bound_bytelevel(bytelevel_model: tuple[Path, Path]) -> None:
    ckpt, tokp = bytelevel_model
    tok = Tokenizer.load(tokp, image.read_legacy_config(ckpt).vocab_size)
    rng = random.Random(8)
    words = ["def", " main", "()", ":\n", "    return", " 42", "<|im_start|>", "<|im_end|>", "é", " "]
    specials = [t for t in words if t in tok.special_tokens.values()] or words
    for _ in range(200):
        text = "".join(rng.choice(words + specials) for _ in range(rng.randrange(0, 30)))
        assert tok.min_tokens(text) <= len(tok.encode(text)), text


# --- 6. the small command-line things -----------------------------------------------------------


def test_a_gguf_checkpoint_gets_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    for args in (["generate", str(gguf)], ["build", str(gguf), "-o", str(tmp_path / "x.img")],
                 ["run", str(gguf)]):
        _, err = _call(capsys, *args)
        _one_line(err, f"{gguf} is a GGUF file", "bootllama convert", "--model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_negative_numbers_are_values_not_flags(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["generate", "-t", "-inf"]) == 1
    assert b"temperature must be a finite float, got -inf" in capsysbinary.readouterr().err
    greedy = main(["generate", "-n", "12"]), capsysbinary.readouterr().out
    for t in ("-1e-3", "-0x1p3", "-.5", "-7"):
        assert (main(["generate", "-n", "12", "-t", t]), capsysbinary.readouterr().out) == greedy, t
    assert main(["generate", "-n", "8", "-i", "-nan"]) == 0  # a prompt that looks like a number
    assert capsysbinary.readouterr().out.startswith(b"-nan")


def test_qemu_not_found_leaves_nothing(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    nasm = shutil.which("nasm")
    assert nasm
    (tools / "nasm").symlink_to(nasm)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = _cli("run", "-n", "5", tmpdir=tmpdir, path=str(tools))
    _one_line(proc, "QEMU not found")
    assert list(tmpdir.iterdir()) == []
