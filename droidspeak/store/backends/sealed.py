"""A shared tier behind a :class:`~droidspeak.store.seal.Sealer`: values are sealed on the way in and
opened on the way out; a value that does not open is refused (a miss for the reader), counted, and
remembered for the reading thread (:meth:`take_refused`), whose caller says what it was and logs it."""

from __future__ import annotations

import threading

from ..seal import Refused, Sealer
from .base import Backend


class SealedBackend(Backend):
    """Wraps a shared tier (Redis, disk) so that only values sealed under this node's secret are read."""

    def __init__(self, inner: Backend, sealer: Sealer):
        super().__init__(inner.budget)
        self.inner, self.sealer = inner, sealer
        self.name = inner.name
        self._local = threading.local()

    def _open(self, key: str, value: bytes | None) -> bytes | None:
        if value is None:
            return None
        try:
            return self.sealer.open(key, value)
        except Refused as e:
            self.refused += 1
            keys = self._refused()
            keys.append(f"{key} ({e})")
            del keys[:-64]  # a reader that never asks keeps only the last few
            return None

    def _refused(self) -> list[str]:
        if not hasattr(self._local, "keys"):
            self._local.keys = []
        return self._local.keys

    def take_refused(self) -> list[str]:
        out, self._local.keys = self._refused(), []
        return out

    def get(self, key: str) -> bytes | None:
        return self._open(key, self.inner.get(key))

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self._open(k, v) for k, v in zip(keys, self.inner.get_many(keys))]

    def exists_many(self, keys: list[str]) -> list[bool]:
        return self.inner.exists_many(keys)

    def put(self, key: str, value: bytes) -> bool:
        return self.inner.put(key, self.sealer.seal(key, value))

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def nbytes(self) -> int:
        return self.inner.nbytes()

    def stats(self) -> dict:
        return self.inner.stats() | {"refused": self.refused, "sealed": "aead" if self.sealer.encrypt else "mac"}
