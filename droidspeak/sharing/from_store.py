"""Partial prefill over a store: entries stream in while the receiver computes (E-first).

The receiver's recompute of a group ``[s, e)`` needs only the sender's E at ``s``; the reused
layers' K/V are needed only when the request's own tokens run at the end. So the E entries are
fetched first, each group is recomputed as soon as its E arrives, and the reused K/V stream in
meanwhile (``order="e-first"``, the paper's pipelining). The two sequential orders the paper
compares against are kept for the benchmark: fetch every layer's K/V and the E, then compute
(``all-then-compute``); fetch only what the plan needs, then compute (``reused-then-compute``).

Faults are the assembler's to handle (:mod:`droidspeak.core.assemble`): a missing or refused entry is
recomputed from the receiver's own embeddings, never used.
"""

from __future__ import annotations

import time

from ..core.assemble import assemble
from ..core.plan import RecomputePlan
from ..core.prefill import DEFAULT_ROOM, finish_prefill
from ..core.prompt import PromptTokens
from ..core.result import PrefillResult, ReuseInfo, Timings
from ..errors import DroidspeakError
from ..kinds import ShareKind, TensorKind
from ..models.exact import activation_point
from ..models.loaded import LoadedModel
from ..store.cache import CacheStore, Hit, Item

ORDERS = ("e-first", "reused-then-compute", "all-then-compute")


def fetch_items(plan: RecomputePlan, order: str) -> list[Item]:
    e_items: list[Item] = [(TensorKind.E, s) for s in plan.transition_layers]
    if order == "all-then-compute":
        return [(TensorKind.KV, layer) for layer in range(plan.num_layers)] + e_items
    if order in ("e-first", "reused-then-compute"):
        return e_items + [(TensorKind.KV, layer) for layer in plan.reused_layers]
    raise DroidspeakError(f"unknown fetch order '{order}'; known: {', '.join(ORDERS)}")


def prefill_from_store(receiver: LoadedModel, store: CacheStore, hit: Hit, plan: RecomputePlan,
                       prompt: PromptTokens, order: str = "e-first", room: int = DEFAULT_ROOM,
                       kind: ShareKind = ShareKind.PROFILED) -> PrefillResult:
    """The receiver's prefill of ``prompt`` reusing ``hit``'s stored prefix with ``plan``."""
    if plan.num_layers != receiver.num_layers or hit.num_layers != receiver.num_layers:
        raise DroidspeakError("plan, stored entry and receiver disagree on the number of layers")
    ids = prompt.ids
    m = hit.tokens
    if m <= 0 or m > len(ids):
        raise DroidspeakError("store hit does not fit the prompt")
    t0 = time.perf_counter()
    source = store.source(hit, fetch_items(plan, order), receiver.family, receiver.surface.dtype)
    if order != "e-first":
        source.wait_all()
    asm = assemble(receiver.surface, ids[:m], plan, source)
    at = activation_point(ids, receiver.activation)
    cache, logits, suffix_s = finish_prefill(receiver, asm, ids, room, at)
    if asm.fell_back:
        store.stats.bump("fallback_requests")
    info = ReuseInfo(kind, m, hit.sender, str(plan), missing=tuple(asm.missing))
    return PrefillResult(cache, logits, asm.recomputed, info,
                         Timings(time.perf_counter() - t0, asm.compute_s, suffix_s, asm.wait_s), at)
