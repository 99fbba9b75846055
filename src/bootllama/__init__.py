"""bootllama: a Llama-2 inference engine in a 512-byte boot sector, and its Python toolkit."""

import sys as _sys

held_signals: list[int] | None = None  # signals that came while the command loaded (bootllama.interrupts)


def hold_signals() -> None:
    """The command's first act: record SIGINT, SIGTERM and SIGHUP (the first one; later ones are
    ignored) while the program loads; bootllama.cli.main raises what came once it can clean up.
    The C module only: nothing else needs to load first."""
    global held_signals
    import _signal

    held_signals = []

    def hold(signum: int, _frame: object) -> None:
        if held_signals is not None and not held_signals:
            held_signals.append(signum)

    for s in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(s, hold)


if _sys.argv and _sys.argv[0].rsplit("/", 1)[-1] == "bootllama":  # the `bootllama` command itself
    hold_signals()

from bootllama.errors import BootllamaError  # noqa: E402 (after the signals are held)

__version__ = "0.1.0"

__all__ = ["BootllamaError", "__version__"]
