"""bootllama: a Llama-2 inference engine in a 512-byte boot sector, and its Python toolkit."""

from bootllama.errors import BootllamaError

__version__ = "0.1.0"

__all__ = ["BootllamaError", "__version__"]
