"""``bootllama web``: the site boots the engine in v86 in headless Chromium (Debian's, driven by
Playwright) and the page's text is the reference's; the images the page builds under Pyodide are
the ones ``bootllama build`` writes."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import shared_file

from bootllama import pagebuild, runc_args, web
from bootllama.checkpoint import load_checkpoint, packaged_path
from bootllama.cli import main
from bootllama.reference import Reference, Sampler, generate
from bootllama.tokenizer import Tokenizer

CKPT = packaged_path("stories260K.bin")
TOK = packaged_path("tok512.bin")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGE_TIMEOUT_MS = 120_000
SITE_SEED = 42


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    # a seed: the manifest holds one even for greedy stories, drawn from the clock when not given
    assert main(["web", "-s", str(SITE_SEED), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(web._Handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Debian's Chromium: Playwright never downloads a browser here
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_checkpoint(CKPT)


def _reference(model, prompt: str | None, steps: int, temperature: float = 0.0, seed: int = 0) -> bytes:  # type: ignore[no-untyped-def]
    tok = Tokenizer.load(TOK, model.config.vocab_size)
    sampler = Sampler(model.config.vocab_size, temperature, 1.0, seed) if temperature > 0 else None
    return generate(Reference(model), tok, prompt, steps=steps, sampler=sampler)


def _wait(page, runs: int = 1) -> str:  # type: ignore[no-untyped-def]
    """Wait until the page has finished ``runs`` boots or shows an error; return #status."""
    page.wait_for_function(
        f"window.bootllama && (window.bootllama.runs >= {runs} || "
        "document.getElementById('status').classList.contains('error'))", timeout=PAGE_TIMEOUT_MS)
    return str(page.text_content("#status"))


def _built_sha(tmp_path: Path, *flags: str) -> str:
    out = tmp_path / "cli.img"
    assert main(["build", *flags, "-o", str(out)]) == 0
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_page_prints_the_default_story(browser, base_url: str, site: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(base_url)
    assert _wait(page) == "done"
    oracle = shared_file("oracles/stories260K_greedy.txt").read_bytes()
    assert page.text_content("#text") == oracle.decode()
    # the page booted the site's image, which is what `bootllama build` writes
    booted = page.evaluate("window.bootllama.image.sha256")
    site_sha = hashlib.sha256((site / "boot.img").read_bytes()).hexdigest()
    assert booted == site_sha == _built_sha(tmp_path, "-s", str(SITE_SEED))
    assert "346 tokens" in str(page.text_content("#stats"))
    page.close()


def test_page_boots_the_story_its_url_names(browser, base_url: str, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prompt, steps, temperature, seed = "Tom and Sue", 64, 0.8, 7
    query = urllib.parse.urlencode({"i": prompt, "n": steps, "t": temperature, "s": seed}, quote_via=urllib.parse.quote)
    page = browser.new_page()
    page.goto(f"{base_url}?{query}")
    assert _wait(page) == "done"
    assert page.text_content("#text") == _reference(model, prompt, steps, temperature, seed).decode()
    # the image the page built with Pyodide is byte for byte the one `bootllama build` writes
    booted = page.evaluate("window.bootllama.image.sha256")
    assert booted == _built_sha(tmp_path, "-i", prompt, "-n", str(steps), "-t", str(temperature), "-s", str(seed))
    page.close()


@pytest.mark.slow
def test_form_boots_again_and_rejects_bad_input(browser, base_url: str, model) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(base_url)
    assert _wait(page) == "done"
    page.fill("#prompt", "Lily had a")
    page.fill("#steps", "40")
    page.fill("#temperature", "0")
    page.click("#boot")
    assert _wait(page, runs=2) == "done"
    assert page.text_content("#text") == _reference(model, "Lily had a", 40).decode()
    assert "i=Lily%20had%20a&n=40&t=0" in page.url
    # bad input: a message in the page, never a silent hang
    page.fill("#temperature", "warm")
    page.click("#boot")
    assert page.text_content("#status") == 'temperature must be a number, not "warm"'
    page.fill("#temperature", "0")
    page.fill("#prompt", "a " * 600)
    page.click("#boot")
    page.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=PAGE_TIMEOUT_MS)
    assert "the context holds 512" in str(page.text_content("#status"))
    page.close()


def test_page_rejects_a_bad_url(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(f"{base_url}?t=abc")
    assert _wait(page) == 'temperature must be a number, not "abc"'
    page.close()


@pytest.mark.parametrize(("prompt", "steps", "temperature", "seed"), [
    (None, 0, 0.0, 3), ("Once upon a time", 30, 0.0, 5), ("Ünïcode ☃ and <0x41>", 100, 1.2, 2**63 + 11),
    ("", 1, 0.5, 1), ("Tom", -3, -1.0, 9),
])
def test_page_builder_writes_what_build_writes(site: Path, tmp_path: Path, prompt: str | None, steps: int,
                                               temperature: float, seed: int) -> None:
    # pagebuild is the code the page runs under Pyodide, on the site's engine builds
    # the page hands over the URL's text, which pagebuild reads as run.c reads its flags
    info = pagebuild.build(site, tmp_path / "page.img", prompt, str(steps), str(temperature), str(seed))
    flags = ["-n", str(steps), "-t", str(temperature), "-s", str(seed)] + (["-i", prompt] if prompt is not None else [])
    assert hashlib.sha256((tmp_path / "page.img").read_bytes()).hexdigest() == _built_sha(tmp_path, *flags)
    assert info["seed"] == runc_args.resolve_seed(runc_args.atoi(str(seed)))[0]  # atoi clamps, then wraps


def test_site_is_self_contained(site: Path) -> None:
    html = (site / "index.html").read_text() + (site / "app.js").read_text()
    assert "http://" not in html.replace("http://127.0.0.1", "") and "cdn" not in html.lower()
    for path in ("v86/libv86.js", "v86/v86.wasm", "bios/seabios.bin", "bios/vgabios.bin", "boot.img",
                 "pyodide/pyodide.asm.wasm", "pyodide/python_stdlib.zip", "py/bootllama/image.py",
                 "engine/greedy.bin", "engine/sampling.bin", "model/stories260K.bin", "model/tok512.bin"):
        assert (site / path).is_file(), path
    licences = (site / "LICENSES.txt").read_text()
    for name in ("BSD-2-Clause", "LGPL-3.0", "MPL-2.0", "MIT", "Redistribution and use in source and binary forms",
                 "GNU LESSER GENERAL PUBLIC LICENSE", "Mozilla Public License"):
        assert name in licences, name
    meta = json.loads((site / "site.json").read_text())
    assert set(meta["engines"]) == {"greedy", "sampling"}
    assert (site / "py/bootllama/image.py").read_bytes() == Path(pagebuild.image.__file__).read_bytes()
    # the site carries the repository's licence text unchanged
    assert (Path(__file__).parents[1] / "LICENSE").read_bytes() in licences.encode()


def test_web_serve_prints_its_url_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "s"
    # Ctrl-C's SIGINT reaches it with its default action even where the tests run in the
    # background of a shell (which starts them with SIGINT ignored, and children inherit that)
    proc = subprocess.Popen([sys.executable, "-m", "bootllama.cli", "web", "-n", "8", "-o", str(out), "--serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(pagebuild.__file__).parents[1])},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"serving {out} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "index.html", timeout=10) as r:
            assert b'id="text"' in r.read()
        with urllib.request.urlopen(url + "v86/v86.wasm", timeout=10) as r:
            assert r.headers["Content-Type"] == "application/wasm"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_web_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["web", "-o", str(tmp_path / "a"), "-t", "0.8", "-p", "0.9"]) == 1
    assert "top-p" in capsys.readouterr().err
    assert main(["web", str(tmp_path / "missing.bin"), "-z", str(TOK), "-o", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1
    assert main(["web", "-i", "a " * 600, "-o", str(tmp_path / "c")]) == 1
    assert "context" in capsys.readouterr().err


def test_page_modules_import_without_numpy() -> None:
    # Pyodide's core has no NumPy (nor regex, jinja2, gguf): what the page imports must not need them
    code = ("import sys\nfor m in ('numpy', 'regex', 'jinja2', 'gguf'): sys.modules[m] = None\n"
            "from bootllama import pagebuild\n"
            "got = sorted([m.split('.')[-1] + '.py' for m in sys.modules if m.startswith('bootllama.')]\n"
            "              + ['__init__.py'])\n"
            f"assert got == sorted({list(web.PAGE_MODULES)!r}), got")
    env = {**os.environ, "PYTHONPATH": str(Path(pagebuild.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


def test_engine_spec_round_trip(site: Path) -> None:
    from bootllama import image

    eng = image.assemble(("SAMPLING",))
    spec = json.loads(json.dumps(pagebuild.engine_spec(eng, "engine/sampling.bin")))
    assert pagebuild.load_engine(site, spec) == eng


def _prompts(page, n: int) -> None:  # type: ignore[no-untyped-def]
    """Wait until COM1 has carried ``n`` "Prompt: " guides."""
    page.wait_for_function(f"(window.bootllama.com1.match(/Prompt: /g) || []).length >= {n} || "
                           "document.getElementById('status').classList.contains('error')", timeout=PAGE_TIMEOUT_MS)


def test_page_types_prompts_to_the_story_machine(browser, base_url: str, site: Path, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The visitor types prompts into the page: they go to the story machine's COM1 (the site's
    talk.img, built with it: no image is built in the browser) and each story is run.c's for that
    -i; "end" sends EOT and the PC finishes."""
    page = browser.new_page()
    page.goto(base_url)
    assert _wait(page) == "done"
    first, second = "Lily and Tom", "A cat"
    page.fill("#line", first)
    page.click("#send")
    _prompts(page, 2)
    page.fill("#line", second)  # the same PC, the next prompt
    page.click("#send")
    _prompts(page, 3)
    page.click("#eot")
    assert _wait(page, 2) == "done"
    com1 = page.evaluate("window.bootllama.com1")
    expected = b"Prompt: " + _reference(model, first, 0) + b"Prompt: " + _reference(model, second, 0) + b"Prompt: \n"
    assert com1 == expected.decode()
    # the page shows the typed lines after the guides, as a terminal echoes them
    assert page.text_content("#text") == com1.replace("Prompt: ", "Prompt: {}\n", 2).format(first, second)
    # it booted the site's story machine, the image `bootllama build -i -` writes; Pyodide never started
    booted = page.evaluate("window.bootllama.image.sha256")
    assert booted == hashlib.sha256((site / "talk.img").read_bytes()).hexdigest()
    assert booted == _built_sha(tmp_path, "-i", "-", "-s", str(SITE_SEED))
    assert page.evaluate("pyodideReady === null")
    page.close()
