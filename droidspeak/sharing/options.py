"""How a request's prefill may share: one set of options for the CLI and the server."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.prefill import DEFAULT_ROOM
from ..errors import DroidspeakError
from ..kinds import POLICIES, Policy


@dataclass(frozen=True, slots=True)
class ShareOptions:
    """How a request's prefill may share.

    ``policy``: ``profile`` (the profile's chosen plan), ``bandwidth`` (lowest predicted TTFT within
    budget over the link), ``load`` (``bandwidth`` while requests wait, else the most recomputation
    that meets ``slo_s``). ``share=False`` allows no cross-model reuse, exact or profiled: only
    entries its very weights wrote (an activated adapter's captures are its base's, so none). A hit shorter than
    ``min_hit_fraction`` of the prompt (a shared system prompt, say) is not worth its fetches.
    """

    policy: Policy = "bandwidth"
    share: bool = True
    store_on_miss: bool = True
    min_hit_fraction: float = 0.5
    bandwidth_bytes_s: float | None = None  # None: the store's measured bandwidth
    waiting: int = 0  # requests queued behind this one (the load policy)
    slo_s: float = 5.0
    chunk: int | None = None  # prefill a miss in chunks of this many tokens, yielding between them
    room: int = DEFAULT_ROOM  # tokens the cache keeps free for decoding

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise DroidspeakError(f"unknown plan policy '{self.policy}'; known: {', '.join(POLICIES)}")
