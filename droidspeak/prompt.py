"""The prompt layout: one rule that turns (shared context, request) into tokens.

Rule. For a tokenizer with a chat template, the context is the first user turn and the request a
second user turn, followed by the generation prompt:

    prefix = chat_template([user: context])                         # the shared, reusable part
    suffix = chat_template([user: context, user: request], +gen)[len(prefix):]

The prefix is tokenized on its own, so it is a true token prefix of every prompt built on the
same context, and it is the same for every model of one family (the family check requires the same
tokenizer). Without a chat template, ``prefix = bos + context`` and
``suffix = "\\n\\n" + request + "\\n"`` tokenized on its own. The rule is used by every command
and by the server; changing it invalidates stored caches, so it is versioned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LAYOUT_VERSION = 1


@dataclass(frozen=True, slots=True)
class PromptTokens:
    """A prompt split into the shared prefix and the requester's own suffix."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        return list(self.prefix) + list(self.suffix)


def _ids(x: Any) -> list[int]:
    if hasattr(x, "keys") and "input_ids" in x:
        x = x["input_ids"]
    if hasattr(x, "tolist"):
        x = x.tolist()
    if x and isinstance(x[0], list):
        x = x[0]
    return list(x)


def context_tokens(tokenizer: Any, context: str) -> list[int]:
    """The shared prefix tokens of a context (what a sender prefills and stores)."""
    if getattr(tokenizer, "chat_template", None):
        return _ids(tokenizer.apply_chat_template([{"role": "user", "content": context}], tokenize=True,
                                                  add_generation_prompt=False))
    return _ids(tokenizer(context, add_special_tokens=True))


def layout(tokenizer: Any, context: str, request: str | None = None) -> PromptTokens:
    """Tokens of a request over a shared context, the context being a true token prefix."""
    prefix = context_tokens(tokenizer, context)
    if getattr(tokenizer, "chat_template", None):
        msgs = [{"role": "user", "content": context}]
        if request:
            msgs.append({"role": "user", "content": request})
        full_text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        prefix_text = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=False)
        if not full_text.startswith(prefix_text):  # a template that rewrites earlier turns
            raise ValueError("chat template does not keep the context turn as a text prefix")
        suffix = _ids(tokenizer(full_text[len(prefix_text):], add_special_tokens=False))
    else:
        suffix = _ids(tokenizer("\n\n" + (request or "") + "\n", add_special_tokens=False))
    return PromptTokens(tuple(prefix), tuple(suffix))


def answer_tokens(tokenizer: Any, answer: str) -> list[int]:
    """Tokens of an assistant answer as the chat template closes it (used for training)."""
    end = "<|im_end|>" if "<|im_end|>" in tokenizer.get_vocab() else (tokenizer.eos_token or "")
    return _ids(tokenizer(answer + end, add_special_tokens=False))
