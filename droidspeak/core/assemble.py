"""The one cache assembler: a receiver's context cache from another model's layers and a plan.

Given a recompute plan and a :class:`LayerSource` (something that answers "E entering layer s" and
"K/V of layer l" for the context's tokens), :func:`assemble` builds the receiver's K/V for every
layer of the context:

* reused layer ``l``: the source's K/V, as they are (same positions 0..n-1, so post-RoPE keys fit);
* group ``[s, e)``: the receiver's own layers s..e-1 run over all n context tokens from the
  source's E at ``s`` (the receiver's own embeddings when ``s == 0``), causal mask, positions
  0..n-1; their K/V replace the source's. Hidden states of reused layers are never computed.

A source may lack an entry (a store entry missing, corrupt or foreign: it answers None). Then the
receiver computes that layer itself: a missing E at ``s`` or K/V at ``l`` makes it recompute from
its own embeddings up to past that layer, continuing from the highest layer already recomputed
from the bottom, so several misses cost one bottom-up pass. The result is then the receiver's own
for those layers: slower, never wrong.

Every path that builds a mixed cache goes through here: the in-memory partial prefill
(:class:`CaptureSource`), the store (:class:`droidspeak.store.cache.FetchSource`, E first while
the reused K/V stream in) and the profiler (a runner that hands back K/V it recomputed once per
group start).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..models.surface import KV, ModelSurface
from .plan import RecomputePlan


class LayerSource(Protocol):
    """Where reused layers come from. Tensors cover the context tokens being assembled."""

    def e(self, layer: int) -> torch.Tensor | None:
        """E entering ``layer``: ``[1, n, hidden]``; None when missing or refused."""

    def kv(self, layer: int) -> KV | None:
        """K and V of ``layer``: ``[1, kv_heads, n, head_dim]`` each; None when missing or refused."""


# recompute(s, e, hidden entering s) -> (hidden after e-1, or None when not computed; K/V by layer)
Runner = Callable[[int, int, torch.Tensor], tuple[torch.Tensor | None, dict[int, KV]]]


@dataclass(slots=True)
class Assembly:
    """The receiver's K/V for every layer of the context, and how each came about."""

    kv: dict[int, KV]  # layer -> (K, V), [1, kv_heads, n, head_dim]
    tokens: int
    recomputed: list[int]  # layers whose K/V are the receiver's own
    missing: list[str] = field(default_factory=list)  # entries the source lacked ("e[12]", "kv[3]")
    compute_s: float = 0.0  # time spent running the receiver's layers
    wait_s: float = 0.0  # time spent waiting for the source

    @property
    def fell_back(self) -> bool:
        return bool(self.missing)


def layer_runner(surface: ModelSurface, tokens: int) -> Runner:
    """The default runner: the receiver's own layers on a scratch cache (masks built once)."""
    position_ids = torch.arange(tokens, device=surface.device).unsqueeze(0)  # [1, n]: positions 0..n-1
    state: dict[str, Any] = {}

    def run(s: int, e: int, hidden: torch.Tensor) -> tuple[torch.Tensor | None, dict[int, KV]]:
        hidden = hidden.to(device=surface.device, dtype=surface.dtype)
        if "masks" not in state:
            state["masks"] = surface.prefill_masks(hidden, position_ids)
        return surface.layers_kv(hidden, s, e, position_ids, state["masks"])

    return run


def assemble(surface: ModelSurface, context_ids: list[int] | tuple[int, ...], plan: RecomputePlan,
             source: LayerSource, runner: Runner | None = None) -> Assembly:
    """Build the receiver's context K/V for ``plan`` from ``source`` (see the module docstring)."""
    n = len(context_ids)
    run = runner or layer_runner(surface, n)
    ids = torch.tensor([list(context_ids)], device=surface.device)
    kv: dict[int, KV] = {}
    missing: list[str] = []
    timer = {"compute": 0.0, "wait": 0.0}
    bottom: dict[str, Any] = {"upto": 0, "hidden": None}  # layers [0, upto) recomputed from the embeddings

    def compute(s: int, e: int, hidden: torch.Tensor) -> torch.Tensor | None:
        t = time.perf_counter()
        out, fresh = run(s, e, hidden)
        kv.update(fresh)
        timer["compute"] += time.perf_counter() - t
        return out

    def fetch(getter: Callable[[int], Any], layer: int) -> Any:
        t = time.perf_counter()
        got = getter(layer)
        timer["wait"] += time.perf_counter() - t
        return got

    def recompute_bottom(upto: int) -> None:
        if upto <= bottom["upto"]:
            return
        h = surface.embed(ids) if bottom["hidden"] is None else bottom["hidden"]
        bottom["hidden"] = compute(bottom["upto"], upto, h)
        bottom["upto"] = upto

    with torch.inference_mode():
        for s, e in plan.groups:
            if e <= bottom["upto"]:
                continue
            if s == 0:
                recompute_bottom(e)
                continue
            hidden = fetch(source.e, s)
            if hidden is None:
                missing.append(f"e[{s}]")
                recompute_bottom(e)
            else:
                compute(s, e, hidden)
        for layer in plan.reused_layers:
            if layer < bottom["upto"]:
                continue
            got = fetch(source.kv, layer)
            if got is None:
                missing.append(f"kv[{layer}]")
                recompute_bottom(layer + 1)
            else:
                kv[layer] = got
    recomputed = sorted(set(plan.recomputed_layers) | set(range(bottom["upto"])))
    return Assembly(kv, n, recomputed, missing, timer["compute"], timer["wait"])


class CaptureSource:
    """A sender's in-memory capture as a layer source (its first ``tokens`` tokens)."""

    def __init__(self, cap: Any, tokens: int | None = None):
        self.cap = cap
        self.n = cap.num_tokens if tokens is None else tokens

    def e(self, layer: int) -> torch.Tensor | None:
        t = self.cap.e.get(layer)
        return None if t is None else t[:, :self.n]

    def kv(self, layer: int) -> KV | None:
        got = self.cap.kv.get(layer)
        return None if got is None else (got[0][:, :, :self.n], got[1][:, :, :self.n])
