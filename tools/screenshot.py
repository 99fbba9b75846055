"""Boot the default image in QEMU and save what the PC's screen shows when the story ends.

The engine is assembled with ``-DHALT`` so it stops (``hlt``) after the story instead of
leaving QEMU through isa-debug-exit; the screen (VGA text mode, where the sector prints
through the BIOS teletype as well as to COM1) then stays up. The script waits until COM1 has
carried the whole story, which it knows in advance from the NumPy reference, asks QEMU's
QMP monitor for a ``screendump`` (PPM), and writes it as a PNG (default docs/screenshot.png).

With ``--uefi`` the same image boots under OVMF (UEFI, no CSM) and the picture is the UEFI
engine's screen (its -DHALT build waits for a key instead of leaving QEMU).

    python tools/screenshot.py [-o docs/screenshot.png] [-i PROMPT] [-n STEPS] [--scale 2] [--uefi]

With ``--chat LINE ...`` it boots run.c's chat mode instead (``build -m chat``) and types the
lines on the PC's keyboard (QMP send-key), the system prompt first, each after the guide that
asks for it, so the screen shows the conversation as a person typing at the PC sees it; the
picture is taken once the last answer is over (the reference says when).  Chat images are
legacy-only (the UEFI engine has no keyboard input yet), so ``--chat`` does not go with ``--uefi``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image as PILImage

from bootllama import image
from bootllama.checkpoint import load_checkpoint, packaged_path
from bootllama.errors import BootllamaError
from bootllama.pcs import qemu
from bootllama.reference import Reference, generate
from bootllama.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def expected_story(checkpoint: Path, tokenizer: Path, prompt: str | None, steps: int) -> bytes:
    model = load_checkpoint(checkpoint)
    tok = Tokenizer.load(tokenizer, model.config.vocab_size)
    return generate(Reference(model), tok, prompt, steps=steps)


def screenshot(out: Path, prompt: str | None = None, steps: int = 0, scale: int = 1,
               timeout: float = 300.0, uefi: bool = False) -> bytes:
    """Boot, wait for the story, dump the screen to ``out`` (PNG); return the story bytes."""
    checkpoint, tokenizer = packaged_path("stories260K.bin"), packaged_path("tok512.bin")
    want = expected_story(checkpoint, tokenizer, prompt, steps)
    engine = image.assemble(("HALT",))
    with tempfile.TemporaryDirectory(prefix="bootllama-shot-") as tmpdir:
        tmp = Path(tmpdir)
        img = image.build_image(checkpoint, tokenizer, tmp / "boot.img", prompt=prompt, steps=steps, engine=engine)
        lay = img.layout
        deadline = time.monotonic() + timeout

        def over(serial: bytes, qmp: qemu.QMP) -> bool:
            # under OVMF, the firmware's console text comes first, up to the engine's form feed
            got = serial.partition(qemu.FORM_FEED)[2] if uefi else serial
            # COM1 carries one '.' per chunk loaded, then the story; HALT keeps QEMU up after it
            if got[lay.chunks:] == want:
                return True
            if time.monotonic() > deadline:
                raise BootllamaError(f"no complete story within {timeout:.0f} s "
                                     f"({len(got) - lay.chunks} of {len(want)} bytes)")
            if b"!" in got[:lay.chunks]:
                raise BootllamaError("the sector reported a disk read error ('!')")
            if len(got) - lay.chunks > len(want):
                raise BootllamaError("the engine printed more than the reference's story")
            return False

        shot = boot_and_grab(img, over, "the story ended", machine="uefi" if uefi else "pc", poll=1.0)
    save_png(shot, out, scale)
    return want


def chat_screenshot(out: Path, lines: list[str], steps: int = 0, scale: int = 1, timeout: float = 600.0) -> bytes:
    """Boot run.c's chat mode, type ``lines`` (system prompt, then user turns) on the keyboard,
    dump the screen once the last answer is over; return what COM1 carried."""
    import io

    from bootllama.conversation import SYSTEM_GUIDE, USER_GUIDE, chat, fgets_lines
    from bootllama.reference import Sampler
    from bootllama.talkblock import Talk

    checkpoint, tokenizer = packaged_path("stories260K.bin"), packaged_path("tok512.bin")
    model = load_checkpoint(checkpoint)
    tok = Tokenizer.load(tokenizer, model.config.vocab_size)
    typed = "".join(line + "\n" for line in lines).encode()
    want, _ = chat(Reference(model), tok, Sampler(model.config.vocab_size, 0.0, 0.9, 0), fgets_lines(io.BytesIO(typed)),
                   steps=steps)
    want = want[:-1]  # the final newline comes at end of input, which is never typed here
    talk = Talk("chat")
    engine = image.assemble((*image.engine_defines(tok, 0.0, False, talk), "HALT"))
    with tempfile.TemporaryDirectory(prefix="bootllama-shot-") as tmpdir:
        tmp = Path(tmpdir)
        img = image.build_image(checkpoint, tokenizer, tmp / "chat.img", prompt=None, steps=steps, engine=engine,
                                talk=talk)
        lay = img.layout
        deadline = time.monotonic() + timeout
        sent = 0

        def over(serial: bytes, qmp: qemu.QMP) -> bool:
            nonlocal sent
            text = serial[lay.chunks:]
            if text.startswith(want):
                return True
            if time.monotonic() > deadline:
                raise BootllamaError(f"no complete chat within {timeout:.0f} s "
                                     f"({len(text)} of {len(want)} bytes)")
            if not want.startswith(text):
                raise BootllamaError(f"the engine's chat differs from the reference's at byte {len(text)}")
            asked = text.count(SYSTEM_GUIDE) + text.count(USER_GUIDE)
            if sent < len(lines) and asked > sent and text.endswith((SYSTEM_GUIDE, USER_GUIDE)):
                qmp.type_text(lines[sent] + "\n")
                sent += 1
            return False

        shot = boot_and_grab(img, over, "the chat was over", poll=0.2)
    save_png(shot, out, scale)
    return want


def boot_and_grab(img: image.Image, over: Callable[[bytes, qemu.QMP], bool], what: str,
                  machine: str = "pc", poll: float = 0.2) -> PILImage.Image:
    """Boot ``img`` until ``over`` says the screen is final (qemu.boot_and_stop), and return the
    stopped PC's screen."""
    def grab(qmp: qemu.QMP, tmp: Path) -> PILImage.Image:
        ppm = tmp / "screen.ppm"
        qmp.save_file(ppm, "screendump", filename=os.fspath(ppm))
        with PILImage.open(ppm) as shot:
            shot.load()
            return shot.convert("RGB")

    return qemu.boot_and_stop(img.path, img.layout.memory_mib, over, what, grab, machine=machine, poll=poll)


def save_png(rgb: PILImage.Image, out: Path, scale: int) -> None:
    """Write ``rgb`` to ``out`` as a PNG, enlarged ``scale`` times (nearest neighbour)."""
    if scale > 1:
        rgb = rgb.resize((rgb.width * scale, rgb.height * scale), PILImage.Resampling.NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    rgb.save(out, format="PNG", optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", dest="output", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("-i", dest="prompt", default=None, help="prompt (default: none, the default story)")
    parser.add_argument("-n", dest="steps", type=int, default=0, help="steps, 0 = seq_len (default 0)")
    parser.add_argument("--scale", type=int, default=1, help="enlarge the picture by this factor (nearest)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--chat", nargs="+", metavar="LINE", default=None,
                        help="run.c's chat mode: the system prompt, then user turns, typed on the keyboard")
    parser.add_argument("--uefi", action="store_true", help="boot under OVMF: the UEFI engine's screen")
    args = parser.parse_args(argv)
    if args.chat and args.uefi:
        parser.error("--chat boots a legacy-only image: not with --uefi")
    try:
        if args.chat:
            story = chat_screenshot(args.output, args.chat, args.steps, max(1, args.scale), args.timeout)
        else:
            story = screenshot(args.output, args.prompt, args.steps, max(1, args.scale), args.timeout, args.uefi)
    except BootllamaError as e:
        print(f"screenshot: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({len(story)} bytes of story on screen)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
