"""Talking to a model: run.c's chat mode (``-m chat``), and the story machine (``-i -``).

**run.c's chat loop** (:func:`runc_chat`, for llama2.c tokenizers). At position 0 it asks
"Enter system prompt (optional): " unless ``-y`` gave one, then "User: " unless ``-i`` gave
the first turn; each line is read as ``fgets`` into a 512-byte buffer reads it (at most 511
bytes; a longer line is the next read's text; the newline is dropped; a NUL ends the text).
The first turn with a non-empty system prompt is rendered in Llama 2's ``[INST] <<SYS>>``
form, every other turn as ``[INST] text [/INST]``, and encoded with a BOS each time. It
prints "Assistant: ", feeds the prompt, samples after every position (prompt positions too,
so the RNG advances on each), and prints a piece only once the prompt is consumed and the
sampled token is not EOS (2). A sampled EOS prints "\\n"; the EOS is then fed, and what the
model samples after it is printed too (as run.c does) before the next "User: ". The loop
ends when ``steps`` positions are used, with a final "\\n".

**End of input.** run.c ignores ``fgets`` returning NULL: the buffer keeps the previous line
(or, for the first system or user prompt, uninitialised memory), so a pipe that runs dry makes
run.c re-send its last line turn after turn until the steps are used up. Here end of input
ends the conversation instead: after the guide that found it, one "\\n" (run.c's own closing
newline) and the loop stops. Everything before that point is byte for byte what run.c prints.

**A model with its own chat template** (:func:`template_chat`: a converted GGUF such as
SmolLM2, its ChatML template and stop id ``<|im_end|>``). The same questions, guides, line
reading and sampling order; the prompt is the model's template rendered over the whole
conversation so far, and each turn feeds only what the template adds after the answer that
ended with the stop id: the stop id itself, then the template's text up to the opened
assistant turn. The KV cache carries over from turn to turn until the context (or ``-n``)
is used up; an empty system prompt means the template's default. Unlike run.c it samples
nothing after the stop id: the template says what follows it.

**The story machine** (:func:`story_machine`, ``-i -`` in generate mode): "Prompt: ", a line
read as above, then exactly what run.c's generate prints for that ``-i`` (a fresh start at
position 0), and again, until end of input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Literal

from bootllama.errors import BootllamaError
from bootllama.reference import Reference, Sampler, clamp_steps, generate
from bootllama.tokenizer import EOS, ByteLevelTokenizer, Tokenizer

LINE_BUFFER = 512  # run.c's system_prompt and user_prompt buffers: fgets keeps at most 511 bytes
SYSTEM_GUIDE = b"Enter system prompt (optional): "
USER_GUIDE = b"User: "
ASSISTANT = b"Assistant: "
STORY_GUIDE = b"Prompt: "

End = Literal["steps", "eof"]
LineSource = Callable[[], bytes | None]


@dataclass(frozen=True)
class ChatEnd:
    """How a conversation ended: ``"steps"`` (all positions used) or ``"eof"`` (input ran out),
    and how many positions it used."""

    why: End
    positions: int
    steps: int


def fgets_lines(stream: BinaryIO | None) -> LineSource:
    """A reader that returns what run.c's ``read_stdin`` leaves in its buffer, or None at end of input.

    ``fgets(buf, 512, stdin)``: up to and including a newline, at most 511 bytes (the rest of a
    longer line is the next call's); then the C string up to a NUL, with one trailing newline
    dropped.
    """

    def read() -> bytes | None:
        if stream is None:
            return None
        chunk = stream.readline(LINE_BUFFER - 1)
        if not chunk:
            return None
        nul = chunk.find(b"\0")
        text = chunk if nul < 0 else chunk[:nul]
        return text[:-1] if text.endswith(b"\n") else text

    return read


class _Out:
    def __init__(self, out: BinaryIO | None) -> None:
        self.out = out
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.parts.append(data)
        if self.out is not None:
            self.out.write(data)
            self.out.flush()

    def text(self) -> bytes:
        return b"".join(self.parts)


def _check_vocab(reference: Reference, tokenizer: Tokenizer) -> None:
    if tokenizer.vocab_size != reference.config.vocab_size:
        raise BootllamaError(f"tokenizer has {tokenizer.vocab_size} pieces but the model's vocabulary has "
                             f"{reference.config.vocab_size}")


def check_runc_text(name: str, text: bytes | None) -> None:
    """run.c copies -y and -i into its 512-byte buffers with strcpy: refuse what would overflow them."""
    if text is not None and len(text) > LINE_BUFFER - 1:
        raise BootllamaError(f"{name} is {len(text)} bytes; run.c's chat mode holds at most {LINE_BUFFER - 1} "
                             "(a longer one overflows its buffer)")
    if text is not None and b"\0" in text:
        raise BootllamaError(f"{name} holds a NUL byte, which a C string cannot")


def render_runc_turn(system: bytes, user: bytes, first: bool) -> bytes:
    """run.c's Llama 2 chat rendering of one user turn (the system prompt only on the first, if non-empty)."""
    if first and system:
        return b"[INST] <<SYS>>\n" + system + b"\n<</SYS>>\n\n" + user + b" [/INST]"
    return b"[INST] " + user + b" [/INST]"


def runc_chat(reference: Reference, tokenizer: Tokenizer, sampler: Sampler, read_line: LineSource,
              out: BinaryIO | None = None, *, steps: int = 0, system: bytes | None = None,
              prompt: bytes | None = None) -> tuple[bytes, ChatEnd]:
    """run.c's ``chat()`` (see the module's text): returns what it printed and how it ended.

    ``system`` is ``-y`` (None: ask for it), ``prompt`` is ``-i`` (None: ask for the first turn too).
    """
    _check_vocab(reference, tokenizer)
    check_runc_text("-y", system)
    check_runc_text("-i", prompt)
    system_prompt = b""

    def begin(line: bytes) -> None:
        nonlocal system_prompt
        system_prompt = line

    def render(user: bytes, first: bool) -> list[int]:
        return tokenizer.encode(render_runc_turn(system_prompt, user, first), bos=True, eos=False)

    return _converse(reference, tokenizer, sampler, read_line, out, steps, system, prompt,
                     begin=begin, render=render, stop=EOS, feeds_stop=True)


def _converse(reference: Reference, tokenizer: Tokenizer, sampler: Sampler, read_line: LineSource,
              out: BinaryIO | None, steps: int, system: bytes | None, prompt: bytes | None, *,
              begin: Callable[[bytes], None], render: Callable[[bytes, bool], list[int]], stop: int,
              feeds_stop: bool) -> tuple[bytes, ChatEnd]:
    """The turn loop both chats share: run.c's state, its system and user questions, end of input.

    At position 0 ``begin`` gets the system line (``-y`` or the answer to its question); each user
    line goes to ``render`` (with whether it is the first turn), which gives the tokens the turn
    feeds. The prompt's tokens are fed first, then what the model sampled; a piece is printed only
    once the prompt is consumed and the sampled token is not ``stop``. ``feeds_stop`` is run.c's
    way: a sampled stop prints "\\n" (at prompt positions too), the turn ends once the stop is fed,
    and what the model samples after it is printed. Without it (a chat template), a stop sampled
    after the prompt prints "\\n" and ends the turn there; the next ``render`` feeds it.
    """
    steps = clamp_steps(steps, reference.config.seq_len)
    reference.reset()
    w = _Out(out)

    def ask(guide: bytes) -> bytes | None:
        w.write(guide)
        return read_line()

    prompt_tokens: list[int] = []
    user_idx = 0
    user_turn = True
    nxt = 0
    pos = 0
    while pos < steps:
        if user_turn:
            if pos == 0:
                line = system if system is not None else ask(SYSTEM_GUIDE)
                if line is None:
                    return _close(w, "eof", pos, steps)
                begin(line)
            user = prompt if pos == 0 and prompt is not None else ask(USER_GUIDE)
            if user is None:
                return _close(w, "eof", pos, steps)
            prompt_tokens = render(user, pos == 0)
            user_idx = 0
            user_turn = False
            w.write(ASSISTANT)
        # the prompt's tokens first, then what the model sampled
        if user_idx < len(prompt_tokens):
            token = prompt_tokens[user_idx]
            user_idx += 1
        else:
            token = nxt
        if feeds_stop and token == stop:  # run.c: feeding EOS hands the turn back
            user_turn = True
        nxt = sampler.sample(reference.forward(token, pos))  # sampled at prompt positions too
        pos += 1
        answering = user_idx >= len(prompt_tokens)
        if answering and nxt != stop:
            w.write(tokenizer.printable(token, nxt))
        elif nxt == stop and (feeds_stop or answering):
            w.write(b"\n")
            if not feeds_stop:  # a template's answer ends at its stop id
                user_turn = True
    return _close(w, "steps", pos, steps)


def _close(w: _Out, why: End, pos: int, steps: int) -> tuple[bytes, ChatEnd]:
    w.write(b"\n")
    return w.text(), ChatEnd(why, pos, steps)


# what an answer's content is while rendering: the model's own tokens are in the KV cache, and the
# text around this stand-in shows what the template adds before and after them
ANSWER = "\ue000bootllama-answer\ue000"


def template_turns(tokenizer: ByteLevelTokenizer) -> Callable[[list[dict[str, str]]], str]:
    """A function from the conversation so far (each answer's content :data:`ANSWER`, the last
    message the user's) to the text this turn adds: the first turn's whole prompt, later the template's text after the
    previous answer's stop token up to the opened assistant turn. Refuses a template that does not
    grow by appending, or does not end an answer with the stop token."""
    from bootllama.chat import render_chat

    template = tokenizer.chat_template
    if not template:
        raise BootllamaError("this model's tokenizer has no chat template (its sidecar names none)")
    stop_text = tokenizer.special_tokens.get(tokenizer.stop_id, "")
    bos_token = tokenizer.sidecar.get("bos_token", "")
    eos_token = tokenizer.sidecar.get("eos_token", "")
    fed = ""

    def turn(messages: list[dict[str, str]]) -> str:
        nonlocal fed
        text = render_chat(template, messages, bos_token=bos_token, eos_token=eos_token)
        if not fed:
            fed = text
            return text
        head = fed + ANSWER + stop_text
        if not stop_text or not text.startswith(head):
            raise BootllamaError("the model's chat template does not continue a conversation by appending to it "
                                 "after the answer's stop token, so -m chat cannot keep its KV cache")
        fed = text
        return text[len(head):]

    return turn


def template_chat(reference: Reference, tokenizer: ByteLevelTokenizer, sampler: Sampler, read_line: LineSource,
                  out: BinaryIO | None = None, *, steps: int = 0, system: bytes | None = None,
                  prompt: bytes | None = None) -> tuple[bytes, ChatEnd]:
    """A conversation in the model's own chat template (see the module's text)."""
    _check_vocab(reference, tokenizer)
    turn_text = template_turns(tokenizer)
    stop = tokenizer.stop_id
    messages: list[dict[str, str]] = []

    def begin(line: bytes) -> None:
        if line:
            messages.append({"role": "system", "content": _utf8(line, "system prompt")})

    def render(user: bytes, first: bool) -> list[int]:
        if not first:  # the answer the stop id ended: its tokens are in the KV cache already
            messages.append({"role": "assistant", "content": ANSWER})
        messages.append({"role": "user", "content": _utf8(user, "user prompt")})
        added = turn_text(messages)
        return tokenizer.encode(added) if first else [stop, *tokenizer.encode(added, bos=False)]

    return _converse(reference, tokenizer, sampler, read_line, out, steps, system, prompt,
                     begin=begin, render=render, stop=stop, feeds_stop=False)


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BootllamaError(f"the {what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None


def chat(reference: Reference, tokenizer: Tokenizer, sampler: Sampler, read_line: LineSource,
         out: BinaryIO | None = None, *, steps: int = 0, system: bytes | None = None,
         prompt: bytes | None = None) -> tuple[bytes, ChatEnd]:
    """``-m chat``: the model's own template for a byte-level BPE tokenizer with a sidecar, else run.c's."""
    if isinstance(tokenizer, ByteLevelTokenizer):
        return template_chat(reference, tokenizer, sampler, read_line, out, steps=steps, system=system,
                             prompt=prompt)
    return runc_chat(reference, tokenizer, sampler, read_line, out, steps=steps, system=system, prompt=prompt)


def story_machine(reference: Reference, tokenizer: Tokenizer, sampler: Sampler, read_line: LineSource,
                  out: BinaryIO | None = None, *, steps: int = 0) -> bytes:
    """``-i -``: ask "Prompt: ", tell run.c's story for that prompt from position 0, ask again; end of
    input ends it with a newline. Each story starts the RNG from the seed again, so it is the story
    ``run.c -i LINE -s SEED`` tells."""
    w = _Out(out)
    seed_state = sampler.rng.state
    while True:
        sampler.rng.state = seed_state
        w.write(STORY_GUIDE)
        line = read_line()
        if line is None:
            w.write(b"\n")
            return w.text()
        w.parts.append(generate(reference, tokenizer, line, steps=steps, sampler=sampler, out=out))
