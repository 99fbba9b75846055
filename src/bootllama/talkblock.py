"""The talk block: what an interactive or top-p image carries for ``asm/talk.inc`` and ``sample.inc``.

One blob in the data area (after the RoPE values), its address in the manifest's spare field
(engine.inc's ``M_XTRA``); every address in it is absolute in the engine's space. talk.inc's
``X_*`` offsets:

    +0   top-p (float32; sample.inc's sample_topp, -DTOPP builds)
    +4   top-p's scratch: 8 bytes per vocabulary entry of RAM (after the KV cache)
    +8   the mode: 0 none, 1 the story machine (-i -), 2 run.c's chat, 3 the model's template
    +12  the encoder's tables (enctables.py), after this block's strings
    +16  the buffer for a turn's rendered text (RAM, TEXT_MAX bytes)
    +20  the buffer for its ids (RAM, 4 * (TEXT_MAX + 2) bytes)
    +24  the id that ends an answer: EOS (2) for run.c's chat, the template's stop id
    +28  -y: the address of its bytes (0: asked for), its length
    +36  -i as the first turn: address (0: asked for), length
    +44  the template's fixed text, (address, length) each: the first turn with a system prompt
         (before it, between it and the user's text, after that), the first turn without one
         (before, after), later turns (before, after)
    +128 the strings, then the encoder's tables

run.c's template is Llama 2's ``[INST]`` form (conversation.render_runc_turn); a converted
GGUF's is cut from its own chat template rendered around stand-in texts
(conversation.template_turns), and checked to be exactly that text around any other.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bootllama.errors import BootllamaError
from bootllama.tokenizer import BOS, EOS, ByteLevelTokenizer, Tokenizer

HEADER = 128
TEXT_MAX = 4096  # a turn's rendered text: the fixed pieces, a system prompt and a line of 511 bytes
MODE_NONE, MODE_STORY, MODE_RUNC, MODE_TEMPLATE = 0, 1, 2, 3
LINE_MAX = 511


@dataclass(frozen=True)
class Talk:
    """What the image does with typed input: ``mode`` (``"story"`` or ``"chat"``), ``-y``, ``-i``."""

    mode: str
    system: bytes | None = None
    first: bytes | None = None


def runc_pieces() -> list[bytes]:
    """run.c's Llama 2 template around the system prompt and the user's text."""
    return [b"[INST] <<SYS>>\n", b"\n<</SYS>>\n\n", b" [/INST]", b"[INST] ", b" [/INST]", b"[INST] ", b" [/INST]"]


def template_pieces(tok: ByteLevelTokenizer) -> list[bytes]:
    """The model's template's fixed text, in the block's order, as template_chat renders each turn."""
    from bootllama.conversation import ANSWER, template_turns

    sys_mark, user_mark = "\ue001", "\ue002"

    def cut(text: str, *marks: str) -> list[str]:
        out = []
        for mark in marks:
            if text.count(mark) != 1:
                raise BootllamaError("the model's chat template does not place each message's text once, as is: "
                                     "the engine cannot render it")
            head, text = text.split(mark)
            out.append(head)
        return [*out, text]

    def first(system: str | None, user: str) -> str:
        msgs = [] if system is None else [{"role": "system", "content": system}]
        return template_turns(tok)([*msgs, {"role": "user", "content": user}])

    def later(system: str | None, user: str) -> str:
        turn = template_turns(tok)
        msgs = [] if system is None else [{"role": "system", "content": system}]
        turn([*msgs, {"role": "user", "content": "a"}])
        return turn([*msgs, {"role": "user", "content": "a"}, {"role": "assistant", "content": ANSWER},
                     {"role": "user", "content": user}])

    pieces = cut(first(sys_mark, user_mark), sys_mark, user_mark) + cut(first(None, user_mark), user_mark)
    pieces += cut(later(None, user_mark), user_mark)
    for system in (None, "s"):  # a later turn must not depend on the system prompt; every text goes in as is
        if cut(later(system, user_mark), user_mark) != pieces[5:]:
            raise BootllamaError("the model's chat template renders later turns differently with a system prompt: "
                                 "the engine cannot render it")
    probe = " Hi, there!\t"
    if (first("S s ", probe) != pieces[0] + "S s " + pieces[1] + probe + pieces[2]
            or first(None, probe) != pieces[3] + probe + pieces[4]
            or later(None, probe) != pieces[5] + probe + pieces[6]):
        raise BootllamaError("the model's chat template changes the messages' text: the engine cannot render it")
    raw = [p.encode("utf-8") for p in pieces]
    if not raw[5] or tok.encode(raw[5] + b"a", bos=False)[0] == BOS:
        raise BootllamaError("the model's chat template begins a later turn with its BOS token: the engine "
                             "cannot tell it from the encoder's")
    return raw


def check_encodable(tok: Tokenizer, name: str, text: bytes | None) -> None:
    """A fixed text the engine encodes: byte-level BPE in the engine takes ASCII only."""
    if text is not None and isinstance(tok, ByteLevelTokenizer) and not text.isascii():
        raise BootllamaError(f"{name} is not ASCII; the engine's encoder for this tokenizer takes ASCII only")


def mode_of(tok: Tokenizer, talk: Talk | None) -> int:
    if talk is None:
        return MODE_NONE
    if talk.mode == "story":
        return MODE_STORY
    return MODE_TEMPLATE if isinstance(tok, ByteLevelTokenizer) else MODE_RUNC


def ram_bytes(tok: Tokenizer, talk: Talk | None, topp: bool) -> int:
    """RAM the block's buffers need after the KV cache."""
    return (TEXT_MAX + 4 * (TEXT_MAX + 2) if talk else 0) + (8 * tok.vocab_size if topp else 0)


def talk_block(tok: Tokenizer, talk: Talk | None, topp: float | None, base: int, ram: int,
               tokenizer_addr: int) -> bytes:
    """The block for an image at ``base`` (data area) with its buffers at ``ram`` (after the KV cache)."""
    from bootllama.enctables import encoder_tables

    mode = mode_of(tok, talk)
    strings = b""

    def put(data: bytes) -> tuple[int, int]:
        nonlocal strings
        at = base + HEADER + len(strings)
        strings += data
        return at, len(data)

    pieces: list[tuple[int, int]] = [(0, 0)] * 7
    system = first = (0, 0)
    if mode in (MODE_RUNC, MODE_TEMPLATE):
        from bootllama.conversation import check_runc_text  # (the story machine's block needs no NumPy)

        assert talk is not None
        check_runc_text("-y", talk.system)
        check_runc_text("-i", talk.first)
        check_encodable(tok, "-y", talk.system)
        check_encodable(tok, "-i", talk.first)
        texts = runc_pieces() if mode == MODE_RUNC else template_pieces(tok)  # type: ignore[arg-type]
        for t in texts:
            check_encodable(tok, "the chat template", t)
        if len(texts[0]) + len(texts[1]) + len(texts[2]) + 2 * LINE_MAX > TEXT_MAX or \
                max(len(texts[3]) + len(texts[4]), len(texts[5]) + len(texts[6])) + LINE_MAX > TEXT_MAX:
            raise BootllamaError("the model's chat template is too long for the engine's turn buffer")
        pieces = [put(t) for t in texts]
        if talk.system is not None:
            system = (put(talk.system)[0], len(talk.system))
        if talk.first is not None:
            first = (put(talk.first)[0], len(talk.first))
    strings += bytes(-len(strings) % 4)
    enc_at = base + HEADER + len(strings)
    enc = encoder_tables(tok, enc_at, tokenizer_addr) if mode else b""
    stop = tok.stop_id if mode == MODE_TEMPLATE else EOS
    text_at, ids_at = ram, ram + TEXT_MAX
    scratch = ram + (TEXT_MAX + 4 * (TEXT_MAX + 2) if mode else 0)
    head = struct.pack("<fIIIIII", topp if topp is not None else 0.0, scratch if topp is not None else 0, mode,
                       enc_at if mode else 0, text_at if mode else 0, ids_at if mode else 0, stop)
    head += struct.pack("<4I", *system, *first)
    head += b"".join(struct.pack("<II", *p) for p in pieces)
    return head.ljust(HEADER, b"\0") + strings + enc


def block_size(tok: Tokenizer, talk: Talk | None, topp: float | None, tokenizer_addr: int) -> int:
    return len(talk_block(tok, talk, topp, 0, 0, tokenizer_addr))
