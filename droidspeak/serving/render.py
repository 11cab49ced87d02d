"""Response bodies in OpenAI's shapes: whole completions, stream chunks, usage, and the
``droidspeak`` field that says how the request's prefill shared."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .request import Request


@dataclass(frozen=True, slots=True)
class Shape:
    """The fixed parts of one response: chat or text completion, and how a token id reads (for logprobs)."""

    chat: bool
    id: str
    created: int
    model: str
    token_text: Callable[[int], str] = str

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"


def usage(reqs: list[Request]) -> dict[str, Any]:
    """The prompt counts once, however many choices were sampled from it (its cached part is the first's)."""
    n = len(reqs[0].prompt.ids)
    out = sum(len(r.out) for r in reqs)
    return {"prompt_tokens": n, "completion_tokens": out, "total_tokens": n + out,
            "prompt_tokens_details": {"cached_tokens": int(reqs[0].cached_tokens)}}


def reuse(r: Request) -> dict[str, Any]:
    """How the prefill used the store: kind, reused tokens, from which model, plan, layers, fallback."""
    i = r.reuse
    return {"kind": i.kind.value if i else None, "reused_tokens": i.reused_tokens if i else 0,
            "from_model": r.from_model, "plan": i.plan if i else None, "recomputed_layers": r.recomputed_layers,
            "reason": i.reason if i else None, "fallback": bool(i and i.fallback), "ttft_s": r.ttft_s()}


def logprobs(shape: Shape, r: Request, start: int = 0, end: int | None = None) -> dict[str, Any] | None:
    """The log-probabilities of ``r.out[start:end]`` in the endpoint's shape (None when not asked)."""
    if r.logprobs is None:
        return None
    end = len(r.out_logprobs) if end is None else min(end, len(r.out_logprobs))
    toks = [shape.token_text(t) for t in r.out[start:end]]
    lps = r.out_logprobs[start:end]
    if shape.chat:
        return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()),
                             "top_logprobs": [_alt(shape.token_text(i), v) for i, v in alts]}
                            for t, (lp, alts) in zip(toks, lps)]}
    offsets, at = [], 0
    for t in toks:
        offsets.append(at)
        at += len(t)
    return {"tokens": toks, "token_logprobs": [lp for lp, _ in lps], "text_offset": offsets,
            "top_logprobs": [{shape.token_text(i): v for i, v in alts} for _, alts in lps]}


def _alt(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def choice(shape: Shape, index: int, r: Request, finish: str, call: dict[str, Any] | None = None) -> dict[str, Any]:
    """One whole choice; ``call`` is the tool call its answer made (then the message has no content)."""
    if not shape.chat:
        return {"index": index, "text": r.text, "finish_reason": finish, "logprobs": logprobs(shape, r)}
    message: dict[str, Any] = {"role": "assistant", "content": r.text}
    if call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish = "tool_calls"
    return {"index": index, "message": message, "finish_reason": finish, "logprobs": logprobs(shape, r)}


def completion(shape: Shape, choices: list[dict[str, Any]], reqs: list[Request]) -> dict[str, Any]:
    return {"id": shape.id, "object": shape.object, "created": shape.created, "model": shape.model,
            "choices": choices, "usage": usage(reqs), "droidspeak": reuse(reqs[0])}


def chunk(shape: Shape, r: Request, delta: str | None, finish: str | None, first: bool = False, index: int = 0,
          lp: dict[str, Any] | None = None, call: dict[str, Any] | None = None) -> str:
    """One server-sent event of a stream (a choice's last one carries the ``droidspeak`` field); ``call``
    is a whole tool call sent as one ``tool_calls`` delta."""
    if shape.chat:
        d: dict[str, Any] = {"role": "assistant"} if first else {}
        if delta:
            d["content"] = delta
        if call is not None:
            d["tool_calls"] = [{"index": 0, **call}]
        body_choice: dict[str, Any] = {"index": index, "delta": d, "finish_reason": finish, "logprobs": lp}
    else:
        body_choice = {"index": index, "text": delta or "", "finish_reason": finish, "logprobs": lp}
    body: dict[str, Any] = {"id": shape.id, "object": shape.object + (".chunk" if shape.chat else ""),
                            "created": shape.created, "model": shape.model, "choices": [body_choice]}
    if finish is not None:
        body["droidspeak"] = reuse(r)
    return sse(body)


def usage_chunk(shape: Shape, reqs: list[Request]) -> str:
    return sse({"id": shape.id, "object": shape.object + (".chunk" if shape.chat else ""), "created": shape.created,
                "model": shape.model, "choices": [], "usage": usage(reqs)})


def error_chunk(message: str) -> str:
    return sse({"error": {"message": message, "type": "server_error"}})


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


DONE = "data: [DONE]\n\n"
