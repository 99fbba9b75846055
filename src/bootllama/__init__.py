"""bootllama: a Llama-2 inference engine in a 512-byte boot sector, and its Python toolkit."""

import sys as _sys

if _sys.argv and _sys.argv[0].rsplit("/", 1)[-1] == "bootllama":
    # the `bootllama` command itself, before anything else of it loads: SIGINT, SIGTERM and SIGHUP
    # are held until bootllama.cli.main can clean up and say so in one line (bootllama.interrupts)
    from bootllama import interrupts as _interrupts

    _interrupts.install()
    _interrupts.hold_startup()

from bootllama.errors import BootllamaError

__version__ = "0.1.0"

__all__ = ["BootllamaError", "__version__"]
