"""What a prefill hands back: the receiver's cache, the first logits, and how sharing was used.

:class:`ReuseInfo` is the one record of a sharing decision's outcome; the CLI, the demo, the
engine, the HTTP API and the metrics all read it (never a dict of loose keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..kinds import ShareKind


@dataclass(slots=True)
class ReuseInfo:
    """How a request's prefill used what was stored (or captured)."""

    kind: ShareKind
    reused_tokens: int = 0  # context tokens taken from the store / capture
    sender: str | None = None  # identity of the weights that wrote the reused cache
    plan: str = "all"  # the recompute plan applied (``all`` on a miss)
    reason: str = ""  # why this decision (a profile's file name, the exactness proof, "no usable prefix")
    profile: str | None = None  # the profile used, for a profiled hit
    missing: tuple[str, ...] = ()  # store entries missing or refused, recomputed instead
    stored_tokens: int = 0  # tokens this prefill stored for others (a miss)
    source: Any = field(default=None, repr=False, compare=False)  # the Profile behind a profiled hit (the guard's)

    @property
    def fallback(self) -> bool:
        return bool(self.missing)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "reused_tokens": self.reused_tokens, "sender": self.sender,
                "plan": self.plan, "reason": self.reason, "profile": self.profile, "missing": list(self.missing),
                "fallback": self.fallback, "stored_tokens": self.stored_tokens}


@dataclass(slots=True)
class Timings:
    """Where a prefill's time went (seconds)."""

    prefill_s: float = 0.0  # the whole prefill: what the request waits for its first token
    recompute_s: float = 0.0  # running the receiver's recomputed layers over the context
    suffix_s: float = 0.0  # the request's own tokens over the assembled cache
    wait_s: float = 0.0  # waiting for store entries (not hidden behind compute)


@dataclass(slots=True)
class PrefillResult:
    """A receiver cache covering the prompt, and the logits of the prompt's last token."""

    cache: Any  # a transformers Cache, room preallocated for the tokens to generate
    logits: torch.Tensor  # [vocab]
    recomputed_layers: list[int]
    info: ReuseInfo
    timings: Timings = field(default_factory=Timings)
    activation_at: int | None = None  # an activated receiver's activation point in this prompt (decoding goes on with it)
