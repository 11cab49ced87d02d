"""From a request body to engine requests: fields checked, the conversation laid out, the answer's
constraints compiled, one engine :class:`~droidspeak.serving.request.Request` per choice.

The conversation becomes chat turns the family's template renders: text content parts joined with
a newline, ``developer`` as ``system``, an earlier assistant call written as the model writes one,
a tool result as a ``tool`` turn where the template renders that role and as a user turn where it
does not (Gemma 3's strict alternation). What the answer must be (tools it may call, a JSON format)
is appended to the last turn answered, a user's or a tool result (:mod:`.tools`), so the document and
every earlier turn stay one shared prefix, whatever tools each request offers.
"""

from __future__ import annotations

from typing import Any

from ..core.prompt import PromptTokens, chat_prompt
from . import tools as calls
from .constraints import Grammars
from .request import Request
from .schemas import IGNORED, ApiError, ChatMessage, ChatRequest, CompletionRequest, Generation


def refuse_unknown(body: Generation) -> None:
    """A field the server neither acts on nor ignores by design is a 400 that names it."""
    unknown = sorted(k for k in (body.model_extra or {}) if k not in IGNORED)
    if unknown:
        raise ApiError(400, f"unsupported field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
                            "(this server does not act on it; see the README's API section)")
    if body.frequency_penalty or body.presence_penalty:
        raise ApiError(400, "frequency_penalty and presence_penalty are not served here (only 0)")
    if getattr(body, "echo", False):
        raise ApiError(400, "echo is not served here (only false)")


def content_text(m: ChatMessage, at: int) -> str:
    """A message's text: a string, or its text parts joined with a newline (other parts are a 400)."""
    c = m.content
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    texts = []
    for j, part in enumerate(c):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image", "input_audio", "audio", "file", "video_url"):
            raise ApiError(400, f"messages[{at}].content[{j}] is a {kind} part; the models served here read text only")
        else:
            raise ApiError(400, f"messages[{at}].content[{j}] is not a text part ({{'type': 'text', 'text': ...}})")
    return "\n".join(texts)


def turns(body: ChatRequest, tokenizer: Any) -> list[dict[str, str]]:
    """The conversation as template turns, the answer's requirements (tools offered, response format)
    appended to the last turn the model answers (a user's or a tool result): what comes before it reads
    the same on every call, so the next call of an agent loop or conversation reuses all of it."""
    tool_role = calls.renders_role(tokenizer, "tool")
    out: list[dict[str, str]] = []
    for i, m in enumerate(body.messages):
        text = content_text(m, i)
        if m.role == "assistant" and m.tool_calls:
            written = "\n".join(calls.call_text(c.function.name, c.function.arguments) for c in m.tool_calls)
            text = (text + "\n" if text else "") + written
        if m.role == "tool" and not tool_role:
            text = calls.result_text(text)
            if out and out[-1]["role"] == "user" and out[-1].get("tool_result"):
                out[-1]["content"] += "\n\n" + text  # results of one turn's calls: one user turn
                continue
            out.append({"role": "user", "content": text, "tool_result": "1"})
            continue
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    # every tool listed, whatever tool_choice allows
    extra = (calls.tools_block(body.tools) if body.tools else "") + calls.format_block(body)
    if extra:
        asked = [i for i, t in enumerate(out) if t["role"] in ("user", "tool")]
        out[asked[-1] if asked else -1]["content"] += extra
    return [{"role": t["role"], "content": t["content"]} for t in out]


def prompt_of(body: CompletionRequest | ChatRequest, tokenizer: Any) -> PromptTokens:
    """The prompt's tokens: a chat by the layout rule (every turn but the last is the shared prefix),
    a completion prompt as one piece."""
    if isinstance(body, ChatRequest):
        try:
            return chat_prompt(tokenizer, turns(body, tokenizer))
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - a template that refuses this conversation
            raise ApiError(400, f"the model's chat template refuses these messages: {str(e).splitlines()[0]}") from None
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, "prompt must be a string or a list of exactly one string")
        prompt = prompt[0]
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ApiError(400, "prompt is empty")
    return PromptTokens(tuple(ids), ())


class Intake:
    """Builds engine requests for one engine (its settings, and one grammar cache per model)."""

    def __init__(self, engine: Any):
        self.engine = engine
        self._grammars: dict[str, Grammars] = {}

    def build(self, body: CompletionRequest | ChatRequest) -> tuple[list[Request], list]:
        """The request's choices as engine requests (4xx :class:`ApiError` otherwise), and the tools
        an answer may call; events are wired by the caller."""
        refuse_unknown(body)
        s = self.engine.settings
        try:
            hosted = self.engine.host.get(body.model)
        except Exception as e:  # noqa: BLE001
            raise ApiError(404, str(e), code="model_not_found") from None
        tok = hosted.loaded.tokenizer
        chat = isinstance(body, ChatRequest)
        offered = calls.offered(body) if chat else []
        schema = calls.constraint_schema(body, offered) if chat else None
        grammars = self._grammars.setdefault(body.model, Grammars(tok)) if schema is not None else None
        first = grammars.matcher(schema) if grammars else None  # a schema that does not compile: 400 before anything
        prompt = prompt_of(body, tok)
        n_prompt = len(prompt.ids)
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if max_tokens is None:
            # at least one token, so a prompt that already fills the context is refused below
            max_tokens = max(1, min(s.max_tokens_limit, s.max_model_len - n_prompt))
        if max_tokens > s.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {s.max_tokens_limit}")
        if n_prompt + max_tokens > s.max_model_len:
            raise ApiError(400, f"this model's maximum context length is {s.max_model_len} tokens; the prompt has "
                                f"{n_prompt} and max_tokens asks {max_tokens} more", code="context_length_exceeded")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or any(len(x) > 256 for x in stop):
            raise ApiError(400, "at most 4 stop sequences of at most 256 characters")
        top = _top_logprobs(body)
        reqs = []
        for i in range(body.n):
            seed = None if body.seed is None else (body.seed + i) % 2**63  # each choice its own sample
            reqs.append(Request(body.model, prompt, max_tokens, body.temperature, body.top_p, seed, stop,
                                ignore_eos=body.ignore_eos, logprobs=top,
                                constraint=(first if i == 0 else grammars.matcher(schema)) if grammars else None))
        return reqs, offered


def _top_logprobs(body: CompletionRequest | ChatRequest) -> int | None:
    """How many alternatives to report per token (None: no logprobs)."""
    if isinstance(body, ChatRequest):
        if not body.logprobs:
            if body.top_logprobs:
                raise ApiError(400, "top_logprobs needs logprobs: true")
            return None
        return body.top_logprobs or 0
    return body.logprobs
