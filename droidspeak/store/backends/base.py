"""Byte stores behind one small interface: memory (LRU), local disk, Redis, and tiers of them.

Every backend maps ``str`` keys to ``bytes`` values, keeps within its byte budget (a value larger
than the budget is refused, older values are evicted least-recently-used first) and never raises
for a storage fault: a failed read is a miss and a failed write returns False, counted in
``errors`` and logged. What a value means is decided above (``codec``), never here.
"""

from __future__ import annotations

import logging

log = logging.getLogger("droidspeak.store")


class Backend:
    name = "backend"

    def __init__(self, budget_bytes: int | None = None):
        self.budget = budget_bytes
        self.errors = 0
        self.evictions = 0
        self.refused = 0  # values that did not open under this node's store secret (a sealed tier)

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def put(self, key: str, value: bytes) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def exists_many(self, keys: list[str]) -> list[bool]:
        return [self.get(k) is not None for k in keys]

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get(k) for k in keys]

    def nbytes(self) -> int:
        raise NotImplementedError

    def take_refused(self) -> list[str]:
        """Keys whose values this thread read and a sealed tier refused since the last call (then forgotten)."""
        return []

    def stats(self) -> dict:
        return {"name": self.name, "bytes": self.nbytes(), "budget": self.budget, "errors": self.errors,
                "evictions": self.evictions}
