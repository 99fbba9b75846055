"""The tables the engine's encoder (``asm/encode.inc``) reads beside tokenizer.bin.

One blob, written into the image at address ``base``; every address in it is absolute in the
engine's space. Its first dword says which encoder runs:

**Kind 0, run.c's encode()** (a llama2.c tokenizer.bin): the blob holds, as run.c's
``sorted_vocab`` does, what a binary search over the pieces needs; the pieces, their lengths
and scores stay in tokenizer.bin (at ``tokenizer_addr``), which the engine reads as it is.

    +0   0 (the kind)
    +4   the id of " " (run.c's dummy prefix: its lookup, done once here)
    +8   n, the number of distinct C strings among the pieces
    +12  the address of the sorted index
    +32  by id: the address of each piece's record in tokenizer.bin (float32 score, int32
         length, the bytes), one dword per id
    then the sorted index: n dwords, the id each distinct C string (bytes before a NUL) looks
         up to, in strcmp order; where pieces repeat, the id run.c's bsearch lands on (as
         ``Tokenizer._lookup`` finds it), so any binary search finds what run.c's finds

Size: 32 + 4 * vocab_size + 4 * n bytes (the 32,000-piece tokenizer.bin: 256,032; tok512: 4,128).

**Kind 1, byte-level BPE** (a converted GGUF with its sidecar, GPT-2's pre-tokenizer regex):

    +0   1 (the kind)
    +4   1 if digits are split one by one (``individual_digits``), else 0
    +8   the number of merge pairs
    +12  the address of the special tokens
    +32  the class of each ASCII byte (128 bytes): 1 letter (\\p{L}), 2 digit (\\p{N}),
         4 space (\\s), 8 anything else, as the ``regex`` module classes them
    +160 each ASCII byte's id (128 dwords; -1: the vocabulary has no symbol for it, dropped)
    +672 the merge pairs, sorted by key: key = (id a << 16) | id b, then
         (rank << 16) | the id of the merged token (two dwords each)
    then the special tokens whose text is ASCII, longest first as ``bpe.ByteLevelBPE`` tries
         them: a length byte, the id (dword), the text; a zero length byte ends the list

Size for SmolLM2 (48,900 merges): about 392 KB.
"""

from __future__ import annotations

import struct

from bootllama.errors import BootllamaError
from bootllama.tokenizer import ByteLevelTokenizer, Tokenizer

KIND_RUNC = 0
KIND_BPE = 1
HEADER = 32
KEY_BUFFER = 120  # the encoder's key buffer on the stack: two pieces and a NUL must fit
CLASS_L, CLASS_N, CLASS_S, CLASS_O = 1, 2, 4, 8
BYTES_AT = HEADER + 128
PAIRS_AT = BYTES_AT + 4 * 128


def encoder_tables(tok: Tokenizer, base: int, tokenizer_addr: int) -> bytes:
    """The blob for ``tok``, to be placed at ``base``, with tokenizer.bin at ``tokenizer_addr``."""
    if isinstance(tok, ByteLevelTokenizer):
        return _bpe_tables(tok, base)
    return _runc_tables(tok, base, tokenizer_addr)


def _runc_tables(tok: Tokenizer, base: int, tokenizer_addr: int) -> bytes:
    lookup = tok._lookup
    if b" " not in lookup:
        raise BootllamaError("tokenizer has no ' ' piece for the dummy prefix: the engine cannot encode with it")
    if tok.vocab_size < 259:
        raise BootllamaError(f"tokenizer has {tok.vocab_size} pieces: run.c's byte fallback needs ids up to 258")
    longest = max(len(c) for c in tok._c)
    if 2 * longest + 1 > KEY_BUFFER:
        raise BootllamaError(f"tokenizer has a piece of {longest} bytes: the engine's encoder takes at most "
                             f"{(KEY_BUFFER - 1) // 2}")
    records = []
    off = tokenizer_addr + 4
    for piece in tok.pieces:
        records.append(off)
        off += 8 + len(piece)
    keys = sorted(lookup)
    sorted_at = base + HEADER + 4 * tok.vocab_size
    head = struct.pack("<5I", KIND_RUNC, lookup[b" "], len(keys), sorted_at, 0).ljust(HEADER, b"\0")
    return head + struct.pack(f"<{len(records)}I", *records) + struct.pack(f"<{len(keys)}I", *(lookup[k] for k in keys))


def ascii_classes() -> bytes:
    """Each ASCII byte's class for GPT-2's pre-tokenizer, as the ``regex`` module sees it."""
    import regex

    out = bytearray()
    for b in range(128):
        c = chr(b)
        out.append(CLASS_L if regex.match(r"\p{L}", c) else CLASS_N if regex.match(r"\p{N}", c)
                   else CLASS_S if regex.match(r"\s", c) else CLASS_O)
    return bytes(out)


def _bpe_tables(tok: ByteLevelTokenizer, base: int) -> bytes:
    from bootllama.bpe import GPT2_REGEX, bytes_to_unicode

    bpe = tok.bpe
    if bpe.pattern.pattern != GPT2_REGEX:
        raise BootllamaError("the engine's encoder knows GPT-2's pre-tokenizer only, not this tokenizer's")
    if tok.vocab_size > 0x10000 or len(bpe.ranks) > 0x10000:
        raise BootllamaError("the engine's encoder takes at most 65,536 tokens and merges")
    b2u = bytes_to_unicode()
    byte_ids = [bpe.vocab.get(b2u[b], -1) for b in range(128)]
    pairs = []
    for (a, b), rank in bpe.ranks.items():
        if a in bpe.vocab and b in bpe.vocab:
            pairs.append(((bpe.vocab[a] << 16) | bpe.vocab[b], (rank << 16) | bpe.vocab[a + b]))
    pairs.sort()
    specials = b""
    for text in sorted(bpe.special, key=len, reverse=True):  # the order bpe.py tries them in
        raw = text.encode("utf-8")
        if raw.isascii():  # others never match an ASCII line
            if len(raw) > 255:
                raise BootllamaError(f"special token {text[:20]!r}... is longer than 255 bytes")
            specials += struct.pack("<BI", len(raw), bpe.special[text]) + raw
    specials += b"\0"
    specials_at = base + PAIRS_AT + 8 * len(pairs)
    head = struct.pack("<4I", KIND_BPE, int(bpe.individual_digits), len(pairs), specials_at).ljust(HEADER, b"\0")
    return (head + ascii_classes() + struct.pack("<128i", *byte_ids)
            + b"".join(struct.pack("<II", k, v) for k, v in pairs) + specials)
