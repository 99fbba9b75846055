"""Boot the default image in QEMU and save what the PC's screen shows when the story ends.

The engine is assembled with ``-DHALT`` so it stops (``hlt``) after the story instead of
leaving QEMU through isa-debug-exit; the screen (VGA text mode, where the sector prints
through the BIOS teletype as well as to COM1) then stays up. The script waits until COM1 has
carried the whole story, which it knows in advance from the NumPy reference, asks QEMU's
QMP monitor for a ``screendump`` (PPM), and writes it as a PNG (default docs/screenshot.png).

With ``--uefi`` the same image boots under OVMF (UEFI, no CSM) and the picture is the UEFI
engine's screen (its -DHALT build waits for a key instead of leaving QEMU).

    python tools/screenshot.py [-o docs/screenshot.png] [-i PROMPT] [-n STEPS] [--scale 2] [--uefi]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
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
        sock = tmp / "qmp.sock"
        cmd = qemu.qemu_command(img.path, lay.memory_mib, "tcg", ["-qmp", f"unix:{sock},server=on,wait=off"],
                                machine="uefi" if uefi else "pc")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            serial = got = b""
            deadline = time.monotonic() + timeout
            # COM1 carries one '.' per chunk loaded, then the story; HALT keeps QEMU up after it
            while got[lay.chunks:] != want:
                if time.monotonic() > deadline:
                    raise BootllamaError(f"no complete story within {timeout:.0f} s "
                                         f"({len(got) - lay.chunks} of {len(want)} bytes)")
                if b"!" in got[:lay.chunks]:
                    raise BootllamaError("the sector reported a disk read error ('!')")
                if len(got) - lay.chunks > len(want):
                    raise BootllamaError("the engine printed more than the reference's story")
                ready, _, _ = select.select([fd], [], [], 1.0)
                if ready:
                    data = os.read(fd, 65536)
                    if not data:
                        raise BootllamaError("QEMU exited before the story ended")
                    serial += data
                    # under OVMF, the firmware's console text comes first, up to the engine's form feed
                    got = serial.partition(qemu.FORM_FEED)[2] if uefi else serial
            time.sleep(0.5)  # the BIOS teletype follows each COM1 byte; let the last ones land
            ppm = tmp / "screen.ppm"
            with contextlib.closing(qemu.QMP(sock)) as qmp:
                qmp.execute("stop")
                qmp.save_file(ppm, "screendump", filename=os.fspath(ppm))
            with PILImage.open(ppm) as shot:
                shot.load()
                rgb = shot.convert("RGB")
        finally:
            proc.kill()
            proc.wait()
    if scale > 1:
        rgb = rgb.resize((rgb.width * scale, rgb.height * scale), PILImage.Resampling.NEAREST)
    out.parent.mkdir(parents=True, exist_ok=True)
    rgb.save(out, format="PNG", optimize=True)
    return want


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", dest="output", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("-i", dest="prompt", default=None, help="prompt (default: none, the default story)")
    parser.add_argument("-n", dest="steps", type=int, default=0, help="steps, 0 = seq_len (default 0)")
    parser.add_argument("--scale", type=int, default=1, help="enlarge the picture by this factor (nearest)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--uefi", action="store_true", help="boot under OVMF: the UEFI engine's screen")
    args = parser.parse_args(argv)
    try:
        story = screenshot(args.output, args.prompt, args.steps, max(1, args.scale), args.timeout, args.uefi)
    except BootllamaError as e:
        print(f"screenshot: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({len(story)} bytes of story on screen)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
