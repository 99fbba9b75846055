"""Developer check: assemble the engine, boot the default story and a prompt in QEMU (TCG),
compare with the oracle / the reference, and print the size table.  Exit 1 on a mismatch."""

import sys
import tempfile
from pathlib import Path

from bootllama import image
from bootllama.checkpoint import load_checkpoint, packaged_path
from bootllama.pcs import qemu
from bootllama.reference import Reference, generate
from bootllama.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
ORACLE = ROOT.parent / "shared" / "oracles" / "stories260K_greedy.txt"


def main() -> int:
    eng = image.assemble(tuple(sys.argv[1:]))
    print(image.format_size_table(eng))
    ckpt, tokp = packaged_path("stories260K.bin"), packaged_path("tok512.bin")
    model = load_checkpoint(ckpt)
    tok = Tokenizer.load(tokp, model.config.vocab_size)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for prompt, steps in ((None, 0), ("One day, Tom saw a big dog", 60)):
            img = image.build_image(ckpt, tokp, Path(tmp, "a.img"), prompt=prompt, steps=steps, engine=eng)
            r = qemu.boot(img.path, img.layout.memory_mib, img.layout.chunks, timeout=300)
            want = generate(Reference(model), tok, prompt, steps=steps)
            same = r.text == want
            ok &= same
            print(f"prompt={prompt!r} steps={steps}: {'identical' if same else 'DIFFERENT'} "
                  f"({len(r.text)} bytes, gen {r.gen_seconds:.2f} s TCG)")
            if not same:
                print("  got :", r.text[:120])
                print("  want:", want[:120])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
