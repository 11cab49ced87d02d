"""What a sender's prefill leaves behind for others: per-layer K/V and, where needed, E.

``capture`` runs the sender's own forward over the context tokens and records, per layer ``l``,
K and V (``[1, kv_heads, n, head_dim]``, post-RoPE, positions 0..n-1, every token even in a
sliding-window layer) and E at the requested layers (``[1, n, hidden]``, the hidden state entering
layer ``l``).

NOTE: an activated adapter (aLoRA) captures a context with its adapter off: a shared context lies
before every request's invocation, so its cache is its base's, and the capture says so
(``producer`` is the base's weight summary). The engine never captures past a request's
activation point.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..models.exact import WeightSummary
from ..models.family import FamilyFingerprint
from ..models.loaded import LoadedModel


@dataclass(slots=True)
class SenderCapture:
    """A sender's caches for one context, layer by layer (what the store serialises)."""

    token_ids: tuple[int, ...]
    family: FamilyFingerprint
    producer: WeightSummary  # the weights that computed these caches (an aLoRA's: its base's)
    dtype: torch.dtype
    num_layers: int
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # l -> (K, V)
    e: dict[int, torch.Tensor] = field(default_factory=dict)  # l -> E

    @property
    def sender_identity(self) -> str:
        return self.producer.identity

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def kv_nbytes(self, layer: int) -> int:
        k, v = self.kv[layer]
        return k.numel() * k.element_size() + v.numel() * v.element_size()

    def e_nbytes(self, layer: int) -> int:
        t = self.e[layer]
        return t.numel() * t.element_size()

    def nbytes(self) -> int:
        return sum(self.kv_nbytes(l) for l in self.kv) + sum(self.e_nbytes(l) for l in self.e)

    def shape_errors(self, kv_layers: Iterable[int], e_layers: Iterable[int]) -> list[str]:
        """Entries whose shapes do not fit this capture's family and token count (empty when all fit)."""
        f, n = self.family, self.num_tokens
        want_kv, want_e = (1, f.num_kv_heads, n, f.head_dim), (1, n, f.hidden_size)
        out = []
        for l in kv_layers:
            k, v = self.kv[l]
            if tuple(k.shape) != want_kv or tuple(v.shape) != want_kv:
                out.append(f"kv[{l}] has shape {tuple(k.shape)}/{tuple(v.shape)}, expected {want_kv}")
        for l in e_layers:
            if tuple(self.e[l].shape) != want_e:
                out.append(f"e[{l}] has shape {tuple(self.e[l].shape)}, expected {want_e}")
        return out

    def missing(self, kv_layers: Iterable[int], e_layers: Iterable[int]) -> list[str]:
        """Names of the entries a plan needs that this capture lacks (empty when complete)."""
        out = [f"kv[{l}]" for l in kv_layers if l not in self.kv]
        return out + [f"e[{l}]" for l in e_layers if l not in self.e]


def capture_steps(sender: LoadedModel, token_ids: list[int] | tuple[int, ...],
                  e_layers: Iterable[int] | Literal["all"] = (), chunk: int | None = None):
    """:func:`capture` as a generator that yields after every ``chunk`` tokens (the server
    interleaves other requests' decode steps between chunks); its return value is the capture.

    The E hooks are on only while this capture's own chunks run, so other models' forwards in
    between (a shared base under several adapters) never leak into it.
    """
    surface = sender.surface
    num_layers = sender.num_layers
    wanted = set(range(num_layers)) if e_layers == "all" else set(e_layers)
    parts: dict[int, list[torch.Tensor]] = {}
    cache = surface.scratch_cache()  # keeps every token of every layer, sliding ones too
    ids = list(token_ids)
    step = chunk or max(1, len(ids))
    for i in range(0, len(ids), step):
        with torch.inference_mode(), surface.recording_inputs(wanted, parts):
            surface.forward(torch.tensor([ids[i:i + step]]), cache, activation_at=None)
        if i + step < len(ids):
            yield i + step
    kv = {l: (cache.layers[l].keys, cache.layers[l].values) for l in range(num_layers)}
    e = {l: torch.cat(p, dim=1) if len(p) > 1 else p[0] for l, p in parts.items() if p}
    return SenderCapture(tuple(token_ids), sender.family, sender.capture_weights, surface.dtype, num_layers, kv, e)


def capture(sender: LoadedModel, token_ids: list[int] | tuple[int, ...],
            e_layers: Iterable[int] | Literal["all"] = (), chunk: int | None = None) -> SenderCapture:
    """Prefill ``token_ids`` with the sender and keep K/V of every layer and E at ``e_layers``."""
    return run_to_end(capture_steps(sender, token_ids, e_layers, chunk))


def run_to_end(steps):
    """Drive a step generator (such as :func:`capture_steps`) to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
