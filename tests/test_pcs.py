"""The PCs behind ``bootllama.pcs``: every QEMU variant and v86 print the reference's story."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import shared_file

from bootllama import image, pcs
from bootllama.checkpoint import load_checkpoint, packaged_path
from bootllama.cli import main
from bootllama.errors import BootllamaError
from bootllama.pcs import qemu, v86
from bootllama.reference import Reference, Sampler, generate
from bootllama.tokenizer import Tokenizer

CKPT = packaged_path("stories260K.bin")
TOK = packaged_path("tok512.bin")


@pytest.fixture(scope="module")
def engine() -> image.Engine:
    return image.assemble()


@pytest.fixture(scope="module")
def default_image(tmp_path_factory: pytest.TempPathFactory, engine: image.Engine) -> image.Image:
    return image.build_image(CKPT, TOK, tmp_path_factory.mktemp("pcs") / "a.img", engine=engine)


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_checkpoint(CKPT)


def _slow(name: str):  # type: ignore[no-untyped-def]
    return pytest.param(name, marks=pytest.mark.slow)


# The whole default story (346 positions; attention makes the later ones dearer) on every PC:
# v86 in the quick suite; qemu (IDE) is test_engine.py's default story, the same boot with the
# same checks; the other disk controllers tell the whole story behind the slow marker and a
# short one in the quick suite (test_short_story_on_every_disk_controller): what differs
# between them is the path the loader's reads take, which the short story covers whole (every
# chunk, checked by the engine's data sum), not the forward pass.
@pytest.mark.parametrize("name", [_slow("qemu"), _slow("qemu-ahci"), _slow("qemu-usb-ehci"), _slow("qemu-usb-xhci"),
                                  "v86"])
def test_default_story_on_every_pc(name: str, default_image: image.Image) -> None:
    result = pcs.boot(name, default_image.path, default_image.layout, timeout=300)
    assert result.text == shared_file("oracles/stories260K_greedy.txt").read_bytes()
    assert result.exit_status == pcs.EXIT_DONE
    assert result.tokens == 346  # forward passes, counted on port 0xE9 on every PC
    assert result.dots == b"." * default_image.layout.chunks


SHORT_STEPS = 40


@pytest.fixture(scope="module")
def short_image(tmp_path_factory: pytest.TempPathFactory, engine: image.Engine) -> image.Image:
    return image.build_image(CKPT, TOK, tmp_path_factory.mktemp("pcs") / "s.img", steps=SHORT_STEPS, engine=engine)


@pytest.mark.parametrize("name", ["qemu-ahci", "qemu-usb-ehci", "qemu-usb-xhci", "qemu-uefi-usb"])
def test_short_story_on_every_disk_controller(name: str, short_image: image.Image) -> None:
    # the default story's first 40 positions, through AHCI, EHCI and XHCI under SeaBIOS and
    # XHCI under OVMF (the whole story on each: test_default_story_on_every_pc and test_uefi.py, slow)
    result = pcs.boot(name, short_image.path, short_image.layout, timeout=300)
    oracle = shared_file("oracles/stories260K_greedy.txt").read_bytes()
    assert result.text.endswith(b"\n") and len(result.text) > 100 and oracle.startswith(result.text[:-1])
    assert result.exit_status == pcs.EXIT_DONE
    assert result.tokens == SHORT_STEPS
    assert result.dots == b"." * short_image.layout.chunks


def test_v86_prompted_story(tmp_path: Path, engine: image.Engine, model) -> None:  # type: ignore[no-untyped-def]
    prompt, steps = "Tom and Sue went", 60
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", prompt=prompt, steps=steps, engine=engine)
    tok = Tokenizer.load(TOK, model.config.vocab_size)
    result = pcs.boot("v86", img.path, img.layout, timeout=120)
    assert result.text == generate(Reference(model), tok, prompt, steps=steps)
    assert result.tokens == steps


def test_v86_sampled_story(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    temperature, seed, prompt, steps = 0.9, 31337, "Lily", 90
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", prompt=prompt, steps=steps,
                            temperature=temperature, seed=seed)
    tok = Tokenizer.load(TOK, model.config.vocab_size)
    want = generate(Reference(model), tok, prompt, steps=steps,
                    sampler=Sampler(model.config.vocab_size, temperature, 1.0, seed))
    assert pcs.boot("v86", img.path, img.layout, timeout=120).text == want


def _tiny_sector(tmp_path: Path, engine: image.Engine, body: str) -> tuple[Path, image.Layout]:
    """A real image whose sector 0 is replaced by ``body`` (NASM, 16-bit, at 0x7C00)."""
    img = image.build_image(CKPT, TOK, tmp_path / "t.img", steps=4, engine=engine)
    src = tmp_path / "t.asm"
    src.write_text(f"bits 16\norg 0x7c00\n{body}\ntimes 510-($-$$) db 0\ndw 0xaa55\n")
    code = tmp_path / "t.bin"
    subprocess.run([image.nasm(), "-f", "bin", "-o", str(code), str(src)], check=True)
    with open(img.path, "r+b") as f:
        f.write(code.read_bytes())
    return img.path, img.layout


def test_v86_reports_any_exit_code(tmp_path: Path, engine: image.Engine) -> None:
    # exit codes are read generically: any byte written to port 0xF4 comes back as QEMU's status,
    # with what the sector printed instead of the dots
    chunks = image.build_image(CKPT, TOK, tmp_path / "c.img", steps=4, engine=engine).layout.chunks
    dots = "mov dx, 0x3f8\n" + "mov al, '.'\nout dx, al\n" * chunks
    path, lay = _tiny_sector(tmp_path, engine, dots + "mov al, 0x42\nout 0xf4, al\ncli\nhlt")
    with pytest.raises(BootllamaError, match=r"the sector stopped on v86: unknown exit code 66"):
        pcs.boot("v86", path, lay, timeout=30)
    message = "".join(f"mov al, {ord(c)}\nout dx, al\n" for c in "!disk")
    path, lay = _tiny_sector(tmp_path, engine, dots + message + "mov al, 2\nout 0xf4, al\ncli\nhlt")
    with pytest.raises(BootllamaError, match=r"stopped on v86: !disk \(a disk read error"):
        pcs.boot("v86", path, lay, timeout=30)
    # a halt with interrupts off and no exit code ends the run too
    path, lay = _tiny_sector(tmp_path, engine, "cli\nhlt")
    with pytest.raises(BootllamaError, match=r"halted on v86 without an exit code"):
        pcs.boot("v86", path, lay, timeout=30)


def test_v86_times_out(tmp_path: Path, engine: image.Engine) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", engine=engine)
    with pytest.raises(BootllamaError, match=r"did not finish within 0.5 s on v86"):
        pcs.boot("v86", img.path, img.layout, timeout=0.5)


def test_v86_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, default_image: image.Image) -> None:
    monkeypatch.setenv("BOOTLLAMA_V86", str(tmp_path))
    with pytest.raises(BootllamaError, match=r"v86 not found .*scripts/setup.sh"):
        pcs.boot("v86", default_image.path, default_image.layout, timeout=10)
    monkeypatch.delenv("BOOTLLAMA_V86")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BootllamaError, match=r"node not found: .*scripts/setup.sh"):
        v86.node_binary()


def test_unknown_pc_and_cpu_option(default_image: image.Image, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BootllamaError, match="unknown PC 'vax'"):
        pcs.boot("vax", default_image.path, default_image.layout)
    with pytest.raises(BootllamaError, match="QEMU PCs only"):
        pcs.boot("v86", default_image.path, default_image.layout, cpu="486")
    # -cpu reaches QEMU's command line only when asked for
    assert qemu.qemu_command("d.img", 32, "tcg", cpu="pentium")[-2:] == ["-cpu", "pentium"]
    assert qemu.qemu_command("d.img", 32, "tcg")[-2:] == ["-cpu", "max"]
    with pytest.raises(SystemExit):
        main(["run", "--pc", "vax"])
    assert "invalid choice" in capsys.readouterr().err


def test_run_on_v86(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--pc", "v86", "-n", "20"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Once upon a time")
    assert "20 tokens" in out.err and "V86" in out.err


def test_bochs_through_the_registry(tmp_path: Path, engine: image.Engine) -> None:
    img = image.build_image(CKPT, TOK, tmp_path / "a.img", steps=12, engine=engine)
    result = pcs.boot("bochs", img.path, img.layout, timeout=60)
    oracle = shared_file("oracles/stories260K_greedy.txt").read_bytes()
    assert result.text.endswith(b"\n") and oracle.startswith(result.text[:-1]) and len(result.text) > 20
    assert result.accel == "bochs" and result.exit_status == pcs.EXIT_DONE
