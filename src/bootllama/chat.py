"""A model's own chat template (Jinja2, Hugging Face style) rendered as ``transformers`` renders it.

``transformers``' ``apply_chat_template`` compiles the template in a sandboxed, immutable
Jinja2 environment with ``trim_blocks`` and ``lstrip_blocks`` on and the ``loopcontrols``
extension, gives it ``raise_exception``, ``strftime_now`` and a ``tojson`` filter that keeps
non-ASCII text, and renders it with ``messages``, ``add_generation_prompt`` and the special
tokens (``bos_token``, ``eos_token``) as variables. So does :func:`render_chat`.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from bootllama.errors import BootllamaError


def _environment() -> Any:
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise BootllamaError(f"the model's chat template refused the conversation: {message}")

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    env.filters["tojson"] = tojson
    return env


def chat_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """The conversation for one question: an optional system message, then the user's."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    return [*messages, {"role": "user", "content": prompt}]


def render_chat(template: str, messages: list[dict[str, str]], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    """The prompt text a chat template makes of ``messages`` (the assistant's turn opened)."""
    import jinja2

    try:
        compiled = _environment().from_string(template)
        return str(compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                   bos_token=bos_token, eos_token=eos_token))
    except jinja2.TemplateError as e:
        raise BootllamaError(f"the model's chat template failed: {e}") from None
