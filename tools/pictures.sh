#!/usr/bin/env bash
# Regenerate the README's pictures: docs/size_map.png (bytes per routine of the engine) and
# docs/screenshot.png (the PC's screen at the end of the default story, booted in QEMU) and
# docs/uefi.png (the same under OVMF: the UEFI engine's screen).
# docs/web.png is the web page (bootllama web) in headless Chromium once the default story is done.
# Uses .venv/bin/python when it exists (make setup), else python3 with src/ on the path.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
"$py" tools/size_map.py -o docs/size_map.png
"$py" tools/screenshot.py -o docs/screenshot.png
"$py" tools/screenshot.py --uefi -o docs/uefi.png
"$py" tools/web_screenshot.py -o docs/web.png
