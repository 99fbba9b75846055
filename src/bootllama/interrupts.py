"""Interrupts that clean up: SIGINT, SIGTERM and SIGHUP all end a command the same way.

``install()`` (the command line calls it first) makes each of the three signals raise
``Interrupted`` (a KeyboardInterrupt) in the main thread, so every ``finally`` and ``with`` on
the way out runs: temporary files go, the emulator's process group is killed.  The first signal
wins; later ones are ignored, so a second Ctrl-C or a ``kill`` during the clean-up cannot cut
it short.  Code that creates something to clean up (a temporary file, a child process) and
registers its clean-up, or that cleans up, runs inside ``deferred()``: a signal that arrives
there is raised at its end, never between creating a thing and taking charge of it.

No ``signal`` import at module level: the web page imports this (through checkpoint) under
Pyodide, where only ``deferred`` is used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

NAMES = {1: "SIGHUP", 2: "SIGINT", 15: "SIGTERM"}

_depth = 0
_pending: int | None = None


class Interrupted(KeyboardInterrupt):
    """A signal asked the command to stop; ``signum`` says which (exit status 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum = signum


def interrupt(signum: int) -> None:
    """What the signal handler does: raise Interrupted now, or at the end of ``deferred()``."""
    global _pending
    if _depth > 0:
        if _pending is None:
            _pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold signals off for the block; one that came meanwhile is raised as it ends."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


def install() -> Callable[[], None]:
    """Route SIGINT, SIGTERM and SIGHUP to ``interrupt`` (first one only); returns a function that
    puts the previous handlers back (for callers in a longer-lived process, such as the tests)."""
    import signal

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, _frame: object) -> None:
        for s in signals:  # the first signal wins: the clean-up it starts runs to its end
            signal.signal(s, signal.SIG_IGN)
        interrupt(signum)

    previous = {s: signal.signal(s, handler) for s in signals}

    def restore() -> None:
        global _pending
        for s, h in previous.items():
            signal.signal(s, h)
        _pending = None

    return restore


@contextlib.contextmanager
def temp_dir(prefix: str = "bootllama-") -> Iterator[Path]:
    """A private temporary directory, removed on the way out whatever happens (interrupts included)."""
    path: Path | None = None
    try:
        with deferred():  # a signal here is raised once ``path`` is set, inside the try
            path = Path(tempfile.mkdtemp(prefix=prefix))
        yield path
    finally:
        if path is not None:
            with deferred():
                shutil.rmtree(path, ignore_errors=True)


def remove(path: str | os.PathLike[str]) -> None:
    """Unlink a file if it is there, signals held off."""
    with deferred(), contextlib.suppress(OSError):
        os.unlink(path)
