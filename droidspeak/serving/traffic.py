"""The traffic log: the prompts the quality guard checked, kept (bounded, a ring per pair) in a store
backend under the deployment's namespace, for ``droidspeak profile --from-traffic``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..core.prompt import PromptTokens
from ..paths import home
from ..store.backends import Backend, DiskBackend, SealedBackend, TieredBackend
from ..store.keys import KeySpace

if TYPE_CHECKING:
    from .guard import ShadowJob


def traffic_backend(store_backend: Backend | None) -> Backend:
    """Where checked prompts are kept: the store's disk tier when it has one, else a disk folder
    under ``$DROIDSPEAK_HOME/traffic`` (never only in memory: a restart must not lose them)."""
    tiers = [] if store_backend is None else store_backend.tiers if isinstance(store_backend, TieredBackend) \
        else [store_backend]
    disk = next((t for t in tiers if isinstance(t.inner if isinstance(t, SealedBackend) else t, DiskBackend)), None)
    return disk or DiskBackend(home() / "traffic", 256 << 20)  # the disk tier, sealed as it is; else a local folder


class TrafficLog:
    """The prompts shadow checks used, kept (bounded, a ring per pair) in a store backend under the
    namespace, for ``droidspeak profile --from-traffic``."""

    def __init__(self, backend: Backend, namespace: str, per_pair: int = 200):
        self.backend, self.keys, self.per_pair = backend, KeySpace(namespace), per_pair
        self._next: dict[str, int] = {}

    def _key(self, pair: str, i: int | str) -> str:
        return self.keys.traffic(pair, i)

    @staticmethod
    def pair_key(sender: str, receiver: str) -> str:
        return f"{sender[:16]}-{receiver[:16]}"

    def keep(self, job: "ShadowJob") -> None:
        pair = self.pair_key(job.sender, job.profile.receiver_identity)
        i = self._next.get(pair)
        if i is None:
            raw = self.backend.get(self._key(pair, "next"))
            i = int(raw) if raw else 0
        row = {"prefix": list(job.prompt.prefix), "suffix": list(job.prompt.suffix), "receiver": job.receiver,
               "sender_identity": job.sender, "receiver_identity": job.profile.receiver_identity}
        if self.backend.put(self._key(pair, i % self.per_pair), json.dumps(row).encode()):
            self._next[pair] = i + 1
            self.backend.put(self._key(pair, "next"), str(i + 1).encode())

    def rows(self, sender: str, receiver: str) -> list[PromptTokens]:
        pair = self.pair_key(sender, receiver)
        raw = self.backend.get(self._key(pair, "next"))
        n = min(int(raw), self.per_pair) if raw else 0
        out = []
        for i in range(n):
            v = self.backend.get(self._key(pair, i))
            try:
                d = json.loads(v) if v else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                d = None
            if d and d.get("suffix"):
                out.append(PromptTokens(tuple(int(t) for t in d["prefix"]), tuple(int(t) for t in d["suffix"])))
        return out
