"""Interrupts that clean up: SIGINT, SIGTERM and SIGHUP all end a command the same way.

``install()`` (the command line calls it first) makes each of the three signals raise
``Interrupted`` (a KeyboardInterrupt) in the main thread, so every ``finally`` and ``with`` on
the way out runs: temporary files go, the emulator's process group is killed.  The first signal
wins; later ones are ignored, so a second Ctrl-C or a ``kill`` during the clean-up cannot cut
it short.  Code that creates something to clean up (a temporary file, a child process) and
registers its clean-up, or that cleans up, runs inside ``deferred()``: a signal that arrives
there is raised at its end, never between creating a thing and taking charge of it.

Few imports at module level: the command line imports this first of all, to install the
handlers before anything else loads, and the web page imports it (through checkpoint) under
Pyodide, where only ``deferred`` is used.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # (typing, contextlib and signal's enums are not imported: this loads first of all)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path

NAMES = {1: "SIGHUP", 2: "SIGINT", 15: "SIGTERM"}

_depth = 0
_pending: int | None = None
fired: int | None = None  # the signal that asked the command to stop, once one has


class Interrupted(KeyboardInterrupt):
    """A signal asked the command to stop; ``signum`` says which (exit status 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum = signum


def interrupt(signum: int) -> None:
    """What the signal handler does: raise Interrupted now, or at the end of ``deferred()``."""
    global _pending, fired
    fired = signum
    if _depth > 0:
        if _pending is None:
            _pending = signum
        return
    raise Interrupted(signum)


def poll() -> None:
    """Raise the signal that fired if its Interrupted never reached the command: CPython drops
    an exception raised inside some callbacks (an import lock's, a weakref's: "Exception
    ignored in ..."), and a long wait calls this to stop anyway."""
    if fired is not None and _depth == 0:
        raise Interrupted(fired)


def handled() -> None:
    """The command took the signal as its way to end (``web --serve``'s Ctrl-C): poll() lets it be."""
    global fired
    fired = None


def _release() -> None:
    global _depth, _pending
    _depth -= 1
    if _depth == 0 and _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)


class _Deferred:
    def __enter__(self) -> None:
        global _depth
        _depth += 1

    def __exit__(self, *_exc: object) -> None:
        _release()


def deferred() -> AbstractContextManager[None]:
    """Hold signals off for the block; one that came meanwhile is raised as it ends."""
    return _Deferred()


def raise_held() -> None:
    """Raise the signal that came while the command loaded (bootllama.hold_signals), if any."""
    import bootllama

    held = bootllama.held_signals
    bootllama.held_signals = None
    if held:
        raise Interrupted(held[0])


def install() -> Callable[[], None]:
    """Route SIGINT, SIGTERM and SIGHUP to ``interrupt`` (the first one only: later ones are
    ignored, so the clean-up it starts runs to its end); returns a function that puts the
    previous handlers back (for callers in a longer-lived process, such as the tests)."""
    import _signal  # the C module: signal.py would load enum first

    signals = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)

    def handler(signum: int, _frame: object) -> None:
        for s in signals:
            _signal.signal(s, _signal.SIG_IGN)
        interrupt(signum)

    previous = {s: _signal.signal(s, handler) for s in signals}

    def restore() -> None:
        global _pending, fired
        for s, h in previous.items():
            _signal.signal(s, h)
        _pending = fired = None  # (a later command in the same process starts afresh)

    return restore


def temp_dir(prefix: str = "bootllama-") -> AbstractContextManager[Path]:
    """A private temporary directory, removed on the way out whatever happens (interrupts included)."""
    import contextlib
    import shutil
    import tempfile
    from pathlib import Path

    @contextlib.contextmanager
    def manage() -> Iterator[Path]:
        path: Path | None = None
        try:
            with deferred():  # a signal here is raised once ``path`` is set, inside the try
                path = Path(tempfile.mkdtemp(prefix=prefix))
            yield path
        finally:
            if path is not None:
                with deferred():
                    shutil.rmtree(path, ignore_errors=True)

    return manage()


def remove(path: str | os.PathLike[str]) -> None:
    """Unlink a file if it is there, signals held off."""
    with deferred():
        try:  # noqa: SIM105 (contextlib is not loaded yet when the command starts)
            os.unlink(path)
        except OSError:
            pass
