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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch

from ..core.capture import SenderCapture
from ..kinds import TensorKind
from ..models.exact import WeightSummary
from ..models.family import FamilyFingerprint
from .backends import Backend
from .blocks import Block, BlockSource, BlockTier
from .codec import CorruptEntry, decode, encode
from .keys import DEFAULT_BLOCK, FORMAT_VERSION, KeySpace, chain_hashes, tail_hash
from .writer import Writer

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
    blocks: tuple[Block, ...] | None = field(default=None, compare=False, repr=False)  # the in-process tier's
    ids: tuple[int, ...] | None = field(default=None, compare=False, repr=False)  # a whole context's tokens

    @property
    def tier(self) -> str:
        return "memory" if self.blocks is not None else "shared"


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


@dataclass(slots=True)
class Context:
    """What a writer puts in the shared tiers: one context's K/V (every layer) and E, as tensors."""

    family: FamilyFingerprint
    producer: WeightSummary
    chains: list[str]  # chained hashes of its blocks
    num_layers: int
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> K, V: [1, kv_heads, >= n, head_dim]
    e: dict[int, torch.Tensor]  # layer -> E: [1, >= n, hidden]
    ids: list[int] | None = None  # whole: every token of it, the tail after the last full block included


class CacheStore:
    """The store a node shares through: an in-process tier of tensor blocks (``blocks``), and byte tiers
    (``backend``: disk, Redis) written, with ``write_behind``, by a background writer off the request's
    critical path (a bounded queue; a full queue drops the write, never the request)."""

    def __init__(self, backend: Backend | None = None, namespace: str = "default", block: int = DEFAULT_BLOCK,
                 fmt: str = "native", blocks: BlockTier | None = None, write_behind: int = 0):
        self.backend = backend
        self.blocks = blocks
        self.keys = KeySpace(namespace, FORMAT_VERSION)
        self.block = block
        self.fmt = fmt
        self.stats = StoreStats()
        self._lock = threading.Lock()
        self.writer = Writer(self._write_queued, write_behind) if write_behind and backend is not None else None
        # contexts queued for the byte tiers, by (family, first block): a lookup that may need one waits for it
        self._pending: dict[tuple[str, str], int] = {}
        self._written = threading.Condition()

    # ------------------------------------------------------------------ writing
    def put(self, cap: SenderCapture, e_layers: Iterable[int] | None = None) -> int:
        """Store a capture's K/V (every layer) and E (``e_layers``, default: those captured)."""
        e = {layer: cap.e[layer] for layer in sorted(cap.e if e_layers is None else e_layers)}
        return self.put_context(cap.family, cap.producer, cap.token_ids, cap.num_layers, lambda layer: cap.kv[layer], e)

    def put_context(self, family: FamilyFingerprint, producer: WeightSummary, token_ids: list[int] | tuple[int, ...],
                    num_layers: int, kv: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                    e: dict[int, torch.Tensor], whole: bool = False) -> int:
        """Store the block-aligned part of a context whose ``producer`` computed ``kv(layer)`` (K, V:
        ``[1, kv_heads, >= n, head_dim]``) and ``e`` (``[1, >= n, hidden]``): into the in-process tier at
        once, into the byte tiers now or (``write_behind``) by the writer.

        With ``whole``, the byte tiers keep every token, the tail after the last full block too, and the
        manifest lists the tokens, so :meth:`lookup_prefix` can serve any prefix of it to the token (another
        engine whose receivers cannot compute the tail as their producer would: vLLM's activated adapters).

        Returns the number of tokens stored (0 when too short or when a write failed: then nothing is
        indexed, so nothing half-written can be found).
        """
        chains = chain_hashes(token_ids, self.block)
        n = len(token_ids) if whole and self.backend is not None else len(chains) * self.block
        if not chains:
            return 0
        stored = 0
        if self.blocks is not None:
            stored = self.blocks.put(family.digest, producer, chains, num_layers, kv, e) * self.block
        if self.backend is not None:
            ctx = Context(family, producer, chains, num_layers, {layer: kv(layer) for layer in range(num_layers)}, e,
                          [int(t) for t in token_ids] if whole else None)
            if self.writer is None:
                stored = max(stored, self._write(ctx))
            else:
                key = (family.digest, chains[0])
                with self._written:
                    self._pending[key] = self._pending.get(key, 0) + 1
                if self.writer.submit(ctx):
                    stored = max(stored, n)
                else:
                    self._done_writing(key)
                    self.stats.bump("writes_dropped")
        self.stats.bump("puts")
        return stored

    def _write_queued(self, c: Context) -> int:
        try:
            return self._write(c)
        finally:
            self._done_writing((c.family.digest, c.chains[0]))

    def _done_writing(self, key: tuple[str, str]) -> None:
        with self._written:
            left = self._pending.get(key, 0) - 1
            if left > 0:
                self._pending[key] = left
            else:
                self._pending.pop(key, None)
            self._written.notify_all()

    def _await_pending(self, fam: str, first: str, timeout: float = 10.0) -> None:
        """A context this node queued for the byte tiers, which a lookup starting with the same block may
        need, is written first (or ``timeout`` passes): a node never misses what it just computed."""
        with self._written:
            self._written.wait_for(lambda: (fam, first) not in self._pending, timeout)

    def _write(self, c: Context) -> int:
        """One context's entries, then its manifest, then its index keys (a failed write indexes nothing)."""
        n = len(c.ids) if c.ids is not None else len(c.chains) * self.block
        fam, snd, last = c.family.digest, c.producer.identity, c.chains[-1]
        e_layers = sorted(c.e)
        ok = True
        for layer in range(c.num_layers):
            k, v = c.kv[layer]
            key = self.keys.entry(fam, snd, last, layer, TensorKind.KV)
            ok &= self.backend.put(key, encode(key, {"k": k[:, :, :n], "v": v[:, :, :n]}, self.fmt))
        for layer in e_layers:
            key = self.keys.entry(fam, snd, last, layer, TensorKind.E)
            ok &= self.backend.put(key, encode(key, {"e": c.e[layer][:, :n]}, self.fmt))
        if not ok:
            self.stats.bump("put_failed")
            log.warning("store put failed for sender %s (%d tokens); not indexed", snd[:12], n)
            return 0
        manifest = {"version": FORMAT_VERSION, "family": fam, "sender": snd, "tokens": n, "chain": last,
                    "num_layers": c.num_layers, "e_layers": e_layers, "fmt": self.fmt, "created": time.time(),
                    "producer": c.producer.to_dict()}
        if c.ids is not None:
            manifest["ids"] = c.ids
        ok = self.backend.put(self.keys.manifest(fam, snd, last), json.dumps(manifest).encode())
        mkey = self.keys.manifest(fam, snd, last).encode()
        for ch in c.chains:
            ok &= self.backend.put(self.keys.index(fam, snd, ch), mkey)
        with self._lock:
            senders = set(self._senders(fam)) | {snd}
            ok &= self.backend.put(self.keys.senders(fam), json.dumps(sorted(senders)).encode())
        return n if ok else 0

    def put_tail(self, family: FamilyFingerprint, producer: WeightSummary, token_ids: list[int] | tuple[int, ...],
                 num_layers: int, kv: Callable[[int], tuple[torch.Tensor, torch.Tensor]], e: dict[int, torch.Tensor]) -> int:
        """Keep a context's partial last block in the in-process tier: the tokens of ``token_ids`` after its last
        full block (stored before), whose K/V ``kv(layer)`` gives (``[1, kv_heads, r, head_dim]``) and E ``e``
        (``[1, r, hidden]``). A prompt on the same context then reuses it to the token. The byte tiers keep whole
        blocks only. Returns the tokens stored through it (0: none: no partial block, or no full block before)."""
        b = self.block
        k, r = divmod(len(token_ids), b)
        if self.blocks is None or k == 0 or r == 0:
            return 0
        chain = chain_hashes(token_ids[:k * b], b)[-1]
        ok = self.blocks.put_tail(family.digest, producer, chain, tail_hash(chain, token_ids[k * b:]), num_layers, kv, e)
        return len(token_ids) if ok else 0

    def extend(self, family: FamilyFingerprint, producer: WeightSummary, token_ids: list[int], start: int,
               num_layers: int, kv: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
               e: dict[int, torch.Tensor]) -> int:
        """A hit's own continuation, computed on top of ``start`` stored tokens by the producer's very weights
        (its K/V and E from ``start`` on), kept in the in-process tier: the next prompt that runs on (the
        next turn of a conversation) finds it. Returns the tokens now stored."""
        if self.blocks is None:
            return 0
        chains = chain_hashes(token_ids, self.block)
        return self.blocks.put(family.digest, producer, chains, num_layers, kv, e, start) * self.block

    def promote(self, hit: Hit, token_ids: list[int], family: FamilyFingerprint,
                kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """A byte tier's hit, fetched and checked, kept in the in-process tier too (every layer's K/V)."""
        if self.blocks is None or hit.producer is None or len(kv) < hit.num_layers:
            return
        chains = chain_hashes(token_ids, self.block)
        self.blocks.put(family.digest, hit.producer, chains, hit.num_layers, lambda layer: kv[layer], {})

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the writer has written (or dropped) everything queued."""
        if self.writer is not None:
            self.writer.flush(timeout)

    def tier_stats(self) -> list[dict]:
        """Bytes, budget and errors of every tier, the in-process one first."""
        out = [self.blocks.stats()] if self.blocks is not None else []
        if self.backend is not None:
            st = self.backend.stats()
            out += st.get("tiers", [st])
        return out

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
        """The longest stored prefix of ``token_ids`` per sender (longest first; at equal length, the
        in-process tier's): whole blocks, and in the in-process tier a context's partial last block after
        them. Stored values a sealed tier refused on the way (not authenticated under this node's secret)
        are named in ``refused``."""
        fam = family.digest
        chains = chain_hashes(token_ids, self.block)
        if not chains:
            return []
        hits: dict[str, Hit] = {}
        if self.blocks is not None:
            tails = self._tails(chains, token_ids)
            for snd, producer in self.blocks.producers(fam).items():
                if senders is not None and snd not in senders:
                    continue
                h = self._memory_hit(fam, snd, producer, chains, tails, num_layers)
                if h is not None:
                    hits[snd] = h
        if self.backend is not None:
            if self.writer is not None and not hits:  # a context in the in-process tier was found there
                self._await_pending(fam, chains[0])
            for h in self._lookup_shared(fam, chains, senders, num_layers, refused):
                if h.sender not in hits or hits[h.sender].tokens < h.tokens:
                    hits[h.sender] = h
        self.stats.bump("lookups")
        self.stats.bump("lookup_hits" if hits else "lookup_misses")
        return sorted(hits.values(), key=lambda h: -h.tokens)

    def cut(self, hit: Hit, family: FamilyFingerprint, token_ids: list[int] | tuple[int, ...]) -> Hit | None:
        """``hit`` cut back to ``token_ids``, a prefix of the tokens it was found for: every block boundary of a
        stored context is a stored prefix too, and an in-process hit also takes a partial block held that ends
        within them (nothing is read from the byte tiers). None when not one whole block is left."""
        chains = chain_hashes(token_ids, self.block)
        if not chains:
            return None
        if hit.blocks is not None and self.blocks is not None and hit.producer is not None:
            got = self._memory_hit(family.digest, hit.sender, hit.producer, chains, self._tails(chains, token_ids),
                                   hit.num_layers)
            if got is not None:
                return got
        return replace(hit, tokens=min(hit.tokens, len(chains) * self.block))

    def _tails(self, chains: list[str], token_ids: list[int] | tuple[int, ...]) -> Callable[[int], list[str]]:
        """For :meth:`BlockTier.held`: the keys of the partial blocks of ``token_ids`` that may follow ``k`` whole
        ones, longest first (made once per ``k``)."""
        b, made = self.block, {}

        def tails(k: int) -> list[str]:
            if k not in made:
                made[k] = [tail_hash(chains[k - 1], token_ids[k * b:k * b + r])
                           for r in range(min(b - 1, len(token_ids) - k * b), 0, -1)]
            return made[k]

        return tails

    def _memory_hit(self, fam: str, snd: str, producer: WeightSummary, chains: list[str],
                    tails: Callable[[int], list[str]], num_layers: int | None) -> Hit | None:
        """``snd``'s longest stored prefix of these chains in the in-process tier (a partial block after them too)."""
        held = self.blocks.held(fam, snd, chains, tails)
        if not held or (num_layers is not None and held[0].kv.shape[0] != num_layers):
            return None
        e_layers = set.intersection(*(set(x.e) for x in held))
        n = sum(x.kv.shape[3] for x in held)
        return Hit(snd, n, chains[n // self.block - 1], n, held[0].kv.shape[0], tuple(sorted(e_layers)), producer,
                   tuple(held))

    def lookup_prefix(self, family: FamilyFingerprint, token_ids: list[int] | tuple[int, ...], sender: str,
                      num_layers: int | None = None) -> Hit | None:
        """The longest prefix of ``token_ids``, to the token, that ``sender`` stored in the byte tiers: the
        deepest stored block boundary, then as many more tokens as the context stored there (``whole``) has
        equal to these. None when not even one block is stored."""
        if self.backend is None:
            return None
        fam = family.digest
        chains = chain_hashes(token_ids, self.block)
        if not chains:
            return None
        if self.writer is not None:
            self._await_pending(fam, chains[0])
        hits = self._lookup_shared(fam, chains, [sender], num_layers, None)
        if not hits:
            return None
        h, n = hits[0], hits[0].tokens
        if h.ids is not None and len(h.ids) == h.stored_tokens:
            while n < min(len(token_ids), len(h.ids)) and h.ids[n] == token_ids[n]:
                n += 1
        return replace(h, tokens=n)

    def _lookup_shared(self, fam: str, chains: list[str], senders: list[str] | None, num_layers: int | None,
                       refused: list[str] | None) -> list[Hit]:
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
                    ids = man.get("ids")
                    hits.append(Hit(snd, (i + 1) * self.block, man["chain"], man["tokens"], man["num_layers"],
                                    tuple(man["e_layers"]), self._producer(man, snd),
                                    ids=tuple(ids) if isinstance(ids, list) else None))
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
        return hits

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

    def source(self, hit: Hit, items: list[Item], family: FamilyFingerprint, dtype: torch.dtype):
        """The hit's entries as a layer source: the in-process tier's blocks as they are, or the byte
        tiers' fetched in the order of ``items`` on a background thread."""
        if hit.blocks is not None:
            return BlockSource(list(hit.blocks), hit.tokens, dtype)
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
