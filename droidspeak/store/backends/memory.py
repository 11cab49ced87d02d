"""An in-process dict of bytes with a byte budget and LRU eviction."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .base import Backend


class MemoryBackend(Backend):
    """In-process dict with a byte budget and LRU eviction (thread-safe)."""

    name = "memory"

    def __init__(self, budget_bytes: int | None = 1 << 30):
        super().__init__(budget_bytes)
        self._d: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def exists_many(self, keys: list[str]) -> list[bool]:
        with self._lock:
            return [k in self._d for k in keys]

    def put(self, key: str, value: bytes) -> bool:
        value = bytes(value)
        with self._lock:
            if self.budget is not None and len(value) > self.budget:
                return False
            old = self._d.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            while self.budget is not None and self._bytes + len(value) > self.budget and self._d:
                _, ev = self._d.popitem(last=False)
                self._bytes -= len(ev)
                self.evictions += 1
            self._d[key] = value
            self._bytes += len(value)
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            v = self._d.pop(key, None)
            if v is not None:
                self._bytes -= len(v)

    def nbytes(self) -> int:
        return self._bytes
