"""``bootllama web``: a self-contained static site that boots the engine in the browser (v86).

The site holds the page (``site/`` in the package: index.html, app.js, style.css), v86's
libv86.js and v86.wasm, Debian's SeaBIOS and its VGA BIOS, the image for the settings given,
and what the page needs to build other images with bootllama's own Python under Pyodide: the
checkpoint and tokenizer, the two engine builds (greedy and -DSAMPLING) with their symbols,
the modules ``pagebuild`` imports, and Pyodide's core.  Nothing is fetched from elsewhere.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import sys
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import ClassVar

from bootllama import image, interrupts, pagebuild
from bootllama.checkpoint import atomic_write, refuse_inputs
from bootllama.errors import BootllamaError
from bootllama.pcs import v86
from bootllama.pcs.base import GUARDS
from bootllama.tokenizer import Tokenizer

# bootllama's modules the page imports (pagebuild and what it imports; no NumPy among them)
PAGE_MODULES = ("__init__.py", "errors.py", "interrupts.py", "checkpoint.py", "tokenizer.py", "image.py",
                "runc_args.py", "pagebuild.py", "fat.py")
PYODIDE_FILES = ("pyodide.js", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json",
                 "package.json")
COMMON_LICENSES = Path("/usr/share/common-licenses")
# the page's own files (v86_disk.js is shared with the Node harness pcs/v86_boot.mjs)
PAGE_FILES = ("index.html", "app.js", "style.css", "v86_disk.js")
# the files write_site writes besides the model's two (checked against the inputs first)
SITE_FILES = (*PAGE_FILES, "v86/libv86.js", "v86/v86.wasm", "bios/seabios.bin",
              "bios/vgabios.bin", *(f"pyodide/{n}" for n in PYODIDE_FILES),
              *(f"py/bootllama/{n}" for n in PAGE_MODULES),
              "engine/greedy.bin", "engine/sampling.bin", "model/rope.bin", "site.json", "LICENSES.txt", "boot.img",
              "boot.json")


def _package_file(*parts: str) -> Path:
    res = resources.files("bootllama").joinpath(*parts)
    if not isinstance(res, Path) or not res.is_file():
        raise BootllamaError(f"{'/'.join(parts)} is missing from the bootllama installation")
    return res


def pyodide_dir() -> Path:
    """The pinned npm ``pyodide`` beside v86 in node_modules."""
    d = v86.v86_dir().parent / "pyodide"
    if not all((d / f).is_file() for f in PYODIDE_FILES):
        raise BootllamaError(f"pyodide not found in {d.parent}: {v86.INSTALL_HINT}")
    return d


def _licenses(v86_pkg: Path, pyodide_pkg: Path) -> str:
    def text(path: Path) -> str:
        return path.read_text(errors="replace").strip() if path.is_file() else f"(see {path})"

    sections = [
        ("bootllama (index.html, app.js, style.css, v86_disk.js, py/bootllama/*.py, engine/*.bin): MIT",
         text(_package_file("site", "LICENSE-bootllama.txt"))),
        ("The model and tokenizer (model/): from Andrej Karpathy's llama2.c, MIT",
         text(_package_file("data", "LICENSE-models"))),
        ("v86 (v86/libv86.js, v86/v86.wasm): BSD-2-Clause", text(v86_pkg / "LICENSE")),
        ("SeaBIOS and its VGA BIOS (bios/): LGPL-3.0, from Debian's seabios package; source: "
         "https://www.seabios.org and Debian's seabios source package", text(COMMON_LICENSES / "LGPL-3")),
        ("Pyodide (pyodide/): MPL-2.0; its python_stdlib.zip is CPython's standard library under the "
         "Python Software Foundation License", text(COMMON_LICENSES / "MPL-2.0")),
    ]
    return "\n\n".join(f"== {head} ==\n\n{body}" for head, body in sections) + "\n"


def prompt_bound(tok: Tokenizer) -> str:
    """How the page bounds a prompt's token count before Python starts: "pieces", "bytes" or "none".

    run.c's encode starts from the dummy prefix " " and the prompt's code points (a piece each,
    else one byte-fallback token a byte) and merges neighbours whose joined text is a piece.  With
    llama2.c's byte pieces ``<0x00>``..``<0xFF>`` and no other piece holding ``<0x``, each token
    it ends with covers text that is one byte or its own piece, so the fewest such pieces the text
    splits into (a shortest path, at most longest_piece bytes a step) is a lower bound ("pieces").
    Otherwise a merge with a byte-fallback token covers other text than its piece, yet no more
    bytes than its piece's length while no byte piece is empty: the prompt's bytes over the
    longest piece ("bytes").  A byte-level tokenizer, or an empty byte piece: no bound ("none";
    Python's check alone).
    """
    if type(tok) is not Tokenizer or tok.byte_piece_base is None:
        return "none"
    base = tok.byte_piece_base
    cstr = [p.split(b"\0")[0] for p in tok.pieces]
    byte_pieces = cstr[base : base + 256]
    if len(byte_pieces) < 256 or not all(byte_pieces):
        return "none"
    if all(c == b"<0x%02X>" % b for b, c in enumerate(byte_pieces)) and not any(
            b"<0x" in c for i, c in enumerate(cstr) if not base <= i < base + 256):
        return "pieces"
    return "bytes"


def _copy(src: Path, dst: Path) -> None:
    """Copy a file atomically (checkpoint.atomic_write): a site never holds a half-written file."""
    with atomic_write(dst) as f, open(src, "rb") as g:
        shutil.copyfileobj(g, f, 1 << 20)


def _put(dst: Path, data: bytes | str) -> None:
    with atomic_write(dst) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_site(args: argparse.Namespace, out: Path) -> dict[str, object]:
    """Write the site into ``out`` (created; files bootllama writes are replaced)."""
    from bootllama.runc_args import TYPED, resolve_paths

    checkpoint, tokenizer = resolve_paths(args)
    for path in (checkpoint, tokenizer):
        if not path.is_file():
            raise BootllamaError(f"{path} does not exist")
    ckpt_name, tok_name = f"model/{checkpoint.name}", f"model/{tokenizer.name}"
    # every path the site writes, against the inputs, before anything is written
    inputs = image.image_inputs(checkpoint, tokenizer)
    written = [*SITE_FILES, ckpt_name, tok_name]
    for dst in (out, *(out / name for name in written)):
        refuse_inputs(dst, inputs)
    if out.exists() and not out.is_dir():
        raise BootllamaError(f"{out} is not a folder: give -o a folder for the site")
    v86_pkg = v86.v86_dir()
    pyodide_pkg = pyodide_dir()
    bios, vga = v86.bios_files()
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("v86", "bios", "model", "engine", "pyodide", "py/bootllama"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name in PAGE_FILES:
        _copy(_package_file("site", name), out / name)
    for name in ("libv86.js", "v86.wasm"):
        _copy(v86_pkg / "build" / name, out / "v86" / name)
    _copy(bios, out / "bios" / "seabios.bin")
    _copy(vga, out / "bios" / "vgabios.bin")
    for name in PYODIDE_FILES:
        _copy(pyodide_pkg / name, out / "pyodide" / name)
    for name in PAGE_MODULES:
        _copy(_package_file(name), out / "py" / "bootllama" / name)
    _copy(checkpoint, out / ckpt_name)
    _copy(tokenizer, out / tok_name)
    engines = {}
    for kind, defines in pagebuild.ENGINES.items():
        eng = image.assemble(defines)
        _put(out / "engine" / f"{kind}.bin", eng.code)
        engines[kind] = pagebuild.engine_spec(eng, f"engine/{kind}.bin")
        # the UEFI engine of the same build: the page's image boots UEFI PCs too, as build's does
        efi = image.assemble_uefi(defines, eng.symbols[image.engine_first_label()])
        _put(out / "engine" / f"{kind}.efi", efi.code)
        engines[kind]["efi"] = f"engine/{kind}.efi"
    # run.c's rotation values depend on the model alone: computed here once, with NumPy
    config = image.read_legacy_config(checkpoint)
    _put(out / "model" / "rope.bin", image.rope_region(checkpoint, config))
    # what the page needs to refuse a prompt that cannot fit the context before Python starts (see
    # prompt_bound): the longest piece, and whether every token covers its piece's text
    tok = Tokenizer.load(tokenizer, config.vocab_size)
    longest = max(1, *(len(p) for p in tok.pieces))
    meta: dict[str, object] = {"checkpoint": ckpt_name, "tokenizer": tok_name, "engines": engines,
                               "rope": "model/rope.bin",
                               "modules": [f"py/bootllama/{name}" for name in PAGE_MODULES],
                               "seq_len": config.seq_len, "vocab_size": config.vocab_size,
                               "longest_piece": longest, "prompt_bound": prompt_bound(tok),
                               "guards": GUARDS}  # the sector's exit codes, for the page's messages
    _put(out / "site.json", json.dumps(meta, indent=1) + "\n")
    _put(out / "LICENSES.txt", _licenses(v86_pkg, pyodide_pkg))
    # the story machine (-i -) for the site's steps, temperature and seed: the visitor types
    # prompts into the running PC, so a new prompt needs no new image (and no Pyodide); its
    # settings as the form shows them and its seed as text, as boot.json's below
    talk = write_story_machine(checkpoint, tokenizer, out / "talk.img", args.steps, args.temperature, args.seed)
    talk_settings = {"i": TYPED, "n": str(args.steps), "t": talk["temperature"],
                     "s": str(talk["seed"] if talk["temperature"] else args.seed)}
    _put(out / "talk.json", json.dumps({"settings": talk_settings, **talk, "seed": str(talk["seed"])}, indent=1) + "\n")
    # the image for the settings given: the page boots it at once when its URL names no others
    if args.prompt == TYPED:  # the story machine is the page's first image too
        _copy(out / "talk.img", out / "boot.img")
        _copy(out / "talk.json", out / "boot.json")
        return talk
    built = pagebuild.build(out, out / "boot.img", args.prompt, args.steps, args.temperature, args.seed)
    # the settings as the page's form shows them, and the seed as text: a 64-bit seed is exact in
    # JSON but a JavaScript number would round it
    settings = {"i": args.prompt or "", "n": str(args.steps), "t": built["temperature"],
                "s": str(built["seed"] if built["temperature"] else args.seed)}
    shown = {**built, "seed": str(built["seed"])}
    _put(out / "boot.json", json.dumps({"settings": settings, **shown}, indent=1) + "\n")
    return built


def write_story_machine(checkpoint: Path, tokenizer: Path, out: Path, steps: int, temperature: float | str,
                        seed: int | str) -> dict[str, object]:
    """The story machine's image (``bootllama build -i -``) and what the page needs to boot it."""
    from bootllama.runc_args import atof, atoi, resolve_seed, resolve_temperature
    from bootllama.talkblock import Talk
    from bootllama.tokenizer import Tokenizer

    temp = resolve_temperature(atof(str(temperature)))
    seed_value, drawn = resolve_seed(atoi(str(seed)))
    talk = Talk("story")
    tok = Tokenizer.load(tokenizer, image.read_legacy_config(checkpoint).vocab_size)
    engine = image.assemble(image.engine_defines(tok, temp, False, talk))
    img = image.build_image(checkpoint, tokenizer, out, prompt=None, steps=max(0, steps), temperature=temp,
                            seed=seed_value, engine=engine, talk=talk)
    return {"memory_mib": img.layout.memory_mib, "chunks": img.layout.chunks, "steps": img.steps,
            "prompt_tokens": 0, "seed": seed_value, "seed_drawn": drawn, "temperature": temp, "typed": True}


def site_size(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


# what ``--serve`` answers a link longer than http.server's request line (the page itself makes no
# link longer than 8,000 characters: app.js LINK_LIMIT)
LINK_TOO_LONG_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bootllama: link too long</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto">
<h1>This link is too long</h1>
<p id="message">The link is longer than this server takes (64 KiB). bootllama's page carries its
settings (prompt, steps, temperature, seed) in the link, and a prompt that long cannot fit the
model's context anyway. <a href="/">Open the page</a> and type a shorter prompt.</p>
</body></html>
"""
DRAIN_LIMIT = 4 << 20  # browsers send links up to 2 MB


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
                      ".json": "application/json", ".img": "application/octet-stream"}
    timeout = 60  # seconds a client may stall mid-request (the drain below reads what it sends)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A link longer than the request line http.server takes (64 KiB) gets the page's own words,
        not a bare 414: the page carries its settings in the link."""
        if code != HTTPStatus.REQUEST_URI_TOO_LONG:
            super().send_error(code, message, explain)
            return
        self._drain_request()
        body = LINK_TOO_LONG_PAGE.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _drain_request(self) -> None:
        """Read the rest of the request line and the headers (up to DRAIN_LIMIT bytes), so that the
        browser reads the answer instead of a connection reset from unread bytes."""
        left = DRAIN_LIMIT
        line = b""
        try:
            while left > 0 and not line.endswith(b"\n"):  # the rest of the long request line
                line = self.rfile.readline(min(left, 1 << 16))
                left -= len(line)
                if not line:
                    return
            while left > 0:  # the headers, up to the blank line
                line = self.rfile.readline(min(left, 1 << 16))
                left -= len(line)
                if line in (b"\r\n", b"\n", b""):
                    return
        except OSError:
            pass


def serve(out: Path, port: int = 0) -> None:
    """Serve ``out`` on 127.0.0.1 (a free port unless ``port``) until Ctrl-C."""
    handler = functools.partial(_Handler, directory=str(out))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise BootllamaError(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from None
    with server:
        print(f"serving {out} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # Ctrl-C is how serving ends: a clean stop, status 0
            interrupts.handled()
            print("stopped", file=sys.stderr)


def cmd_web(args: argparse.Namespace) -> int:
    from bootllama.runc_args import check_page_args

    check_page_args(args)
    out = Path(args.output)
    if args.steps < 0:
        args.steps = 0
    if args.topp != 1.0:
        raise BootllamaError("the page samples with -p 1.0 (run.c's sample_mult); top-p runs in the reference only")
    built = write_site(args, out)
    first = "the story machine (a story for each prompt typed)" if built.get("typed") else \
        f"{built['prompt_tokens']} prompt tokens"
    print(f"wrote {out}: {site_size(out)} bytes; the page boots {built['steps']} steps "
          f"({first}) at once", file=sys.stderr)
    if args.serve:
        serve(out, args.port)
    return 0


def add_web_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from bootllama.runc_args import add_generate_arguments

    web = subparsers.add_parser("web", help="write a static web site that boots the engine in the browser (v86)")
    add_generate_arguments(web)
    web.add_argument("-o", dest="output", default="site", metavar="SITE", help="folder to write (default ./site)")
    web.add_argument("--serve", action="store_true", help="then serve it on 127.0.0.1 until Ctrl-C")
    web.add_argument("--port", type=int, default=0, help="port for --serve (default: a free one)")
    web.set_defaults(func=cmd_web)
