"""Model identity: a content hash of the weights, never a name.

Two loads of different weights under one name get different identities, so a cache written by
one can never be handed to the other (the bug vLLM #3264 and LMCache #2960 shipped).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """blake2b over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.blake2b(digest_size=16)
    seen: dict[tuple, str] = {}
    for name in sorted(tensors):
        t = tensors[name].detach()
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel() and key in seen:  # tied weights: hash the bytes once, name the alias
            h.update(f"alias:{seen[key]}".encode())
            continue
        seen[key] = name
        flat = t.contiguous().cpu().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def combine(kind: str, *parts: Any) -> str:
    """Identity of a derived model (e.g. base + adapter) from its parts."""
    payload = json.dumps([kind, *parts], sort_keys=True, default=str).encode()
    return hashlib.blake2b(payload, digest_size=16).hexdigest()
