"""Write the web page's site, open it in headless Chromium (Debian's, through Playwright), wait
until the default story is done, and save a screenshot of the page (default docs/web.png).

    python tools/web_screenshot.py [-o docs/web.png] [--query '?i=...&n=..&t=..&s=..']
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from bootllama import web
from bootllama.cli import main as bootllama

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", dest="output", type=Path, default=ROOT / "docs" / "web.png")
    parser.add_argument("--query", default="", help="URL query naming a story (default: the site's own)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for 'done'")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bootllama-web-") as tmp:
        site = Path(tmp, "site")
        if bootllama(["web", "-s", "42", "-o", str(site)]) != 0:
            return 1
        handler = functools.partial(web._Handler, directory=str(site))
        with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
            threading.Thread(target=server.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{server.server_address[1]}/index.html{args.query}"
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                            args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 680})
                page.goto(url)
                page.wait_for_function("window.bootllama && window.bootllama.runs >= 1 || "
                                       "document.getElementById('status').classList.contains('error')",
                                       timeout=args.timeout * 1000)
                status = page.text_content("#status")
                if status != "done":
                    print(f"web_screenshot: the page says {status!r}", file=sys.stderr)
                    return 1
                args.output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.output), full_page=True)
                browser.close()
            server.shutdown()
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
