"""The prompt layout: one rule that turns (shared context, request) into tokens.

Rule. For a tokenizer with a chat template, the context is the first user turn and the request a
second user turn, followed by the generation prompt:

    prefix = chat_template([user: context])                         # the shared, reusable part
    suffix = chat_template([user: context, user: request], +gen)[len(prefix):]

The prefix is tokenized on its own, so it is a true token prefix of every prompt built on the
same context, and it is the same for every model of one family (the family check requires the same
tokenizer). A template that refuses two user turns in a row (Gemma's alternation rule) gets one
user turn, ``context + "\\n\\n" + request``, and the prefix is its rendering up to the end of the
context. Without a chat template, ``prefix = bos + context`` and ``suffix = "\\n\\n" + request +
"\\n"`` tokenized on its own.

The server follows the same rule for a conversation (:func:`chat_prompt`): every turn but the last
is the shared prefix, the last turn and the generation prompt the suffix; for the documented
two-turn use ``[user: context, user: request]`` this is exactly :func:`layout`. Changing the rule
invalidates stored caches, so it is versioned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LAYOUT_VERSION = 1
_JOIN = "\n\n"


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


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return _ids(tokenizer(text, add_special_tokens=False))


def _split(tokenizer: Any, prefix_text: str, full_text: str) -> PromptTokens | None:
    """Prefix and suffix tokenized on their own, when the prefix is a text prefix of the whole."""
    if not full_text.startswith(prefix_text):
        return None
    return PromptTokens(tuple(_tokens(tokenizer, prefix_text)), tuple(_tokens(tokenizer, full_text[len(prefix_text):])))


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> PromptTokens:
    """A conversation's tokens: every turn but the last is the shared prefix (one piece when the
    template rewrites earlier turns). Without a chat template (a base model), or with one that
    refuses consecutive user turns, the turns before the last are the context and the last is the
    request, laid out as :func:`layout` does, so a chat over a context the CLI stored is a hit.
    Other template errors (e.g. a role order it refuses) propagate."""
    plain = all(m["role"] in ("system", "user") for m in messages)
    if not getattr(tokenizer, "chat_template", None):
        if len(messages) == 1:
            ids = _ids(tokenizer(messages[0]["content"], add_special_tokens=True)) + _tokens(tokenizer, "\n")
            return PromptTokens(tuple(ids), ())
        return layout(tokenizer, _JOIN.join(m["content"] for m in messages[:-1]), messages[-1]["content"])
    try:
        full_text = _render(tokenizer, messages, True)
    except Exception:  # noqa: BLE001 - e.g. a template that alternates roles strictly
        if len(messages) >= 2 and plain and not _two_turns_allowed(tokenizer):
            return layout(tokenizer, _JOIN.join(m["content"] for m in messages[:-1]), messages[-1]["content"])
        raise
    if len(messages) >= 2:
        split = _split(tokenizer, _render(tokenizer, messages[:-1], False), full_text)
        if split is not None:
            return split
    return PromptTokens(tuple(_tokens(tokenizer, full_text)), ())


def _one_turn_split(tokenizer: Any, context: str, request: str | None) -> PromptTokens:
    """For templates that allow one user turn only: the prefix ends where the context does."""
    rendered = _render(tokenizer, [{"role": "user", "content": context}], False)
    at = rendered.find(context)
    if at < 0:
        raise ValueError("chat template does not keep the context as written")
    prefix_text = rendered[:at + len(context)]
    content = context + (_JOIN + request if request else "")
    split = _split(tokenizer, prefix_text, _render(tokenizer, [{"role": "user", "content": content}], True))
    if split is None:
        raise ValueError("chat template does not keep the context turn as a text prefix")
    return split


def _two_turns_allowed(tokenizer: Any) -> bool:
    try:
        _render(tokenizer, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], True)
        return True
    except Exception:  # noqa: BLE001 - jinja's TemplateError and friends: the template says no
        return False


def context_tokens(tokenizer: Any, context: str) -> list[int]:
    """The shared prefix tokens of a context (what a sender prefills and stores)."""
    return list(layout(tokenizer, context).prefix)


def layout(tokenizer: Any, context: str, request: str | None = None) -> PromptTokens:
    """Tokens of a request over a shared context, the context being a true token prefix."""
    if getattr(tokenizer, "chat_template", None):
        if not _two_turns_allowed(tokenizer):
            return _one_turn_split(tokenizer, context, request)
        msgs = [{"role": "user", "content": context}]
        prefix_text = _render(tokenizer, msgs, False)
        if request:
            msgs.append({"role": "user", "content": request})
        split = _split(tokenizer, prefix_text, _render(tokenizer, msgs, True))
        if split is None:  # a template that rewrites earlier turns
            raise ValueError("chat template does not keep the context turn as a text prefix")
        return split
    prefix = _ids(tokenizer(context, add_special_tokens=True))
    suffix = _tokens(tokenizer, _JOIN + (request or "") + "\n")
    return PromptTokens(tuple(prefix), tuple(suffix))


def answer_tokens(tokenizer: Any, answer: str) -> list[int]:
    """Tokens of an assistant answer as the chat template closes it (used for training)."""
    vocab = tokenizer.get_vocab()
    end = next((t for t in ("<|im_end|>", "<end_of_turn>") if t in vocab), tokenizer.eos_token or "")
    return _ids(tokenizer(answer + end, add_special_tokens=False))
