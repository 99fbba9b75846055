"""Fuzzing the readers and the commands that write files: bad input is a BootllamaError.

Every reader is fed real small files (legacy, ak42 v1 and v2 checkpoints of random models;
tok512.bin) with mutated header fields, truncations, appended bytes, random magic/version
words and random bytes. The contract: a Model/Tokenizer or a BootllamaError, never another
exception, never a hang (a SIGALRM deadline per example). ``bootllama convert`` and
``bootllama build -o`` on the same inputs either succeed or print exactly one error line and
leave no output file (nor a temporary sibling) behind.

Bounded: every test has a small ``max_examples``; the file runs in well under 30 s.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import signal
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import SMALL, shared_file, write_v1, write_v2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bootllama.checkpoint import (
    MAGIC,
    Model,
    load_checkpoint,
    packaged_path,
    random_model,
    read_legacy_config,
    write_legacy,
)
from bootllama.cli import main
from bootllama.errors import BootllamaError
from bootllama.tokenizer import Tokenizer

TOK512 = packaged_path("tok512.bin")
SECONDS = 10  # per example: far more than any reader needs; a hang fails instead of stalling the run
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_counter = itertools.count()


@contextlib.contextmanager
def deadline(seconds: int = SECONDS) -> Iterator[None]:
    def expired(_sig: int, _frame: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- the seed files ----------------------------------------------------------------------


def _seeds(root: Path) -> dict[str, bytes]:
    """Real checkpoints of a small model (SMALL pairs with tok512), in every format read."""
    shared = random_model(SMALL, seed=3)
    unshared = random_model(replace(SMALL, shared_classifier=False), seed=4)
    out: dict[str, bytes] = {}
    for name, model, writer in (("legacy", shared, None), ("legacy-unshared", unshared, None),
                                ("v1", shared, write_v1), ("v1-unshared", unshared, write_v1),
                                ("v2", shared, write_v2)):
        path = root / f"seed-{name}.bin"
        if writer is None:
            write_legacy(model, path)
        else:
            writer(model, path)
        out[name] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def seeds(workdir: Path) -> dict[str, bytes]:
    return _seeds(workdir)


def _fresh(workdir: Path, stem: str) -> Path:
    return workdir / f"{stem}-{next(_counter)}"


# --- mutations ---------------------------------------------------------------------------

INT32 = st.integers(-(2**31), 2**31 - 1)
# header values that get past the first checks more often than uniform int32 would
NEAR = st.one_of(INT32, st.integers(-4, 1100), st.sampled_from([0, 1, 2, 32, 48, 64, 512, 2**31 - 1, -(2**31)]))


KINDS = ["int", "int", "magic", "version", "flag", "truncate", "append", "header-bytes", "body-bytes",
         "body-bytes", "splice", "sign"]


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    """One real checkpoint, then one to three mutations of its bytes.

    Some mutations keep the file loadable (weights changed to anything, NaN included) so the
    whole reader runs; the others break the header or the size in every way a file can.
    """
    names = sorted(seeds)
    data = bytearray(seeds[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(KINDS))
        if kind == "int" and len(data) >= 4:
            # one of the header's int32 words: legacy 0..6, versioned 2..8 (+ group size at 37)
            off = draw(st.sampled_from([*range(0, 36, 4), 37]))
            if off + 4 <= len(data):
                struct.pack_into("<i", data, off, draw(NEAR))
        elif kind == "sign" and len(data) >= 24:  # legacy vocab_size sign: shared <-> separate classifier
            struct.pack_into("<i", data, 20, -struct.unpack_from("<i", data, 20)[0] if data[20:24] != b"\0\0\0\x80"
                             else 0)
        elif kind == "magic" and len(data) >= 4:
            struct.pack_into("<I", data, 0, draw(st.sampled_from([MAGIC, 0, MAGIC ^ 1])
                                                 | st.integers(0, 2**32 - 1)))
        elif kind == "version" and len(data) >= 8:
            struct.pack_into("<i", data, 4, draw(st.sampled_from([0, 1, 2, 3, -1]) | INT32))
        elif kind == "flag" and len(data) > 36:
            data[36] = draw(st.integers(0, 255))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=64) | st.just(bytes(4 * draw(st.integers(1, 4096)))))
        elif kind == "splice":  # one format's header on another's body
            other = seeds[draw(st.sampled_from(names))]
            cut = draw(st.sampled_from([28, 41, 256]))
            data = bytearray(other[:cut]) + data[cut:]
        elif kind in ("header-bytes", "body-bytes") and data:
            lo, hi = (0, min(len(data), 300)) if kind == "header-bytes" else (min(len(data), 300), len(data))
            if lo < hi:
                off = draw(st.integers(lo, hi - 1))
                patch = draw(st.binary(min_size=1, max_size=16)
                             | st.sampled_from([b"\xff\xff\xff\x7f", b"\0\0\xc0\x7f", b"\0\0\x80\x7f"]))
                data[off : off + len(patch)] = patch[: len(data) - off]
    return bytes(data)


def inputs(seeds: dict[str, bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(seeds), mutated(seeds), mutated(seeds), st.binary(max_size=300))


def _read(path: Path) -> object:
    with deadline():
        try:
            return load_checkpoint(path)
        except BootllamaError as e:
            assert str(e) and "\n" not in str(e)
            return e


# --- checkpoint readers --------------------------------------------------------------------


def test_checkpoint_readers(workdir: Path, seeds: dict[str, bytes]) -> None:
    @FUZZ
    @given(inputs(seeds))
    def check(data: bytes) -> None:
        path = _fresh(workdir, "ck")
        path.write_bytes(data)
        try:
            got = _read(path)
            assert isinstance(got, Model | BootllamaError)
            if isinstance(got, Model):
                got.check()
            with deadline():
                try:
                    config = read_legacy_config(path)
                except BootllamaError:
                    pass
                else:  # a legacy header that matches the file size loads
                    assert isinstance(got, Model) and got.config == config
        finally:
            path.unlink()

    check()


def test_unmutated_seeds_load(workdir: Path, seeds: dict[str, bytes]) -> None:
    for name, data in seeds.items():
        path = workdir / f"ok-{name}.bin"
        path.write_bytes(data)
        assert isinstance(load_checkpoint(path), Model), name


# --- tokenizer -----------------------------------------------------------------------------


@st.composite
def mutated_tokenizer(draw: st.DrawFn) -> bytes:
    data = bytearray(TOK512.read_bytes())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["max_len", "length", "truncate", "append", "bytes"]))
        if kind == "max_len" and len(data) >= 4:
            struct.pack_into("<i", data, 0, draw(NEAR))
        elif kind == "length" and len(data) >= 16:
            # a piece's length word: the first records sit at 4 + 8 + ..., aim near the start
            off = draw(st.integers(4, min(len(data), 2000) - 4))
            struct.pack_into("<i", data, off, draw(NEAR))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == "bytes" and data:
            off = draw(st.integers(0, len(data) - 1))
            patch = draw(st.binary(min_size=1, max_size=16))
            data[off : off + len(patch)] = patch
    return bytes(data)


def test_tokenizer_reader(workdir: Path) -> None:
    @FUZZ
    @given(mutated_tokenizer(), st.sampled_from([1, 259, 512, 513]))
    def check(data: bytes, vocab_size: int) -> None:
        path = _fresh(workdir, "tok")
        path.write_bytes(data)
        try:
            with deadline():
                try:
                    tok = Tokenizer.load(path, vocab_size)
                except BootllamaError as e:
                    assert "\n" not in str(e)
                    return
                assert tok.vocab_size == vocab_size
                # whatever loaded can encode, or says why not
                try:
                    ids = tok.encode("Once upon a time\u00e9", bos=True)
                except BootllamaError:
                    return
                assert all(0 <= i < vocab_size for i in ids)
        finally:
            path.unlink()

    check()


# --- prompt encoder ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t512() -> Tokenizer:
    return Tokenizer.load(TOK512, 512)


@pytest.fixture(scope="module")
def t32k() -> Tokenizer:
    return Tokenizer.load(shared_file("models/tokenizer.bin"), 32000)


def _encode_any(tok: Tokenizer, text: str | bytes) -> None:
    with deadline():
        try:
            ids = tok.encode(text, bos=True, eos=False)
        except BootllamaError as e:
            # only text that is not UTF-8 encodable (lone surrogates) is refused
            assert isinstance(text, str) and "UTF-8" in str(e)
            return
    assert ids[0] == 1 and all(0 <= i < tok.vocab_size for i in ids)
    # every id decodes to bytes (what the engine would print, too)
    prev = ids[0]
    for i in ids[1:]:
        assert isinstance(tok.decode(prev, i), bytes)
        assert isinstance(tok.printable(prev, i), bytes)
        prev = i


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80) | st.binary(max_size=80))
def test_encoder_on_any_text(t512: Tokenizer, text: str | bytes) -> None:
    _encode_any(t512, text)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60) | st.binary(max_size=60))
def test_encoder_on_any_text_32k(t32k: Tokenizer, text: str | bytes) -> None:
    _encode_any(t32k, text)


@pytest.mark.parametrize("vocab_size", [259, 300, 411])
def test_encoder_with_a_cut_vocabulary_is_an_error_not_a_crash(vocab_size: int) -> None:
    # tok512 cut short: 259 and 300 lack the ' ' piece (id 410), 411 lacks most merges (Tokenizer.load
    # refuses a file with more pieces than the vocabulary, so the cut vocabulary is built directly)
    full = Tokenizer.load(TOK512, 512)
    tok = Tokenizer(full.pieces[:vocab_size], full.scores[:vocab_size], full.max_token_length)

    @settings(max_examples=40, deadline=None)
    @given(st.text(max_size=40) | st.binary(max_size=40))
    def check(text: str | bytes) -> None:
        with deadline():
            try:
                ids = tok.encode(text)
            except BootllamaError as e:
                assert "\n" not in str(e)
                return
        assert all(0 <= i < vocab_size for i in ids)

    check()


PRINTABLE_ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


def _round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, bos=True, eos=False)
    out, prev = [], ids[0]
    for i in ids[1:]:
        out.append(tok.decode(prev, i))
        prev = i
    # the dummy-prefix space goes: decode drops a piece's leading space right after BOS
    assert b"".join(out) == text.encode()


@settings(max_examples=100, deadline=None)
@given(PRINTABLE_ASCII)
def test_decode_inverts_encode_for_printable_ascii(t512: Tokenizer, text: str) -> None:
    _round_trip(t512, text)


@settings(max_examples=50, deadline=None)
@given(PRINTABLE_ASCII)
def test_decode_inverts_encode_for_printable_ascii_32k(t32k: Tokenizer, text: str) -> None:
    _round_trip(t32k, text)


# --- the commands that write files ---------------------------------------------------------


def _cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    out = io.StringIO()
    with deadline(30), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(args)
        except SystemExit as e:  # argparse; not expected with these arguments
            code = int(e.code or 0)
    return code, err.getvalue()


def _assert_clean_failure(code: int, err: str, out: Path) -> None:
    assert code == 1, err
    assert err.startswith("bootllama: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.exists()
    leftovers = list(out.parent.glob(f".{out.name}.*"))
    assert not leftovers, leftovers


@contextlib.contextmanager
def _input_and_output(workdir: Path, data: bytes, out_stem: str) -> Iterator[tuple[Path, Path]]:
    """A fresh input file holding ``data`` and a fresh output path; both gone afterwards."""
    src = _fresh(workdir, "in")
    src.write_bytes(data)
    dst = _fresh(workdir, out_stem)
    try:
        yield src, dst
    finally:
        src.unlink()
        dst.unlink(missing_ok=True)


def test_convert_never_leaves_a_partial_file(workdir: Path, seeds: dict[str, bytes]) -> None:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(inputs(seeds))
    def check(data: bytes) -> None:
        with _input_and_output(workdir, data, "out") as (src, dst):
            code, err = _cli(["convert", str(src), str(dst)])
            if code == 0:
                assert isinstance(load_checkpoint(dst), Model)
            else:
                _assert_clean_failure(code, err, dst)

    check()


def test_build_never_leaves_a_partial_file(workdir: Path, seeds: dict[str, bytes]) -> None:
    pytest.importorskip("bootllama.engine")

    legacy = {k: v for k, v in seeds.items() if k.startswith("legacy")}  # the format build reads

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(inputs(legacy), st.sampled_from([None, "Once upon a time", "\u00e9t\u00e9 \U0001f600"]),
           st.sampled_from(["0", "8", "1000000", "-3"]))
    def check(data: bytes, prompt: str | None, steps: str) -> None:
        with _input_and_output(workdir, data, "img") as (src, dst):
            args = ["build", str(src), "-z", str(TOK512), "-o", str(dst), "-n", steps]
            if prompt is not None:
                args += ["-i", prompt]
            code, err = _cli(args)
            if code != 0:
                _assert_clean_failure(code, err, dst)
            else:
                assert dst.stat().st_size % 512 == 0

    check()


def test_build_refuses_a_missing_tokenizer_cleanly(workdir: Path, seeds: dict[str, bytes]) -> None:
    pytest.importorskip("bootllama.engine")
    src = workdir / "good.bin"
    src.write_bytes(seeds["legacy"])
    dst = workdir / "never.img"
    code, err = _cli(["build", str(src), "-z", str(workdir / "no-such-tokenizer.bin"), "-o", str(dst)])
    _assert_clean_failure(code, err, dst)
