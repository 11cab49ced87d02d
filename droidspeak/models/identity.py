"""Model identity: a content hash of the weights, never a name.

Two loads of different weights under one name get different identities, so a cache written by
one can never be handed to the other (the bug vLLM #3264 and LMCache #2960 shipped).

Besides the whole-model identity, :func:`layer_digests` hashes the parts a context cache depends
on, one digest each: the token embedding and every decoder layer. Two models whose embedding and
layers ``[0, K)`` have equal digests compute bit-identical hidden states and K/V there for any
context (the exactness contract in :mod:`droidspeak.models.exact` rests on this).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import torch

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EMBED_NAMES = ("embed_tokens",)


def _feed(h: "hashlib._Hash", name: str, t: torch.Tensor) -> None:
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    flat = t.detach().contiguous().cpu().reshape(-1)
    h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """blake2b over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.blake2b(digest_size=16)
    seen: dict[tuple, str] = {}
    for name in sorted(tensors):
        t = tensors[name].detach()
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if t.numel() and key in seen:  # tied weights: hash the bytes once, name the alias
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(f"alias:{seen[key]}".encode())
            continue
        seen[key] = name
        _feed(h, name, t)
    return h.hexdigest()


def layer_of(name: str) -> int | None:
    """The decoder layer a parameter belongs to (``...layers.12.self_attn...`` -> 12), else None."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def layer_digests(tensors: Mapping[str, torch.Tensor], num_layers: int) -> tuple[str, tuple[str, ...]]:
    """``(embedding digest, per-layer digests)`` of a model's state dict.

    A layer's digest covers every tensor whose name holds ``layers.<i>.`` (its attention, MLP and
    norms, with names relative to the layer so that a prefix such as PEFT's ``base_model.model.``
    does not matter); the embedding digest covers the tensors named ``embed_tokens``.
    """
    embed = hashlib.blake2b(digest_size=16)
    per_layer = [hashlib.blake2b(digest_size=16) for _ in range(num_layers)]
    for name in sorted(tensors):
        idx = layer_of(name)
        if idx is not None and idx < num_layers:
            _feed(per_layer[idx], name[_LAYER_RE.search(name).end():], tensors[name])
        elif any(part in name for part in _EMBED_NAMES):
            _feed(embed, name.rsplit("embed_tokens", 1)[1], tensors[name])
    return embed.hexdigest(), tuple(h.hexdigest() for h in per_layer)


def combine(kind: str, *parts: Any) -> str:
    """Identity of a derived model (e.g. base + adapter) from its parts."""
    payload = json.dumps([kind, *parts], sort_keys=True, default=str).encode()
    return hashlib.blake2b(payload, digest_size=16).hexdigest()
