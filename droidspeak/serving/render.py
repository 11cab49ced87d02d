"""Response bodies in OpenAI's shapes: whole completions, stream chunks, usage, and the
``droidspeak`` field that says how the request's prefill shared."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .request import Request


@dataclass(frozen=True, slots=True)
class Shape:
    """The fixed parts of one response: chat or text completion."""

    chat: bool
    id: str
    created: int
    model: str

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"


def usage(r: Request) -> dict[str, Any]:
    n = len(r.prompt.ids)
    return {"prompt_tokens": n, "completion_tokens": len(r.out), "total_tokens": n + len(r.out),
            "prompt_tokens_details": {"cached_tokens": int(r.cached_tokens)}}


def reuse(r: Request) -> dict[str, Any]:
    """How the prefill used the store: kind, reused tokens, from which model, plan, layers, fallback."""
    i = r.reuse
    return {"kind": i.kind.value if i else None, "reused_tokens": i.reused_tokens if i else 0,
            "from_model": r.from_model, "plan": i.plan if i else None, "recomputed_layers": r.recomputed_layers,
            "reason": i.reason if i else None, "fallback": bool(i and i.fallback), "ttft_s": r.ttft_s()}


def completion(shape: Shape, r: Request, finish: str) -> dict[str, Any]:
    if shape.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": finish,
                  "logprobs": None}
    else:
        choice = {"index": 0, "text": r.text, "finish_reason": finish, "logprobs": None}
    return {"id": shape.id, "object": shape.object, "created": shape.created, "model": shape.model,
            "choices": [choice], "usage": usage(r), "droidspeak": reuse(r)}


def chunk(shape: Shape, r: Request, delta: str | None, finish: str | None, first: bool = False) -> str:
    """One server-sent event of a stream (the last one carries the ``droidspeak`` field)."""
    if shape.chat:
        d: dict[str, Any] = {"role": "assistant"} if first else {}
        if delta:
            d["content"] = delta
        choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": delta or "", "finish_reason": finish}
    body: dict[str, Any] = {"id": shape.id, "object": shape.object + (".chunk" if shape.chat else ""),
                            "created": shape.created, "model": shape.model, "choices": [choice]}
    if finish is not None:
        body["droidspeak"] = reuse(r)
    return sse(body)


def usage_chunk(shape: Shape, r: Request) -> str:
    return sse({"id": shape.id, "object": shape.object, "created": shape.created, "model": shape.model,
                "choices": [], "usage": usage(r)})


def error_chunk(message: str) -> str:
    return sse({"error": {"message": message, "type": "server_error"}})


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


DONE = "data: [DONE]\n\n"
