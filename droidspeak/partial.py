"""The receiver's partial prefill (DroidSpeak's core).

Given a sender's capture of a context (n tokens) and a recompute plan, the receiver's cache is
assembled layer by layer:

* reused layer ``l``: the sender's K/V, as they are (same positions 0..n-1, so post-RoPE keys fit);
* group ``[s, e)``: the receiver's own layers s..e-1 run over all n context tokens from the
  sender's E at ``s`` (the receiver's own embeddings when ``s == 0``), causal mask, positions
  0..n-1; their fresh K/V replace the sender's. Hidden states of reused layers are never computed.

Then the receiver's own suffix runs through all of its layers on the mixed cache and decoding goes
on as usual. When the prompt is exactly the shared prefix, the cache is cut to n-1 tokens and the
last prompt token is replayed through every layer to produce the first logits.

NOTE: with every layer recomputed, the result equals the receiver's own full prefill; with
sender == receiver and nothing recomputed, it equals it too. tests/test_partial.py checks both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from .sender import SenderCapture
from .errors import DroidspeakError, IncompatibleModelsError
from .family import compatibility
from .models import LoadedModel
from .plan import RecomputePlan
from .surface import ModelSurface


@dataclass(slots=True)
class PrefillResult:
    """A receiver cache covering the prompt, and the logits of the prompt's last token."""

    cache: DynamicCache
    logits: torch.Tensor  # [vocab]
    num_prompt_tokens: int
    recomputed_layers: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # what was reused from whom, fallbacks


def check_shareable(receiver: LoadedModel, cap: SenderCapture) -> None:
    verdict = compatibility(receiver.family, cap.family)
    if not verdict.ok:
        raise IncompatibleModelsError(verdict.reason)


@torch.inference_mode()
def full_prefill(model: LoadedModel, prompt_ids: list[int]) -> PrefillResult:
    """The model's own prefill of the whole prompt (the baseline DroidSpeak is measured against)."""
    surface = ModelSurface(model.model)
    cache = surface.new_cache()
    t0 = time.perf_counter()
    logits = surface.forward_tokens(torch.tensor([list(prompt_ids)]), cache)
    dt = time.perf_counter() - t0
    return PrefillResult(cache, logits, len(prompt_ids), list(range(model.num_layers)), {"prefill_s": dt})


@torch.inference_mode()
def partial_prefill(receiver: LoadedModel, cap: SenderCapture, plan: RecomputePlan,
                    suffix_ids: list[int] | tuple[int, ...] = ()) -> PrefillResult:
    """Build the receiver's cache from the sender's capture and ``plan``, then run ``suffix_ids``."""
    check_shareable(receiver, cap)
    if plan.num_layers != receiver.num_layers:
        raise DroidspeakError(f"plan is for {plan.num_layers} layers, receiver has {receiver.num_layers}")
    missing = cap.missing(plan.reused_layers, plan.transition_layers)
    if missing:
        raise DroidspeakError(f"sender capture lacks {', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}")
    n = cap.num_tokens
    if n == 0:
        raise DroidspeakError("cannot reuse an empty context")
    bad = cap.shape_errors(plan.reused_layers, plan.transition_layers)
    if bad:  # never run on a cache that does not belong to these tokens
        raise DroidspeakError(f"sender capture is inconsistent: {bad[0]}")
    surface = ModelSurface(receiver.model)
    dtype = surface.dtype
    t0 = time.perf_counter()
    cache = surface.new_cache()
    dev = surface.device
    position_ids = torch.arange(n, device=dev).unsqueeze(0)  # [1, n]: the prefix sits at positions 0..n-1 in both models
    context = torch.tensor([list(cap.token_ids)], device=dev)
    masks: dict[str, Any] | None = None
    for s, e in plan.groups:
        # hidden: [1, n, hidden] entering layer s
        hidden = surface.embed(context) if s == 0 else cap.e[s].to(device=dev, dtype=dtype)
        if masks is None:
            masks = surface.prefill_masks(hidden, position_ids)
        surface.run_layers(hidden, s, e, cache, position_ids, masks)
    for layer in plan.reused_layers:
        k, v = cap.kv[layer]  # [1, kv_heads, n, head_dim]
        cache.layers[layer].update(k.to(device=dev, dtype=dtype), v.to(device=dev, dtype=dtype))
    t1 = time.perf_counter()
    suffix = list(suffix_ids)
    logits = surface.first_logits(cache, suffix, context)  # prompt == prefix: replays the last context token
    t2 = time.perf_counter()
    return PrefillResult(cache, logits, n + len(suffix), plan.recomputed_layers,
                         {"recompute_s": t1 - t0, "suffix_s": t2 - t1, "prefill_s": t2 - t0})
