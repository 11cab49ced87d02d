"""Partial prefill over a store: entries stream in while the receiver computes (E-first).

The receiver's recompute of a group ``[s, e)`` needs only the sender's E at ``s``; the reused
layers' K/V are needed only when the request's own tokens run at the end. So the E entries are
fetched first, each group is recomputed as soon as its E arrives, and the reused K/V stream in
meanwhile (``order="e-first"``, the paper's pipelining). The two sequential orders the paper
compares against are kept for the benchmark: fetch every layer's K/V and the E, then compute
(``all-then-compute``); fetch only what the plan needs, then compute (``reused-then-compute``).

Faults: a missing or refused E at ``s`` makes the receiver recompute ``[0, e)`` from its own
embeddings; a missing or refused K/V at reused layer ``l`` makes it recompute ``[0, l+1)``. Both
continue from the highest layer already recomputed from the bottom, so several misses cost one
bottom-up pass. The answer is then the receiver's own for those layers: never a wrong cache.
"""

from __future__ import annotations

import time

import torch

from .errors import DroidspeakError
from .models import LoadedModel
from .partial import PrefillResult
from .plan import RecomputePlan
from .prompt import PromptTokens
from .store.cache import CacheStore, Hit, Item
from .surface import ModelSurface

ORDERS = ("e-first", "reused-then-compute", "all-then-compute")


def fetch_items(plan: RecomputePlan, order: str) -> list[Item]:
    e_items: list[Item] = [("e", s) for s in plan.transition_layers]
    if order == "all-then-compute":
        return [("kv", layer) for layer in range(plan.num_layers)] + e_items
    if order in ("e-first", "reused-then-compute"):
        return e_items + [("kv", layer) for layer in plan.reused_layers]
    raise DroidspeakError(f"unknown fetch order '{order}'; known: {', '.join(ORDERS)}")


@torch.inference_mode()
def prefill_from_store(receiver: LoadedModel, store: CacheStore, hit: Hit, plan: RecomputePlan,
                       prompt: PromptTokens, order: str = "e-first") -> PrefillResult:
    """The receiver's prefill of ``prompt`` reusing ``hit``'s stored prefix with ``plan``."""
    if plan.num_layers != receiver.num_layers or hit.num_layers != receiver.num_layers:
        raise DroidspeakError("plan, stored entry and receiver disagree on the number of layers")
    ids = prompt.ids
    m = hit.tokens
    if m <= 0 or m > len(ids):
        raise DroidspeakError("store hit does not fit the prompt")
    surface = ModelSurface(receiver.model)
    dtype = surface.dtype
    t0 = time.perf_counter()
    fetcher = store.fetcher(hit, fetch_items(plan, order), receiver.family, dtype)
    if order != "e-first":
        fetcher.wait_all()
    t_loaded = time.perf_counter() - t0
    dev = surface.device
    context = torch.tensor([ids[:m]], device=dev)
    position_ids = torch.arange(m, device=dev).unsqueeze(0)
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    masks = None
    bottom = {"upto": 0, "hidden": None}
    missing: list[str] = []
    compute_s = 0.0

    def run(hidden: torch.Tensor, s: int, e: int) -> torch.Tensor:
        nonlocal masks, compute_s
        tc = time.perf_counter()
        if masks is None:
            masks = surface.prefill_masks(hidden, position_ids)
        out, fresh = surface.layers_kv(hidden, s, e, position_ids, masks)
        kv.update(fresh)
        compute_s += time.perf_counter() - tc
        return out

    def recompute_bottom(upto: int) -> None:
        if upto <= bottom["upto"]:
            return
        h = surface.embed(context) if bottom["hidden"] is None else bottom["hidden"]
        bottom["hidden"] = run(h, bottom["upto"], upto)
        bottom["upto"] = upto

    for s, e in plan.groups:
        if e <= bottom["upto"]:
            continue
        if s == 0:
            recompute_bottom(e)
            continue
        hidden = fetcher.get(("e", s))
        if hidden is None:
            missing.append(f"e[{s}]")
            recompute_bottom(e)
        else:
            run(hidden.to(dev), s, e)
    for layer in plan.reused_layers:
        if layer < bottom["upto"]:
            continue
        got = fetcher.get(("kv", layer))
        if got is None:
            missing.append(f"kv[{layer}]")
            recompute_bottom(layer + 1)
        else:
            kv[layer] = got
    t1 = time.perf_counter()
    cache = surface.cache_from(kv)
    logits = surface.first_logits(cache, ids[m:], context)
    t2 = time.perf_counter()
    recomputed = sorted(set(plan.recomputed_layers) | set(range(bottom["upto"])))
    if missing:
        store.stats.bump("fallback_requests")
    return PrefillResult(
        cache, logits, len(ids), recomputed,
        {"prefill_s": t2 - t0, "compute_s": compute_s, "suffix_s": t2 - t1, "wait_s": max(0.0, t1 - t0 - compute_s),
         "loaded_s": t_loaded},
        {"reused_tokens": m, "sender": hit.sender, "plan": str(plan), "order": order, "missing": missing,
         "fallback_recomputed_upto": bottom["upto"] if missing else 0},
    )
