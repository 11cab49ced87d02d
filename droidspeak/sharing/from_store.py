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

import torch

from ..core.assemble import assemble
from ..core.plan import RecomputePlan
from ..core.prefill import DEFAULT_ROOM, finish_prefill
from ..core.prompt import PromptTokens
from ..core.result import PrefillResult, ReuseInfo, Timings
from ..errors import DroidspeakError
from ..kinds import ShareKind, TensorKind
from ..models.exact import activation_point
from ..models.loaded import LoadedModel
from ..store.blocks import BlockSource
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
                       kind: ShareKind = ShareKind.PROFILED,
                       extend: tuple[int, list[int]] | None = None) -> PrefillResult:
    """The receiver's prefill of ``prompt`` reusing ``hit``'s stored prefix with ``plan``. With ``extend``
    (``(n, E layers)``: every layer reused, and the receiver computes the producer's very cache for its
    first ``n`` tokens), the tokens from the hit's end to ``n`` are stored too (:meth:`CacheStore.extend`)."""
    if plan.num_layers != receiver.num_layers or hit.num_layers != receiver.num_layers:
        raise DroidspeakError("plan, stored entry and receiver disagree on the number of layers")
    ids = prompt.ids
    m = hit.tokens
    if m <= 0 or m > len(ids):
        raise DroidspeakError("store hit does not fit the prompt")
    t0 = time.perf_counter()
    at = activation_point(ids, receiver.activation)
    source = store.source(hit, fetch_items(plan, order), receiver.family, receiver.surface.dtype)
    record = {layer: [] for layer in extend[1]} if extend and extend[0] > m else None
    res = None
    if isinstance(source, BlockSource) and plan.is_full_reuse():
        res = _from_blocks(receiver, source, ids, room, at, record)
        if res is not None:
            res.info = ReuseInfo(kind, m, hit.sender, str(plan))
            res.timings.prefill_s = time.perf_counter() - t0
    if res is None:
        if order != "e-first":
            source.wait_all()
        asm = assemble(receiver.surface, ids[:m], plan, source)
        cache, logits, suffix_s = finish_prefill(receiver, asm, ids, room, at, record_e=record)
        if asm.fell_back:
            store.stats.bump("fallback_requests")
            record = None
        elif hit.blocks is None and plan.is_full_reuse() and hit.producer is not None:
            store.promote(hit, ids[:m], receiver.family, asm.kv)  # the next hit on this node is an in-process one
        info = ReuseInfo(kind, m, hit.sender, str(plan), missing=tuple(asm.missing))
        res = PrefillResult(cache, logits, asm.recomputed, info,
                            Timings(time.perf_counter() - t0, asm.compute_s, suffix_s, asm.wait_s), at)
    if record is not None and hit.producer is not None and extend is not None:
        n, layers = extend[0], res.cache.layers
        s = m - m % store.block  # a hit that ends inside a block (a partial block): extended from that block's start
        head = hit.blocks[-1].e if s < m and hit.blocks else {}
        e = {layer: torch.cat(([head[layer][None]] if s < m else []) + p, dim=1)[:, :n - s]
             for layer, p in record.items() if p and (s == m or layer in head)}
        res.info.stored_tokens = store.extend(receiver.family, hit.producer, ids[:n], s, receiver.num_layers,
                                              lambda layer: (layers[layer].keys[:, :, s:n], layers[layer].values[:, :, s:n]),
                                              e)
    return res


@torch.inference_mode()
def _from_blocks(receiver: LoadedModel, source: BlockSource, ids: list[int], room: int, at: int | None,
                 record: dict[int, list[torch.Tensor]] | None = None) -> PrefillResult | None:
    """Every layer reused from in-process blocks: one copy of each block into the request's own cache (one
    buffer for all layers), then the request's own tokens. None for a cache that is not one buffer."""
    surface = receiver.surface
    cache = surface.new_cache(len(ids) + room)
    buffer = getattr(cache, "kv_buffer", None)
    if buffer is None:
        return None
    m = source.tokens
    keep = m if len(ids) > m else m - 1  # prompt == context: its last token is replayed for the first logits
    source.fill(buffer)
    for layer in cache.layers:
        layer.filled(keep)
    t = time.perf_counter()
    with surface.recording_inputs(record or {}, record if record is not None else {}):
        logits = surface.forward_tokens(torch.tensor([ids[keep:]]), cache, at)
    return PrefillResult(cache, logits, [], ReuseInfo(ShareKind.EXACT), Timings(suffix_s=time.perf_counter() - t),
                         at)
