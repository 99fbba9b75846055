"""Tokenizer cases checked by hand against the vocabularies (and, when written, against run.c)."""

from __future__ import annotations

import struct
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import shared_file
from hypothesis import given, settings
from hypothesis import strategies as st

from bootllama.errors import BootllamaError
from bootllama.tokenizer import Tokenizer, scan_byte_piece


@pytest.fixture(scope="module")
def t512(tok512: Path) -> Tokenizer:
    return Tokenizer.load(tok512, 512)


@pytest.fixture(scope="module")
def t32k() -> Tokenizer:
    return Tokenizer.load(shared_file("models/tokenizer.bin"), 32000)


def test_tok512_file(t512: Tokenizer) -> None:
    assert t512.vocab_size == 512 and t512.max_token_length == 7
    assert t512.pieces[:3] == [b"<unk>", b"\n<s>\n", b"\n</s>\n"]
    assert t512.pieces[3] == b"<0x00>" and t512.pieces[258] == b"<0xFF>"


@pytest.mark.parametrize(
    ("text", "bos", "eos", "ids"),
    [
        ("", True, False, [1]),  # no dummy prefix for empty text
        ("", False, True, [2]),
        ("a", True, False, [1, 261]),  # " " + "a" merge into " a"
        (" ", True, False, [1, 410, 410]),  # two " " pieces: "  " is not in this vocabulary
        ("Once upon a time", True, True, [1, 403, 407, 261, 378, 2]),
        ("The dog", True, True, [1, 291, 400, 428, 2]),  # " do" + "g": " dog" is not a piece
        # the dog emoji is not a piece: four byte-fallback ids (byte + 3); "é" is one piece
        ("Hello, world! \U0001f436 café", True, True,
         [1, 346, 306, 414, 432, 263, 304, 341, 443, 410, 243, 162, 147, 185, 280, 412, 431, 485, 2]),
    ],
)
def test_encode_tok512(t512: Tokenizer, text: str, bos: bool, eos: bool, ids: list[int]) -> None:
    assert t512.encode(text, bos=bos, eos=eos) == ids
    assert t512.encode(text.encode(), bos=bos, eos=eos) == ids


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Once upon a time", [1, 9038, 2501, 263, 931]),
        ("The dog", [1, 450, 11203]),
        # " Hello" "," " world" "!" " " then the emoji's bytes, then " c" + "afé"
        ("Hello, world! \U0001f436 café", [1, 15043, 29892, 3186, 29991, 29871, 243, 162, 147, 185, 274, 28059]),
        ("\n", [1, 29871, 13]),  # "\n" is only a byte piece
    ],
)
def test_encode_llama_32k(t32k: Tokenizer, text: str, ids: list[int]) -> None:
    assert t32k.encode(text, bos=True, eos=False) == ids


def test_encode_groups_utf8_and_falls_back_per_byte(t512: Tokenizer) -> None:
    # a stray continuation byte and a truncated sequence each fall back byte by byte
    assert t512.encode(b"\x80", bos=False) == [410, 0x80 + 3]
    assert t512.encode(b"\xc3", bos=False) == [410, 0xC3 + 3]
    assert t512.encode(b"\xc3\xa9", bos=False)[-1] == 485
    # text ends at a NUL, as a C string does
    assert t512.encode(b"a\0b") == t512.encode(b"a")


def test_decode_and_printable(t512: Tokenizer) -> None:
    assert t512.decode(1, 261) == b"a"  # leading space dropped after BOS
    assert t512.decode(5, 261) == b" a"
    assert t512.decode(1, 13) == b"\n"  # <0x0A>
    assert t512.decode(1, 3 + 0x41) == b"A"
    assert t512.decode(1, 3) == b""  # <0x00> is an empty C string
    assert t512.printable(7, 3 + 0x01) == b""  # control byte: not printed
    assert t512.printable(7, 3 + 0x09) == b"\t"  # whitespace is printed
    assert t512.printable(7, 3 + 0xC3) == b""  # a lone non-ASCII byte is not isprint in C
    assert t512.printable(7, 485) == "é".encode()  # multi-byte pieces print as they are
    assert t512.printable(1, 410) == b""  # " " after BOS becomes empty


def test_decode_rejects_out_of_range_ids(t512: Tokenizer) -> None:
    with pytest.raises(BootllamaError, match="outside the vocabulary"):
        t512.decode(1, 512)


@pytest.mark.parametrize(
    ("piece", "value"),
    [
        (b"<0x41>", 0x41), (b"<0xff>", 0xFF), (b"<0x4>", 4), (b"<0x4", 4), (b"<0x41abc", 0x41),
        (b"<0x 7>", 7), (b"<0x-1>", 0xFF), (b"<0x+f>", 15), (b"<0x0x41>", 0), (b"<0x>", None),
        (b"<0xZZ>", None), (b"<0x", None), (b"0x41", None), (b"<0X41>", None), (b"", None),
    ],
)
def test_scan_byte_piece_matches_glibc_sscanf(piece: bytes, value: int | None) -> None:
    assert scan_byte_piece(piece) == value


def test_duplicate_pieces_resolve_like_bsearch() -> None:
    # sorted (stably) the table is: "a"(1) "a"(2) "a"(3) "b"(4) "c"(0); bsearch's first probe
    # is the middle entry, index 2 of 5, which is id 3
    tok = Tokenizer([b"c", b"a", b"a", b"a", b"b"], [0.0] * 5, 4)
    assert tok._lookup[b"a"] == 3
    assert tok._lookup[b"b"] == 4


def decode_all(tok: Tokenizer, ids: list[int]) -> bytes:
    return b"".join(tok.decode(prev, token) for prev, token in pairwise(ids))


ASCII = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\n\t"),
                max_size=40)


@settings(max_examples=150, deadline=None)
@given(ASCII)
def test_decode_inverts_encode_tok512(t512: Tokenizer, text: str) -> None:
    assert decode_all(t512, t512.encode(text)) == text.encode()


@settings(max_examples=100, deadline=None)
@given(ASCII)
def test_decode_inverts_encode_32k(t32k: Tokenizer, text: str) -> None:
    assert decode_all(t32k, t32k.encode(text)) == text.encode()


# --- bad files -------------------------------------------------------------------------


def _load_bad(tmp_path: Path, data: bytes, vocab: int, pattern: str) -> None:
    path = tmp_path / "tok.bin"
    path.write_bytes(data)
    with pytest.raises(BootllamaError, match=pattern) as info:
        Tokenizer.load(path, vocab)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_to_bytes_round_trips(t512: Tokenizer, tok512: Path) -> None:
    assert t512.to_bytes() == tok512.read_bytes()


def test_bad_tokenizer_files(t512: Tokenizer, tmp_path: Path) -> None:
    data = t512.to_bytes()
    _load_bad(tmp_path, data, 32000, "has 512 pieces but the model's vocabulary has 32000")
    _load_bad(tmp_path, data[:-3], 512, "truncated")
    _load_bad(tmp_path, data[:-3], 10, "truncated")  # a cut-off tail is corrupt however few pieces are asked for
    _load_bad(tmp_path, data[:2], 512, "too short")
    _load_bad(tmp_path, struct.pack("<i", 0) + data[4:], 512, "max_token_length is 0")
    bad_len = data[:4] + struct.pack("<fi", 0.0, -5) + data[12:]
    _load_bad(tmp_path, bad_len, 512, "length -5")
    long_piece = data + struct.pack("<fi", 0.0, 9) + b"x" * 9
    _load_bad(tmp_path, long_piece, 513, "length 9")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(t512: Tokenizer, tmp_path: Path) -> None:
    # run.c reads the first vocab_size pieces of another model's tokenizer and prints garbage
    path = tmp_path / "tok.bin"
    path.write_bytes(t512.to_bytes())
    with pytest.raises(BootllamaError, match="tokenizer has 512 pieces but the model's vocabulary has 300"):
        Tokenizer.load(path, 300)


def test_byte_fallback_outside_a_small_vocabulary_is_an_error() -> None:
    tok = Tokenizer([b"<unk>", b"<s>", b"</s>", b" ", b"a"], [0.0] * 5, 1)
    assert tok.encode("a a", bos=False) == [3, 4, 3, 4]
    with pytest.raises(BootllamaError, match="byte-fallback token"):
        tok.encode("b")


def test_missing_dummy_prefix_piece_is_an_error() -> None:
    with pytest.raises(BootllamaError, match="dummy prefix"):
        Tokenizer([b"a", b"b", b"c"], [0.0] * 3, 1).encode("a")


def test_vocabulary_past_the_engines_byte_test_is_refused() -> None:
    # the engine tells a byte piece by id - 3 having a zero high byte (16 bits): from id 65539 on
    # it would print pieces as raw bytes, so the builder refuses such a vocabulary
    from bootllama import image

    head = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]

    def tok(n: int) -> Tokenizer:
        pieces = head + [b"p%d" % i for i in range(n - len(head))]
        return Tokenizer(pieces, [0.0] * n, 8)

    assert image.check_byte_pieces(tok(65539)) == 3
    with pytest.raises(BootllamaError, match="16-bit"):
        image.check_byte_pieces(tok(65540))
