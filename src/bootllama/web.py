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
from importlib import resources
from pathlib import Path
from typing import ClassVar

from bootllama import image, pagebuild
from bootllama.errors import BootllamaError
from bootllama.pcs import v86
from bootllama.pcs.base import GUARDS

# bootllama's modules the page imports (pagebuild and what it imports; no NumPy among them)
PAGE_MODULES = ("__init__.py", "errors.py", "checkpoint.py", "tokenizer.py", "image.py", "runc_args.py",
                "pagebuild.py")
PYODIDE_FILES = ("pyodide.js", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json",
                 "package.json")
COMMON_LICENSES = Path("/usr/share/common-licenses")


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
        ("bootllama (index.html, app.js, style.css, py/bootllama/*.py, engine/*.bin): MIT",
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


def write_site(args: argparse.Namespace, out: Path) -> dict[str, object]:
    """Write the site into ``out`` (created; files bootllama writes are replaced)."""
    from bootllama.runc_args import TYPED, resolve_paths

    checkpoint, tokenizer = resolve_paths(args)
    for path in (checkpoint, tokenizer):
        if not path.is_file():
            raise BootllamaError(f"{path} does not exist")
    v86_pkg = v86.v86_dir()
    pyodide_pkg = pyodide_dir()
    bios, vga = v86.bios_files()
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("v86", "bios", "model", "engine", "pyodide", "py/bootllama"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "app.js", "style.css"):
        shutil.copyfile(_package_file("site", name), out / name)
    for name in ("libv86.js", "v86.wasm"):
        shutil.copyfile(v86_pkg / "build" / name, out / "v86" / name)
    shutil.copyfile(bios, out / "bios" / "seabios.bin")
    shutil.copyfile(vga, out / "bios" / "vgabios.bin")
    for name in PYODIDE_FILES:
        shutil.copyfile(pyodide_pkg / name, out / "pyodide" / name)
    for name in PAGE_MODULES:
        shutil.copyfile(_package_file(name), out / "py" / "bootllama" / name)
    ckpt_name, tok_name = f"model/{checkpoint.name}", f"model/{tokenizer.name}"
    shutil.copyfile(checkpoint, out / ckpt_name)
    shutil.copyfile(tokenizer, out / tok_name)
    engines = {}
    for kind, defines in pagebuild.ENGINES.items():
        eng = image.assemble(defines)
        (out / "engine" / f"{kind}.bin").write_bytes(eng.code)
        engines[kind] = pagebuild.engine_spec(eng, f"engine/{kind}.bin")
    # run.c's rotation values depend on the model alone: computed here once, with NumPy
    config = image.read_legacy_config(checkpoint)
    (out / "model" / "rope.bin").write_bytes(image.rope_region(checkpoint, config))
    meta: dict[str, object] = {"checkpoint": ckpt_name, "tokenizer": tok_name, "engines": engines,
                               "rope": "model/rope.bin",
                               "modules": [f"py/bootllama/{name}" for name in PAGE_MODULES],
                               "seq_len": image.read_legacy_config(checkpoint).seq_len,
                               "guards": GUARDS}  # the sector's exit codes, for the page's messages
    (out / "site.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "LICENSES.txt").write_text(_licenses(v86_pkg, pyodide_pkg))
    # the story machine (-i -) for the site's steps, temperature and seed: the visitor types
    # prompts into the running PC, so a new prompt needs no new image (and no Pyodide)
    talk = write_story_machine(checkpoint, tokenizer, out / "talk.img", args.steps, args.temperature, args.seed)
    talk_settings = {"i": TYPED, "n": args.steps, "t": talk["temperature"],
                     "s": talk["seed"] if talk["temperature"] else args.seed}
    (out / "talk.json").write_text(json.dumps({"settings": talk_settings, **talk}, indent=1) + "\n")
    # the image for the settings given: the page boots it at once when its URL names no others
    if args.prompt == TYPED:  # the story machine is the page's first image too
        shutil.copyfile(out / "talk.img", out / "boot.img")
        shutil.copyfile(out / "talk.json", out / "boot.json")
        return talk
    built = pagebuild.build(out, out / "boot.img", args.prompt, args.steps, args.temperature, args.seed)
    settings = {"i": args.prompt or "", "n": args.steps, "t": built["temperature"],
                "s": built["seed"] if built["temperature"] else args.seed}
    (out / "boot.json").write_text(json.dumps({"settings": settings, **built}, indent=1) + "\n")
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


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript", ".mjs": "text/javascript",
                      ".json": "application/json", ".img": "application/octet-stream"}

    def log_message(self, format: str, *args: object) -> None:
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
        except KeyboardInterrupt:
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
