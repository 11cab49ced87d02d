"""The KV/E store: a sender's caches saved per layer, found by the longest stored prefix.

``CacheStore.put(capture, e_layers)`` writes, for the block-aligned part of the context, one
entry per layer for K/V and one per requested E, then a manifest (which also holds the producing
weights' summary, so a receiver can judge exactness without knowing that model), then an index
key at every block boundary. ``lookup(family, tokens)`` finds, for each sender that stored a prefix
of these tokens, the longest such prefix. ``source(hit, items)`` streams entries on a background
thread in the order asked (E first for pipelining) and answers as a
:class:`~droidspeak.core.assemble.LayerSource`; each entry is decoded and checked against its key, the
family's shapes and the token count before it is handed over, and a missing or bad entry becomes
``None`` (counted and logged): the assembler recomputes instead.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..core.capture import SenderCapture
from ..kinds import TensorKind
from ..models.exact import WeightSummary
from ..models.family import FamilyFingerprint
from .backends import Backend
from .codec import CorruptEntry, decode, encode
from .keys import DEFAULT_BLOCK, FORMAT_VERSION, KeySpace, chain_hashes

log = logging.getLogger("droidspeak.store")
Item = tuple[TensorKind, int]  # (KV | E, layer)


@dataclass(frozen=True, slots=True)
class Hit:
    """A sender's stored prefix of the tokens looked up."""

    sender: str
    tokens: int  # the stored prefix covers tokens [0, tokens)
    chain: str  # hash of the stored context's last block (names its entries)
    stored_tokens: int  # the whole stored context (>= tokens)
    num_layers: int
    e_layers: tuple[int, ...]
    producer: WeightSummary | None = None  # the weights that wrote it, as the manifest says


@dataclass
class StoreStats:
    counts: Counter = field(default_factory=Counter)
    fetched_bytes: int = 0
    fetch_s: float = 0.0

    def bump(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    @property
    def bandwidth_bytes_s(self) -> float | None:
        return self.fetched_bytes / self.fetch_s if self.fetch_s > 0 and self.fetched_bytes > 1 << 20 else None


class CacheStore:
    def __init__(self, backend: Backend, namespace: str = "default", block: int = DEFAULT_BLOCK, fmt: str = "native"):
        self.backend = backend
        self.keys = KeySpace(namespace, FORMAT_VERSION)
        self.block = block
        self.fmt = fmt
        self.stats = StoreStats()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ writing
    def put(self, cap: SenderCapture, e_layers: Iterable[int] | None = None) -> int:
        """Store a capture's K/V (every layer) and E (``e_layers``, default: those captured).

        Returns the number of tokens stored (the block-aligned part), 0 when too short or when a
        write failed (then nothing is indexed, so nothing half-written can be found).
        """
        chains = chain_hashes(cap.token_ids, self.block)
        n = len(chains) * self.block
        if n == 0:
            return 0
        fam, snd, last = cap.family.digest, cap.sender_identity, chains[-1]
        e_layers = sorted(cap.e if e_layers is None else e_layers)
        ok = True
        for layer in range(cap.num_layers):
            k, v = cap.kv[layer]
            key = self.keys.entry(fam, snd, last, layer, TensorKind.KV)
            ok &= self.backend.put(key, encode(key, {"k": k[:, :, :n], "v": v[:, :, :n]}, self.fmt))
        for layer in e_layers:
            key = self.keys.entry(fam, snd, last, layer, TensorKind.E)
            ok &= self.backend.put(key, encode(key, {"e": cap.e[layer][:, :n]}, self.fmt))
        if not ok:
            self.stats.bump("put_failed")
            log.warning("store put failed for sender %s (%d tokens); not indexed", snd[:12], n)
            return 0
        manifest = {"version": FORMAT_VERSION, "family": fam, "sender": snd, "tokens": n, "chain": last,
                    "num_layers": cap.num_layers, "e_layers": e_layers, "fmt": self.fmt, "created": time.time(),
                    "producer": cap.producer.to_dict()}
        ok = self.backend.put(self.keys.manifest(fam, snd, last), json.dumps(manifest).encode())
        mkey = self.keys.manifest(fam, snd, last).encode()
        for ch in chains:
            ok &= self.backend.put(self.keys.index(fam, snd, ch), mkey)
        with self._lock:
            senders = set(self._senders(fam)) | {snd}
            ok &= self.backend.put(self.keys.senders(fam), json.dumps(sorted(senders)).encode())
        self.stats.bump("puts")
        return n if ok else 0

    def _senders(self, family: str) -> list[str]:
        raw = self.backend.get(self.keys.senders(family))
        try:
            return [str(s) for s in json.loads(raw)] if raw else []
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
            return []

    # ------------------------------------------------------------------ lookup
    def lookup(self, family: FamilyFingerprint, token_ids: list[int] | tuple[int, ...],
               senders: list[str] | None = None, num_layers: int | None = None,
               refused: list[str] | None = None) -> list[Hit]:
        """The longest stored prefix of ``token_ids`` per sender (longest first). Stored values a sealed
        tier refused on the way (not authenticated under this node's secret) are named in ``refused``."""
        fam = family.digest
        chains = chain_hashes(token_ids, self.block)
        if not chains:
            return []
        self.backend.take_refused()  # what this thread read before is not this lookup's
        hits = []
        known = senders if senders is not None else self._senders(fam)
        bad = self.backend.take_refused()
        for snd in known:
            exists = self.backend.exists_many([self.keys.index(fam, snd, ch) for ch in chains])
            for i in range(len(chains) - 1, -1, -1):
                if not exists[i]:
                    continue
                raw = self.backend.get(self.keys.index(fam, snd, chains[i]))
                man = self._manifest(raw, fam, snd, num_layers)
                if man is not None:
                    hits.append(Hit(snd, (i + 1) * self.block, man["chain"], man["tokens"], man["num_layers"],
                                    tuple(man["e_layers"]), self._producer(man, snd)))
                    break
                got = self.backend.take_refused()
                if got:  # this sender's values do not open here: no shorter prefix of it will either
                    bad += got
                    break
        if bad:
            self.stats.bump("refused", len(bad))
            log.warning("%d stored value(s) for this prompt refused, not authenticated under this node's store "
                        "secret (first: %s); computing instead", len(bad), bad[0])
            if refused is not None:
                refused.append(f"{len(bad)} stored value(s) not authenticated")
        self.stats.bump("lookups")
        self.stats.bump("lookup_hits" if hits else "lookup_misses")
        return sorted(hits, key=lambda h: -h.tokens)

    def _producer(self, man: dict, sender: str) -> WeightSummary | None:
        """The producing weights' summary from a manifest, when it holds one for this very sender."""
        try:
            p = WeightSummary.from_dict(man["producer"])
        except (KeyError, TypeError, ValueError):
            return None
        return p if p.identity == sender else None

    def _manifest(self, mkey: bytes | None, fam: str, snd: str, num_layers: int | None) -> dict | None:
        if not mkey:
            return None
        raw = self.backend.get(mkey.decode(errors="replace"))
        try:
            man = json.loads(raw) if raw else None
            if (man is None or man.get("version") != FORMAT_VERSION or man.get("family") != fam
                    or man.get("sender") != snd or (num_layers is not None and man.get("num_layers") != num_layers)):
                if man is not None:
                    self.stats.bump("foreign_manifest")
                return None
            int(man["tokens"]), str(man["chain"]), list(man["e_layers"]), str(man["fmt"])
            return man
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            self.stats.bump("corrupt")
            return None

    # ------------------------------------------------------------------ reading
    def fetch_one(self, hit: Hit, item: Item, family: FamilyFingerprint, dtype: torch.dtype):
        """One entry, decoded and checked; None (counted, logged, deleted when bad) when unusable."""
        kind, layer = item
        key = self.keys.entry(family.digest, hit.sender, hit.chain, layer, kind)
        t0 = time.perf_counter()
        raw = self.backend.get(key)
        self.stats.fetch_s += time.perf_counter() - t0
        if raw is None:
            refused = self.backend.take_refused()
            why = "refused (not authenticated under this node's store secret)" if refused else "missing"
            self.stats.bump("refused" if refused else "missing")
            log.warning("store entry %s %d of %s %s; recomputing", kind.value, layer, hit.sender[:12], why)
            if refused:
                self.backend.delete(key)
            self.invalidate(hit, family)
            return None
        self.stats.fetched_bytes += len(raw)
        try:
            t = decode(raw, key, dtype)
            n_all = hit.stored_tokens
            if kind == TensorKind.KV:
                k, v = t["k"], t["v"]
                want = (1, family.num_kv_heads, n_all, family.head_dim)
                if tuple(k.shape) != want or tuple(v.shape) != want:
                    raise CorruptEntry(f"kv shape {tuple(k.shape)} != {want}")
                return k[:, :, :hit.tokens], v[:, :, :hit.tokens]
            e = t["e"]
            if tuple(e.shape) != (1, n_all, family.hidden_size):
                raise CorruptEntry(f"e shape {tuple(e.shape)} != {(1, n_all, family.hidden_size)}")
            return e[:, :hit.tokens]
        except (CorruptEntry, KeyError) as err:
            self.stats.bump("corrupt")
            log.warning("store entry %s %d of %s refused (%s); recomputing", kind.value, layer, hit.sender[:12], err)
            self.backend.delete(key)
            self.invalidate(hit, family)
            return None

    def invalidate(self, hit: Hit, family: FamilyFingerprint) -> None:
        """Make a stored context unreachable (its manifest goes): it is stored afresh on the next miss."""
        self.backend.delete(self.keys.manifest(family.digest, hit.sender, hit.chain))
        self.stats.bump("invalidated")

    def source(self, hit: Hit, items: list[Item], family: FamilyFingerprint, dtype: torch.dtype) -> "FetchSource":
        """Start fetching ``items`` in order; the result answers as a layer source."""
        return FetchSource(self, hit, items, family, dtype)


class FetchSource:
    """Fetches ``items`` in order on a background thread; answers ``e(layer)`` / ``kv(layer)``
    (a :class:`~droidspeak.core.assemble.LayerSource`) as soon as that entry has arrived."""

    def __init__(self, store: CacheStore, hit: Hit, items: list[Item], family: FamilyFingerprint, dtype: torch.dtype,
                 timeout_s: float = 120.0):
        self.store, self.hit, self.family, self.dtype = store, hit, family, dtype
        self.items = list(dict.fromkeys(items))
        self.timeout_s = timeout_s
        self._events = {it: threading.Event() for it in self.items}
        self._values: dict[Item, object] = {}
        self._thread = threading.Thread(target=self._run, daemon=True, name="droidspeak-fetch")
        self._thread.start()

    def _run(self) -> None:
        for it in self.items:
            try:
                self._values[it] = self.store.fetch_one(self.hit, it, self.family, self.dtype)
            except Exception as e:  # noqa: BLE001 - a fetch fault must become a miss, never a crash
                log.warning("fetch of %s failed: %s", it, e)
                self._values[it] = None
            self._events[it].set()

    def _get(self, item: Item):
        ev = self._events.get(item)
        if ev is None or not ev.wait(self.timeout_s):
            return None
        return self._values.get(item)

    def e(self, layer: int):
        return self._get((TensorKind.E, layer))

    def kv(self, layer: int):
        return self._get((TensorKind.KV, layer))

    def wait_all(self) -> None:
        self._thread.join()
