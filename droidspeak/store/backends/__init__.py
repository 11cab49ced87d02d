"""Byte stores behind one small interface (:class:`~.base.Backend`): memory, disk, Redis, tiers."""

from __future__ import annotations

from .base import Backend
from .disk import DiskBackend
from .memory import MemoryBackend
from .redis import RedisBackend
from .tiered import ThrottledBackend, TieredBackend

__all__ = ["Backend", "DiskBackend", "MemoryBackend", "RedisBackend", "ThrottledBackend", "TieredBackend",
           "open_backend", "parse_size"]


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def open_backend(spec: str, namespace: str = "default") -> Backend:
    """``memory[:SIZE]``, ``disk:PATH[:SIZE]``, ``redis://host:port[/db][?budget=SIZE]``; tiers joined by ``,``."""
    from urllib.parse import parse_qs, urlparse

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty store spec")
    tiers: list[Backend] = []
    for p in parts:
        if p == "memory" or p.startswith("memory:"):
            tiers.append(MemoryBackend(parse_size(p.split(":", 1)[1]) if ":" in p else 1 << 30))
        elif p.startswith("disk:"):
            rest = p[5:]
            path, _, size = rest.partition("::") if "::" in rest else (rest, "", "")
            tiers.append(DiskBackend(path, parse_size(size) if size else 8 << 30))
        elif p.startswith("redis://"):
            u = urlparse(p)
            q = parse_qs(u.query)
            budget = parse_size(q["budget"][0]) if "budget" in q else 4 << 30
            tiers.append(RedisBackend(p.split("?")[0], namespace, budget))
        else:
            raise ValueError(f"unknown store '{p}': use memory[:SIZE], disk:PATH[::SIZE] or redis://HOST:PORT")
    return tiers[0] if len(tiers) == 1 else TieredBackend(tiers)
