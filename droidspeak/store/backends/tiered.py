"""Tiers of backends (memory -> disk -> Redis), and a throttled backend for benchmarks."""

from __future__ import annotations

import time

from .base import Backend


class TieredBackend(Backend):
    """Lookup in order (memory -> disk -> Redis), promoting hits to the faster tiers; writes go
    to every tier (so other nodes see them through the shared one)."""

    name = "tiered"

    def __init__(self, tiers: list[Backend]):
        super().__init__(None)
        if not tiers:
            raise ValueError("a tiered store needs at least one tier")
        self.tiers = tiers

    def get(self, key: str) -> bytes | None:
        for i, t in enumerate(self.tiers):
            v = t.get(key)
            if v is not None:
                for faster in self.tiers[:i]:
                    faster.put(key, v)
                return v
        return None

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(keys)
        todo = list(range(len(keys)))
        for i, t in enumerate(self.tiers):
            if not todo:
                break
            vals = t.get_many([keys[j] for j in todo])
            rest = []
            for j, v in zip(todo, vals):
                if v is None:
                    rest.append(j)
                else:
                    out[j] = v
                    for faster in self.tiers[:i]:
                        faster.put(keys[j], v)
            todo = rest
        return out

    def exists_many(self, keys: list[str]) -> list[bool]:
        out = [False] * len(keys)
        for t in self.tiers:
            todo = [j for j in range(len(keys)) if not out[j]]
            if not todo:
                break
            for j, e in zip(todo, t.exists_many([keys[j] for j in todo])):
                out[j] = e
        return out

    def put(self, key: str, value: bytes) -> bool:
        return any([t.put(key, value) for t in self.tiers])

    def delete(self, key: str) -> None:
        for t in self.tiers:
            t.delete(key)

    def nbytes(self) -> int:
        return sum(t.nbytes() for t in self.tiers)

    def take_refused(self) -> list[str]:
        return [k for t in self.tiers for k in t.take_refused()]

    def stats(self) -> dict:
        return {"name": self.name, "tiers": [t.stats() for t in self.tiers]}


class ThrottledBackend(Backend):
    """Wraps a backend and delays reads as a link of ``bandwidth_bytes_s`` would (benchmarks)."""

    def __init__(self, inner: Backend, bandwidth_bytes_s: float):
        super().__init__(inner.budget)
        self.inner, self.bw = inner, bandwidth_bytes_s
        self.name = f"{inner.name}@{bandwidth_bytes_s / 1e6:g}MB/s"

    def get(self, key: str) -> bytes | None:
        t0 = time.perf_counter()
        v = self.inner.get(key)
        if v is not None:
            wait = len(v) / self.bw - (time.perf_counter() - t0)
            if wait > 0:
                time.sleep(wait)
        return v

    def exists_many(self, keys: list[str]) -> list[bool]:
        return self.inner.exists_many(keys)

    def put(self, key: str, value: bytes) -> bool:
        return self.inner.put(key, value)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def nbytes(self) -> int:
        return self.inner.nbytes()

    def take_refused(self) -> list[str]:
        return self.inner.take_refused()
