"""Byte stores behind one small interface: memory (LRU), local disk, Redis, and tiers of them.

Every backend maps ``str`` keys to ``bytes`` values, keeps within its byte budget (a value larger
than the budget is refused, older values are evicted least-recently-used first) and never raises
for a storage fault: a failed read is a miss and a failed write returns False, counted in
``errors`` and logged. What a value means is decided above (``codec``), never here.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger("droidspeak.store")


class Backend:
    name = "backend"

    def __init__(self, budget_bytes: int | None = None):
        self.budget = budget_bytes
        self.errors = 0
        self.evictions = 0

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

    def stats(self) -> dict:
        return {"name": self.name, "bytes": self.nbytes(), "budget": self.budget, "errors": self.errors,
                "evictions": self.evictions}


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


class DiskBackend(Backend):
    """One file per value under ``root`` (named by a hash of the key), atomic writes, LRU by mtime."""

    name = "disk"

    def __init__(self, root: str | Path, budget_bytes: int | None = 8 << 30):
        super().__init__(budget_bytes)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for tmp in self.root.glob("*/*.tmp*"):  # leftovers of a crash mid-write
            tmp.unlink(missing_ok=True)
        self._sizes = {p: p.stat().st_size for p in self.root.glob("*/*.st")}
        self._bytes = sum(self._sizes.values())

    def _path(self, key: str) -> Path:
        h = hashlib.sha256(key.encode()).hexdigest()
        return self.root / h[:2] / f"{h}.st"

    def get(self, key: str) -> bytes | None:
        p = self._path(key)
        try:
            data = p.read_bytes()
            os.utime(p)
            return data
        except FileNotFoundError:
            return None
        except OSError as e:
            self.errors += 1
            log.warning("disk store read failed for %s: %s", p.name, e)
            return None

    def exists_many(self, keys: list[str]) -> list[bool]:
        return [self._path(k).exists() for k in keys]

    def put(self, key: str, value: bytes) -> bool:
        p = self._path(key)
        if self.budget is not None and len(value) > self.budget:
            return False
        with self._lock:
            self._evict_for(len(value), keep=p)
            tmp = p.with_name(p.name + f".tmp{os.getpid()}.{threading.get_ident()}")
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(value)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, p)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                self.errors += 1
                log.warning("disk store write failed (%s): %s", "disk full" if e.errno == errno.ENOSPC else "error", e)
                return False
            self._bytes += len(value) - self._sizes.get(p, 0)
            self._sizes[p] = len(value)
            return True

    def _evict_for(self, size: int, keep: Path) -> None:
        if self.budget is None:
            return
        need = self._bytes - self._sizes.get(keep, 0) + size - self.budget
        if need <= 0:
            return
        def mtime(q: Path) -> float:
            try:
                return q.stat().st_mtime
            except OSError:
                return 0.0
        for q in sorted((q for q in self._sizes if q != keep), key=mtime):
            if need <= 0:
                break
            q.unlink(missing_ok=True)
            sz = self._sizes.pop(q)
            self._bytes -= sz
            need -= sz
            self.evictions += 1

    def delete(self, key: str) -> None:
        p = self._path(key)
        with self._lock:
            p.unlink(missing_ok=True)
            self._bytes -= self._sizes.pop(p, 0)

    def nbytes(self) -> int:
        return self._bytes


class RedisBackend(Backend):
    """A real Redis server (redis-py). Values are the codec's bytes; the byte budget is kept per
    namespace with a sorted set of keys by last use, so several deployments share one server."""

    name = "redis"

    def __init__(self, url: str, namespace: str = "default", budget_bytes: int | None = 4 << 30,
                 timeout_s: float = 2.0):
        import redis

        super().__init__(budget_bytes)
        self.url = url
        self._redis = redis
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._lru = f"ds:{namespace}:lru"
        self._size = f"ds:{namespace}:bytes"
        self._sizes = f"ds:{namespace}:sizes"
        self._last_warn = 0.0

    def _fail(self, what: str, e: Exception) -> None:
        self.errors += 1
        if time.time() - self._last_warn > 5:
            self._last_warn = time.time()
            log.warning("redis %s failed (%s): %s; treating as a miss", what, self.url, e)

    def get(self, key: str) -> bytes | None:
        try:
            v = self.client.get(key)
            if v is not None:
                self.client.zadd(self._lru, {key: time.time()})
            return v
        except self._redis.RedisError as e:
            self._fail("get", e)
            return None

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            vals = self.client.mget(keys)
            now = time.time()
            hit = {k: now for k, v in zip(keys, vals) if v is not None}
            if hit:
                self.client.zadd(self._lru, hit)
            return vals
        except self._redis.RedisError as e:
            self._fail("mget", e)
            return [None] * len(keys)

    def exists_many(self, keys: list[str]) -> list[bool]:
        if not keys:
            return []
        try:
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                pipe.exists(k)
            return [bool(x) for x in pipe.execute()]
        except self._redis.RedisError as e:
            self._fail("exists", e)
            return [False] * len(keys)

    def put(self, key: str, value: bytes) -> bool:
        if self.budget is not None and len(value) > self.budget:
            return False
        try:
            old = self.client.hget(self._sizes, key)
            pipe = self.client.pipeline(transaction=True)
            pipe.set(key, value)
            pipe.hset(self._sizes, key, len(value))
            pipe.zadd(self._lru, {key: time.time()})
            pipe.incrby(self._size, len(value) - int(old or 0))
            total = pipe.execute()[-1]
            while self.budget is not None and total > self.budget:
                oldest = self.client.zrange(self._lru, 0, 15)
                oldest = [k for k in oldest if k != key.encode()]
                if not oldest:
                    break
                for k in oldest:
                    total = self._drop(k)
                    self.evictions += 1
                    if total <= self.budget:
                        break
            return True
        except self._redis.RedisError as e:
            self._fail("set", e)
            return False

    def _drop(self, key: str | bytes) -> int:
        size = int(self.client.hget(self._sizes, key) or 0)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hdel(self._sizes, key)
        pipe.zrem(self._lru, key)
        pipe.decrby(self._size, size)
        return int(pipe.execute()[-1])

    def delete(self, key: str) -> None:
        try:
            self._drop(key)
        except self._redis.RedisError as e:
            self._fail("delete", e)

    def nbytes(self) -> int:
        try:
            return int(self.client.get(self._size) or 0)
        except self._redis.RedisError:
            return 0


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
