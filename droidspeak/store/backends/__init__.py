"""Byte stores behind one small interface (:class:`~.base.Backend`): memory, disk, Redis, tiers, and
the sealing of shared tiers (:class:`~.sealed.SealedBackend`)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from ..seal import Sealer
from .base import Backend
from .disk import DiskBackend
from .memory import MemoryBackend
from .redis import RedisBackend, redact, redact_spec
from .sealed import SealedBackend
from .tiered import ThrottledBackend, TieredBackend

__all__ = ["Backend", "DiskBackend", "MemoryBackend", "RedisBackend", "SealedBackend", "ThrottledBackend",
           "TieredBackend", "open_backend", "parse_size", "redact", "redact_spec", "tiers_of"]


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def open_backend(spec: str, namespace: str = "default", sealer: Sealer | None = None) -> Backend:
    """``memory[:SIZE]``, ``disk:PATH[::SIZE]``, ``redis[s]://[user:password@]host:port[/db][?budget=SIZE]``;
    tiers joined by ``,``. With a ``sealer``, the shared tiers (disk, Redis) hold sealed values only."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty store spec")
    tiers: list[Backend] = []
    for p in parts:
        if p == "memory" or p.startswith("memory:"):
            tiers.append(MemoryBackend(parse_size(p.split(":", 1)[1]) if ":" in p else 1 << 30))
            continue
        if p.startswith("disk:"):
            rest = p[5:]
            path, _, size = rest.partition("::") if "::" in rest else (rest, "", "")
            shared: Backend = DiskBackend(path, parse_size(size) if size else 8 << 30)
        elif p.startswith(("redis://", "rediss://")):
            u = urlparse(p)
            q = parse_qs(u.query)
            budget = parse_size(q["budget"][0]) if "budget" in q else 4 << 30
            shared = RedisBackend(p.split("?")[0], namespace, budget)
        else:
            raise ValueError(f"unknown store '{redact(p)}': use memory[:SIZE], disk:PATH[::SIZE] or "
                             "redis[s]://[user:password@]HOST:PORT")
        tiers.append(SealedBackend(shared, sealer) if sealer is not None else shared)
    return tiers[0] if len(tiers) == 1 else TieredBackend(tiers)


def tiers_of(backend: Backend) -> list[Backend]:
    """The tiers of a store, each unwrapped from its sealing."""
    tiers = backend.tiers if isinstance(backend, TieredBackend) else [backend]
    return [t.inner if isinstance(t, SealedBackend) else t for t in tiers]
