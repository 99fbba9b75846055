"""llama2.c's tokenizer.bin and its byte-pair encoder, with run.c's exact behaviour.

File layout: int32 max_token_length, then for each piece: float32 score, int32 byte length,
the bytes. The file does not record how many pieces it holds; the model's vocab_size says.

Pieces are kept as raw bytes. Where run.c treats a piece as a C string (lookups, merges,
printing) only the bytes before a NUL count, and so it is here.

A byte-level BPE tokenizer (GPT-2's kind, converted from a GGUF file) is a tokenizer.bin
whose pieces are the tokens' raw bytes (special tokens are empty pieces) plus a sidecar JSON
beside it, ``TOK.bin.json`` (see :func:`sidecar_path`), which holds what tokenizer.bin cannot:
the merges, the pre-tokenizer, the special tokens, the BOS and stop ids and the chat template.
``Tokenizer.load`` returns a :class:`ByteLevelTokenizer` when the sidecar is there.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from bootllama.errors import BootllamaError

BOS = 1
EOS = 2
_C_SPACE = frozenset(b" \t\n\v\f\r")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _float32(x: float) -> float:
    """``x`` rounded to float32 (to nearest, ties to even; past the largest float, infinity)."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


# run.c starts the merge search at best_score = -1e10 (a float)
_NO_SCORE = _float32(-1e10)


def _cstr(piece: bytes) -> bytes:
    nul = piece.find(b"\0")
    return piece if nul < 0 else piece[:nul]


def _c_printable(byte: int) -> bool:
    """isprint(c) || isspace(c) in the C locale."""
    return 0x20 <= byte <= 0x7E or byte in _C_SPACE


def scan_byte_piece(piece: bytes) -> int | None:
    """What ``sscanf(piece, "<0x%02hhX>", &b)`` stores in b when it returns 1, else None.

    As in glibc: whitespace after the literal "<0x" is skipped, the two-character field may
    hold a sign or a "0x" prefix, and the closing ">" is never checked.
    """
    if not piece.startswith(b"<0x"):
        return None
    s = _cstr(piece)[3:]
    i = 0
    while i < len(s) and s[i] in _C_SPACE:
        i += 1
    width = 2
    negative = False
    if i < len(s) and s[i] in b"+-":
        negative = s[i] == ord("-")
        i += 1
        width -= 1
    digits = b""
    if width and i < len(s) and s[i] == ord("0"):
        digits = b"0"
        i += 1
        width -= 1
        if width and i < len(s) and s[i] in b"xX":
            i += 1
            width -= 1
    while width and i < len(s) and s[i] in _HEX:
        digits += s[i : i + 1]
        i += 1
        width -= 1
    if not digits:
        return None
    value = int(digits, 16)
    return (-value if negative else value) & 0xFF


SIDECAR_FORMAT = "bootllama-tokenizer-sidecar"
SIDECAR_VERSION = 1
BYTELEVEL_BPE = "bytelevel-bpe"


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where a tokenizer.bin's sidecar lives: the same path with ``.json`` appended (``tok.bin.json``)."""
    return Path(os.fspath(path) + ".json")


class Tokenizer:
    """The vocabulary (pieces and scores) of a llama2.c tokenizer.

    ``byte_piece_base``: the id of ``<0x00>`` when ids base..base+255 are the byte pieces
    (3 in llama2.c's tokenizers), None when the vocabulary has no byte pieces.
    ``stop_id``: the token that ends generation (run.c: BOS).
    """

    byte_piece_base: int | None = 3
    stop_id: int = BOS

    def __init__(self, pieces: Sequence[bytes], scores: Sequence[float], max_token_length: int) -> None:
        if len(pieces) != len(scores):
            raise BootllamaError("tokenizer needs one score per piece")
        self.pieces: list[bytes] = [bytes(p) for p in pieces]
        self.scores: list[float] = [_float32(s) for s in scores]
        self.max_token_length = int(max_token_length)
        self._c = [_cstr(p) for p in self.pieces]

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @classmethod
    def load(cls, path: str | os.PathLike[str], vocab_size: int) -> Tokenizer:
        """Read the first ``vocab_size`` pieces of a tokenizer.bin; the whole file must parse.

        With a sidecar beside it (:func:`sidecar_path`) the result is a :class:`ByteLevelTokenizer`.
        """
        pieces, scores, max_len = cls._read(path, vocab_size)
        side = sidecar_path(path)
        if side.is_file():
            return ByteLevelTokenizer(pieces, scores, max_len, _read_sidecar(side, len(pieces)))
        return cls(pieces, scores, max_len)

    @staticmethod
    def _read(path: str | os.PathLike[str], vocab_size: int) -> tuple[list[bytes], list[float], int]:
        name = os.fspath(path)
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < 4:
            raise BootllamaError(f"{name}: {len(data)} bytes is too short for a tokenizer file")
        (max_len,) = struct.unpack_from("<i", data)
        if max_len <= 0:
            raise BootllamaError(f"{name}: corrupt tokenizer: max_token_length is {max_len}")
        pieces: list[bytes] = []
        scores: list[float] = []
        off = 4
        while off < len(data):
            if off + 8 > len(data):
                raise BootllamaError(f"{name}: truncated tokenizer: piece {len(pieces)} is cut short")
            score, n = struct.unpack_from("<fi", data, off)
            if n < 0 or n > max_len:
                raise BootllamaError(
                    f"{name}: corrupt tokenizer: piece {len(pieces)} has length {n} "
                    f"(max_token_length is {max_len})"
                )
            if off + 8 + n > len(data):
                raise BootllamaError(f"{name}: truncated tokenizer: piece {len(pieces)} is cut short")
            pieces.append(data[off + 8 : off + 8 + n])
            scores.append(score)
            off += 8 + n
        if len(pieces) < vocab_size:
            raise BootllamaError(
                f"{name}: tokenizer has {len(pieces)} pieces but the model's vocabulary has {vocab_size}"
                " (mismatched tokenizer?)"
            )
        if len(pieces) > vocab_size:  # run.c reads the first vocab_size pieces and prints garbage
            raise BootllamaError(
                f"{name}: tokenizer has {len(pieces)} pieces but the model's vocabulary has {vocab_size}: "
                "it is another model's tokenizer (run.c would read its first pieces and print garbage)"
            )
        return pieces, scores, max_len

    def to_bytes(self) -> bytes:
        """The tokenizer.bin serialisation of this vocabulary."""
        out = [struct.pack("<i", self.max_token_length)]
        for piece, score in zip(self.pieces, self.scores, strict=True):
            out.append(struct.pack("<fi", score, len(piece)) + piece)
        return b"".join(out)

    @cached_property
    def _lookup(self) -> dict[bytes, int]:
        """C-string -> id, as run.c's bsearch over the (stably) qsorted vocabulary finds it."""
        order = sorted(range(len(self._c)), key=self._c.__getitem__)
        table: dict[bytes, int] = {}
        duplicated = set()
        for i in order:
            if self._c[i] in table:
                duplicated.add(self._c[i])
            else:
                table[self._c[i]] = i
        for key in duplicated:  # which of the equal entries bsearch lands on
            lo, hi = 0, len(order)
            while lo < hi:
                mid = (lo + hi) // 2
                probe = self._c[order[mid]]
                if key < probe:
                    hi = mid
                elif key > probe:
                    lo = mid + 1
                else:
                    table[key] = order[mid]
                    break
        return table

    @cached_property
    def longest_cover(self) -> int | None:
        """The most text bytes one token can stand for: the longest piece (a byte piece stands for
        one byte, a merge for what its two halves stand for, which is at most its own piece);
        None when a piece is empty, which breaks that bound."""
        return (min(map(len, self._c)) and max(map(len, self._c))) or None

    def min_tokens(self, text: bytes | str, bos: bool = True) -> int:
        """A lower bound on len(encode(text, bos)), from the byte count alone (no merges run):
        the dummy-prefix space and the text, each token standing for at most longest_cover bytes."""
        cover = self.longest_cover
        if isinstance(text, str):
            text = text.encode("utf-8", "surrogateescape")
        n = len(_cstr(bytes(text)))
        return int(bos) + (-(-(n + 1) // cover) if n and cover else 0)

    def check_fits(self, text: bytes | str | None, context: int, bos: bool = True) -> None:
        """Refuse, before the merges run (they take quadratic time), a prompt that cannot fit in
        ``context`` tokens."""
        if text is None:
            return
        lower = self.min_tokens(text, bos)
        if lower > context:
            n = len(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
            raise BootllamaError(f"prompt of {n} bytes is at least {lower} tokens (no token stands for more "
                                 f"than {self.longest_cover} bytes); the context holds {context}")

    def encode(self, text: bytes | str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids for ``text`` exactly as run.c's encode() produces them."""
        if isinstance(text, str):
            try:
                text = text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise BootllamaError(f"text is not encodable as UTF-8: {e.reason}") from None
        text = _cstr(bytes(text))
        lookup = self._lookup
        tokens: list[int] = [BOS] if bos else []
        if text:
            if b" " not in lookup:
                raise BootllamaError("tokenizer has no ' ' piece for the dummy prefix")
            tokens.append(lookup[b" "])
        start = 0
        for i, byte in enumerate(text):
            if byte & 0xC0 != 0x80:
                start = i  # an ASCII or leading byte starts a new code point
            nxt = text[i + 1] if i + 1 < len(text) else 0
            if nxt & 0xC0 == 0x80 and i + 1 - start < 4:
                continue
            chunk = text[start : i + 1]
            start = i + 1
            found = lookup.get(chunk)
            if found is not None:
                tokens.append(found)
            else:  # byte fallback: ids 3..258 are <0x00>..<0xFF>
                tokens.extend(b + 3 for b in chunk)
        bad = [t for t in tokens if t >= self.vocab_size]
        if bad:
            raise BootllamaError(
                f"text needs byte-fallback token {bad[0]} but the vocabulary has only {self.vocab_size} pieces"
            )
        pieces, scores = self._c, self.scores
        while True:
            best_score, best_id, best_idx = _NO_SCORE, -1, -1
            for i in range(len(tokens) - 1):
                merged = lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
                if merged is not None and scores[merged] > best_score:
                    best_score, best_id, best_idx = scores[merged], merged, i
            if best_idx < 0:
                break
            tokens[best_idx] = best_id
            del tokens[best_idx + 1]
        if eos:
            tokens.append(EOS)
        return tokens

    def _check_id(self, token: int) -> None:
        if not 0 <= token < self.vocab_size:
            raise BootllamaError(f"token id {token} is outside the vocabulary of {self.vocab_size}")

    def decode(self, prev: int, token: int) -> bytes:
        """The C string run.c's decode() returns for ``token`` following ``prev``.

        After BOS a leading space is dropped; a piece like ``<0x0A>`` is that raw byte
        (``<0x00>`` gives the empty string, as a C string would).
        """
        self._check_id(token)
        piece = self._c[token]
        if prev == BOS and piece[:1] == b" ":
            piece = piece[1:]
        byte = scan_byte_piece(piece)
        if byte is not None:
            return bytes([byte]) if byte else b""
        return piece

    def printable(self, prev: int, token: int) -> bytes:
        """What run.c's safe_printf prints for this token: a lone unprintable byte prints nothing."""
        piece = self.decode(prev, token)
        if len(piece) == 1 and not _c_printable(piece[0]):
            return b""
        return piece


def _read_sidecar(path: Path, vocab_size: int) -> dict[str, Any]:
    name = os.fspath(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BootllamaError(f"{name}: tokenizer sidecar is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise BootllamaError(f"{name}: not a bootllama tokenizer sidecar (no \"format\": \"{SIDECAR_FORMAT}\")")
    if data.get("version") != SIDECAR_VERSION or data.get("kind") != BYTELEVEL_BPE:
        raise BootllamaError(f"{name}: unsupported sidecar version {data.get('version')!r} "
                             f"or kind {data.get('kind')!r} (known: version 1, {BYTELEVEL_BPE})")
    if data.get("vocab_size", vocab_size) != vocab_size:
        raise BootllamaError(f"{name}: tokenizer sidecar is for a vocabulary of {data.get('vocab_size')}, "
                             f"the model's has {vocab_size} (mismatched tokenizer?)")
    try:
        ids = [data["bos_id"], data["stop_id"], *(t["id"] for t in data["special_tokens"])]
        pre = data["pre_tokenizer"]
        ok = (all(isinstance(i, int) and 0 <= i < vocab_size for i in ids)
              and all(isinstance(m, str) and m.count(" ") == 1 for m in data["merges"])
              and isinstance(pre["regex"], str) and isinstance(pre["individual_digits"], bool)
              and all(isinstance(t["text"], str) and t["text"] for t in data["special_tokens"]))
    except (KeyError, TypeError) as e:
        raise BootllamaError(f"{name}: tokenizer sidecar lacks or mangles a field ({e})") from None
    if not ok:
        raise BootllamaError(f"{name}: tokenizer sidecar has an id outside the vocabulary of {vocab_size}, "
                             "a malformed merge or a malformed special token")
    return data


class ByteLevelTokenizer(Tokenizer):
    """A byte-level BPE vocabulary (GPT-2's kind): raw-byte pieces in tokenizer.bin plus its sidecar.

    Encoding follows Hugging Face ``tokenizers`` (see :mod:`bootllama.bpe`); decoding and
    printing stay run.c's (special tokens are empty pieces and print nothing).
    """

    byte_piece_base = None

    def __init__(self, pieces: Sequence[bytes], scores: Sequence[float], max_token_length: int,
                 sidecar: dict[str, Any]) -> None:
        super().__init__(pieces, scores, max_token_length)
        from bootllama.bpe import ByteLevelBPE, bytes_to_unicode

        self.sidecar = sidecar
        self.stop_id = int(sidecar["stop_id"])
        self.bos_id = int(sidecar["bos_id"])
        self.chat_template: str | None = sidecar.get("chat_template")
        self.special_tokens = {int(t["id"]): t["text"] for t in sidecar["special_tokens"]}
        b2u = bytes_to_unicode()
        vocab = {"".join(b2u[b] for b in piece): i for i, piece in enumerate(self.pieces)
                 if i not in self.special_tokens and piece}
        merges = [tuple(m.split(" ")) for m in sidecar["merges"]]
        pre = sidecar["pre_tokenizer"]
        self.bpe = ByteLevelBPE(vocab, merges, {t: i for i, t in self.special_tokens.items()},  # type: ignore[arg-type]
                                pre["regex"], pre["individual_digits"])

    @cached_property
    def longest_cover(self) -> int | None:
        """The most text bytes one token stands for: its raw-byte piece, or a special token's text."""
        pieces = [len(p) for i, p in enumerate(self.pieces) if i not in self.special_tokens]
        return max([*pieces, *(len(t.encode("utf-8")) for t in self.special_tokens.values())]) or None

    def min_tokens(self, text: bytes | str, bos: bool = True) -> int:
        """A lower bound on len(encode(text, bos)) from the byte count (the BOS may be the text's own)."""
        n = len(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
        cover = self.longest_cover
        return max(int(bos), -(-n // cover) if cover else 0)

    def token_text(self, token: int) -> str:
        """A token's text: a special token's name, else its bytes as UTF-8 (replacement chars if cut)."""
        self._check_id(token)
        return self.special_tokens.get(token) or self.pieces[token].decode("utf-8", "replace")

    def encode(self, text: bytes | str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids for ``text`` (special tokens recognised); with ``bos`` token 1 first, as the
        engine always starts from it, unless the text's own first token already is 1."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BootllamaError(f"text is not valid UTF-8: {e.reason} at byte {e.start}") from None
        ids = self.bpe.encode(text)
        bad = [t for t in ids if t >= self.vocab_size]
        if bad:
            raise BootllamaError(f"text needs token {bad[0]} but the vocabulary has only {self.vocab_size} pieces")
        if bos and ids[:1] != [BOS]:
            ids.insert(0, BOS)
        if eos:
            ids.append(self.stop_id)
        return ids

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write tokenizer.bin and its sidecar, each atomically."""
        from bootllama.checkpoint import atomic_write

        with atomic_write(sidecar_path(path)) as f:
            f.write(json.dumps(self.sidecar, ensure_ascii=False, indent=1).encode("utf-8"))
        with atomic_write(path) as f:
            f.write(self.to_bytes())
