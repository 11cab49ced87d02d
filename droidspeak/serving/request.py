"""A generation request as the engine tracks it, from submission to its last token.

A request's phase is its :class:`Status`, moved only by :meth:`Request.move_to` along the
transitions the enum allows (the scheduler moves it): ``waiting -> prefilling -> decoding ->
finished``, and to ``finished`` from any phase (a stop, an abort, an error).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from ..core.prompt import PromptTokens
from ..core.result import ReuseInfo


class Status(str, Enum):
    """Where a request is (see the module docstring)."""

    WAITING = "waiting"  # queued, not yet started
    PREFILLING = "prefilling"  # its prefill runs (a miss: chunk by chunk)
    DECODING = "decoding"  # prefilled, generating in its model's decode group
    FINISHED = "finished"  # stopped, aborted or failed; nothing more happens to it

    def may_become(self, other: "Status") -> bool:
        return other in _NEXT[self]


_NEXT = {Status.WAITING: {Status.PREFILLING, Status.FINISHED},
         Status.PREFILLING: {Status.DECODING, Status.FINISHED},
         Status.DECODING: {Status.FINISHED},
         Status.FINISHED: set()}


@dataclass
class Request:
    """What a client asked (the first fields) and where the engine is with it (the rest)."""

    model: str
    prompt: PromptTokens
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # generate max_tokens whatever the model's end-of-turn tokens (vLLM's extension)
    logprobs: int | None = None  # report each generated token's log-probability and this many alternatives
    constraint: Any = None  # a grammar Matcher the answer is decoded under (structured output, forced tool calls)
    on_event: Callable[[str, dict[str, Any]], None] = lambda kind, data: None  # "token" {text} | "done" {...}
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: float = field(default_factory=time.time)
    cancelled: bool = False  # set by any thread; the engine finishes the request as aborted
    group: str = ""  # the decode group it runs in (its base's, for an adapter on a shared base)
    # ---- state, owned by the engine thread
    status: Status = Status.WAITING
    out: list[int] = field(default_factory=list)  # generated token ids
    out_logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)  # per out token, if asked
    sampled_logprob: tuple[float, list[tuple[int, float]]] | None = None  # the last sampled token's, until kept
    sent: int = 0  # tokens of ``out`` whose text has been sent
    text: str = ""  # detokenized output sent so far
    length: int = 0  # tokens in this request's cache
    reuse: ReuseInfo | None = None  # how its prefill shared (set when the prefill ends)
    recomputed_layers: list[int] = field(default_factory=list)
    from_model: str | None = None  # the hosted model whose cache it reused (or "identity:..."), if any
    activation_at: int | None = None  # an activated adapter's activation point in the prompt
    t_prefill_start: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    finish_reason: str | None = None
    cache: Any = None  # its own cache until it joins a decode group
    steps: Any = None  # its running prefill (a generator), while prefilling
    rng: torch.Generator | None = None
    shadow: Any = None  # a ShadowJob being filled while it decodes (sampled for the quality guard)

    def move_to(self, status: Status) -> None:
        """Advance the request's phase; a transition the enum does not allow is a bug, refused loudly."""
        if not self.status.may_become(status):
            raise RuntimeError(f"request {self.id}: {self.status.value} -> {status.value} is not a transition")
        self.status = status
        if status == Status.FINISHED:
            self.steps = None

    @property
    def cached_tokens(self) -> int:
        return self.reuse.reused_tokens if self.reuse else 0

    def ttft_s(self) -> float | None:
        return (self.t_first - self.created) if self.t_first else None


class QueueFull(Exception):
    """The waiting queue is at its limit (or the engine is shutting down)."""
