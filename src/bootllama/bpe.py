"""Byte-level BPE (GPT-2's scheme, as Hugging Face ``tokenizers`` runs it): text -> token ids.

The pipeline, for a vocabulary whose token strings are GPT-2 "byte-level unicode":

1. special tokens are cut out of the text first (leftmost match, the longest one at a
   position wins) and become their own ids;
2. each stretch between them is pre-tokenized: with ``individual_digits`` every numeric character (\\p{N})
   is its own piece (``tokenizers``' ``Digits(individual_digits=True)``), then the
   pre-tokenizer regex splits each piece into words (matches and the text between them);
3. each word's UTF-8 bytes are mapped to GPT-2's byte-to-unicode characters (those the
   vocabulary lacks are dropped, as ``tokenizers`` drops them when there is no unknown
   token) and merged pair by pair, always the pair of lowest merge rank first, until no
   listed pair is left;
4. the resulting strings are looked up in the vocabulary.

This module holds no file formats; ``bootllama.tokenizer`` reads the sidecar that feeds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import pairwise

import regex

from bootllama.errors import BootllamaError

# GPT-2's pre-tokenizer regex, as tokenizers' ByteLevel(use_regex=True) uses it
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# llama.cpp's tokenizer.ggml.pre names -> (individual_digits, regex) as the model's own
# tokenizer.json declares them (SmolLM and StarCoder: Digits(individual) then ByteLevel)
PRE_TOKENIZERS: dict[str, tuple[bool, str]] = {
    "gpt2": (False, GPT2_REGEX),
    "default": (False, GPT2_REGEX),
    "smollm": (True, GPT2_REGEX),
    "starcoder": (True, GPT2_REGEX),
}

_DIGIT = regex.compile(r"\p{N}")  # Rust's char::is_numeric: Nd, Nl and No


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the other 68 take the code points from 256 on,
    in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_bytes(token: str) -> bytes | None:
    """The raw bytes a byte-level token string stands for, or None if it is not byte-level."""
    inverse = unicode_to_bytes()
    try:
        return bytes(inverse[c] for c in token)
    except KeyError:
        return None


class ByteLevelBPE:
    """A byte-level BPE encoder over ``vocab`` (token string -> id) and ranked ``merges``."""

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]],
                 special: Mapping[str, int], regex_pattern: str, individual_digits: bool) -> None:
        self.vocab = dict(vocab)
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, (a, b) in enumerate(merges):
            if (a + b) not in self.vocab:
                raise BootllamaError(f"merge {rank} ({a!r} {b!r}) makes {a + b!r}, which is not in the vocabulary")
            self.ranks.setdefault((a, b), rank)
        self.special = dict(special)
        try:
            self.pattern = regex.compile(regex_pattern)
        except regex.error as e:
            raise BootllamaError(f"bad pre-tokenizer regex: {e}") from None
        self.individual_digits = individual_digits
        alternatives = sorted(self.special, key=len, reverse=True)  # longest first at one position
        self._special_re = (regex.compile("|".join(regex.escape(s) for s in alternatives))
                            if alternatives else None)
        self._b2u = bytes_to_unicode()
        self._cache: dict[str, tuple[int, ...]] = {}

    def pre_tokenize(self, text: str) -> list[str]:
        """The words of a text without special tokens."""
        pieces = [text]
        if self.individual_digits:
            pieces = [p for chunk in pieces for p in _isolate(_DIGIT, chunk)]
        return [w for p in pieces for w in _isolate(self.pattern, p)]

    def _bpe(self, word: str) -> tuple[int, ...]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        # a byte whose symbol the vocabulary lacks is dropped before merging, as tokenizers'
        # BPE without an unknown token does (SmolLM2 has no symbols for the bytes 0xF1..0xFF)
        symbols = [c for c in (self._b2u[b] for b in word.encode("utf-8")) if c in self.vocab]
        ranks = self.ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for pair in pairwise(symbols):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        try:
            ids = tuple(self.vocab[s] for s in symbols)
        except KeyError as e:
            raise BootllamaError(f"byte-level symbol {e.args[0]!r} is not in the vocabulary") from None
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, special tokens recognised."""
        ids: list[int] = []
        for chunk, special in self._split_special(text):
            if special:
                ids.append(self.special[chunk])
                continue
            for word in self.pre_tokenize(chunk):
                ids.extend(self._bpe(word))
        return ids

    def _split_special(self, text: str) -> Iterable[tuple[str, bool]]:
        if self._special_re is None:
            if text:
                yield text, False
            return
        start = 0
        for m in self._special_re.finditer(text):
            if m.start() > start:
                yield text[start : m.start()], False
            yield m.group(), True
            start = m.end()
        if start < len(text):
            yield text[start:], False


def _isolate(pattern: regex.Pattern[str], text: str) -> list[str]:
    """Split ``text`` into the matches of ``pattern`` and the (non-empty) stretches between them."""
    out: list[str] = []
    start = 0
    for m in pattern.finditer(text):
        if m.start() > start:
            out.append(text[start : m.start()])
        if m.end() > m.start():
            out.append(m.group())
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out
