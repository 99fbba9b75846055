"""The one exception type the toolkit raises for bad input."""


class BootllamaError(Exception):
    """A user-facing failure: bad file, bad argument, impossible request.

    The message is a single line, shown by the CLI as ``bootllama: error: <msg>``.
    """
