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


# three submits within 0.2 s, each with other settings (the form's values as typed)
QUICK_SUBMITS = """async (settings) => {
    window.bootllama.before = window.bootllama.runs;
    for (const [i, n, t, s] of settings) {
        Object.assign(document.getElementById("prompt"), { value: i });
        Object.assign(document.getElementById("steps"), { value: n });
        Object.assign(document.getElementById("temperature"), { value: t });
        Object.assign(document.getElementById("seed"), { value: s });
        document.getElementById("boot").click();
        await new Promise((resolve) => setTimeout(resolve, 100));
    }
}"""


def test_page_boots_one_story_at_a_time(browser, base_url: str, model) -> None:  # type: ignore[no-untyped-def]
    # "boot again" clicked three times within 0.3 s, first while the default story runs, then
    # while Pyodide starts: each click cancels the boot in flight and the last one's story is shown
    # (before, the page ended "done" with an empty #text: a cancelled boot cleared the new story)
    page = browser.new_page()
    page.goto(base_url)
    page.wait_for_function("document.getElementById('text').textContent.length > 0", timeout=PAGE_TIMEOUT_MS)
    seed = "12345678901234567890123456"  # 26 digits: atoi clamps, and a JavaScript number would round it
    page.evaluate(QUICK_SUBMITS, [["Tom", "20", "0", "1"], ["Sue", "30", "0", "2"], ["Lily had a", "40", "0.8", seed]])
    page.wait_for_function("window.bootllama.runs > window.bootllama.before || "
                           "document.getElementById('status').classList.contains('error')", timeout=PAGE_TIMEOUT_MS)
    assert page.text_content("#status") == "done"
    want = _reference(model, "Lily had a", 40, 0.8, 2**64 - 1).decode()  # atoi's -1, sign-extended
    assert page.text_content("#text") == want
    page.wait_for_timeout(1000)  # no cancelled boot finishes later, nor writes into the story
    assert page.evaluate("[window.bootllama.runs - window.bootllama.before, window.bootllama.cancelled]") == [1, 3]
    assert page.text_content("#text") == want and page.text_content("#status") == "done"
    # the seed as typed, in the form, the link and the stats, and the seed run.c's atoi makes of it
    assert page.input_value("#seed") == seed and f"s={seed}" in page.url and "i=Lily%20had%20a&n=40" in page.url
    assert f"seed {seed} (run.c's atoi reads 18446744073709551615)" in str(page.text_content("#stats"))
    page.close()


STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside. "


def test_page_rejects_settings_without_changing_the_link(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(base_url)
    page.wait_for_function("document.getElementById('text').textContent.length > 0", timeout=PAGE_TIMEOUT_MS)
    url = page.url
    rejected = {
        # a setting that is not a number
        ("a", "40", "warm", "1"): 'temperature must be a number, not "warm"',
        # too long for the context from its byte count alone (7 bytes at most a token)
        ("a" * 4000, "40", "0", "1"): "prompt is at least 573 tokens; the context holds 512",
        # 3,240 bytes: fits that bound, but not the fewest pieces the text splits into (run.c's
        # encode makes 1,042 tokens of it, and Python's takes seconds to say so)
        (STORY * 40, "40", "0", "1"): "tokens; the context holds 512",
        # a link too long for a web server (a seed of 9,000 digits is a whole number, as run.c's
        # atoi reads it; a prompt that fits this model's context makes no link that long)
        ("a", "40", "0", "1" * 9000): "the link for these settings would be 90",
    }
    for settings, message in rejected.items():
        page.evaluate(QUICK_SUBMITS, [list(settings)])
        page.wait_for_function("(m) => document.getElementById('status').textContent.includes(m)", arg=message,
                               timeout=10_000)
        assert page.evaluate("document.getElementById('status').classList.contains('error')")
        # the old story is gone, the link is the one before, and the rejected setting stays in the form
        assert (page.text_content("#text"), page.text_content("#stats"), page.url) == ("", "", url)
        assert page.input_value("#prompt") == settings[0] and page.input_value("#seed") == settings[3]
        if settings[0] == STORY * 40:  # the bound is a lower bound, and close
            least = int(str(page.text_content("#status")).split()[4])
            assert 900 < least <= len(Tokenizer.load(TOK, 512).encode(STORY * 40)) == 1042
    page.wait_for_timeout(500)  # the cancelled story does not come back
    assert page.text_content("#text") == "" and page.evaluate("window.bootllama.cancelled") == 1
    assert page.evaluate("window.bootllama.runs") == 0
    # none of these started Python: a long prompt is refused in a moment, not after its merges
    assert page.evaluate("typeof pyodide") == "undefined" and "pyodide.asm.wasm" not in page.evaluate(
        "performance.getEntriesByType('resource').map((e) => e.name).join(' ')")
    page.close()


BOUND_PROMPTS = ["", "a", "Once upon a time", STORY * 3, "Ünïcode ☃ and <0x41> 日本語", "<0x41><0x42>", "a\0b c",
                 "  two  spaces\nand a line",
                 "\u2122\u20ac\u2026\u201d\u201c\u2019\u2018\u2014\u2013", "x" * 700, "the " * 300]


def test_page_prompt_bound_is_a_lower_bound(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    # the page's bound never refuses a prompt run.c's encoder fits (and is close on plain text)
    tok = Tokenizer.load(TOK, 512)
    page = browser.new_page()
    page.goto(f"{base_url}?t=abc")  # a rejected setting: nothing boots
    got = page.evaluate("(prompts) => Promise.all(prompts.map(window.bootllama.leastTokens))", BOUND_PROMPTS)
    want = [len(tok.encode(p.encode().split(b"\0")[0])) for p in BOUND_PROMPTS]
    assert all(g <= w for g, w in zip(got, want, strict=True)), list(zip(got, want, strict=True))
    assert got[:4] == want[:4]  # plain English splits as run.c's merges split it
    page.close()


def test_prompt_bound_kind(tmp_path: Path) -> None:
    tok = Tokenizer.load(TOK, 512)
    assert web.prompt_bound(tok) == "pieces"
    # a piece holding a byte piece's text: a merge with a byte-fallback token could cover other
    # text than its piece, so the page falls back to the byte count
    odd = Tokenizer([*tok.pieces[:-1], b"<0x41>a"], tok.scores, tok.max_token_length)
    assert web.prompt_bound(odd) == "bytes"
    other_bytes = Tokenizer([*tok.pieces[:3], b"A", *tok.pieces[4:]], tok.scores, tok.max_token_length)
    assert web.prompt_bound(other_bytes) == "bytes"
    # an empty byte piece: merging with it adds a byte and no text to a piece, so no bound holds
    empty = Tokenizer([*tok.pieces[:3], b"\0x", *tok.pieces[4:]], tok.scores, tok.max_token_length)
    assert web.prompt_bound(empty) == "none"


def test_page_stops_a_short_disk_with_the_sectors_message(browser, base_url: str, site: Path) -> None:  # type: ignore[no-untyped-def]
    # the site's image cut to 1,000 sectors (a broken transfer): !disk in a moment, as on QEMU
    cut = (site / "boot.img").read_bytes()[: 1000 * 512]
    page = browser.new_page()
    page.route("**/boot.img", lambda route: route.fulfill(status=200, body=cut,
                                                          headers={"Content-Type": "application/octet-stream"}))
    page.goto(base_url)
    assert _wait(page) == "the sector stopped: !disk (a disk read error, or a BIOS without extended disk reads)"
    page.close()


def test_server_answers_a_too_long_link_with_a_message(browser, base_url: str) -> None:  # type: ignore[no-untyped-def]
    # past http.server's 64 KiB request line: the page's words, not a bare "414"
    page = browser.new_page()
    response = page.goto(base_url + "?i=" + "a" * 70_000)
    assert response is not None and response.status == 414
    assert "This link is too long" in str(page.text_content("h1"))
    assert "type a shorter prompt" in str(page.text_content("#message"))
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


@pytest.mark.slow  # about 60 s: the default story, then two whole-context stories in v86 in the browser
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
