"""The shared tier: a real Redis (or Valkey) server through redis-py (``redis://`` or TLS ``rediss://``,
with ``user:password@`` for an authenticated server; the password is never logged)."""

from __future__ import annotations

import ipaddress
import time
from urllib.parse import urlparse

from ..keys import KeySpace
from .base import Backend, log


def redact(url: str) -> str:
    """A Redis URL as it may be logged or shown: its password replaced by ``***``."""
    u = urlparse(url)
    if u.password is None:
        return url
    user = f"{u.username}:" if u.username else ":"
    return u._replace(netloc=f"{user}***@{u.hostname}" + (f":{u.port}" if u.port else "")).geturl()


def redact_spec(spec: str) -> str:
    """A store spec (tiers joined by ``,``) as it may be shown: every Redis password replaced by ``***``."""
    return ",".join(redact(p.strip()) if p.strip().startswith(("redis://", "rediss://")) else p
                    for p in spec.split(","))


def is_loopback(url: str) -> bool:
    """The server is on this machine (a loopback address, ``localhost``, or a unix socket)."""
    u = urlparse(url)
    if u.scheme == "unix" or u.hostname in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(u.hostname).is_loopback
    except ValueError:
        return False


class RedisBackend(Backend):
    """A real Redis server (redis-py). Values are the codec's bytes; the byte budget is kept per
    namespace with a sorted set of keys by last use, so several deployments share one server."""

    name = "redis"

    def __init__(self, url: str, namespace: str = "default", budget_bytes: int | None = 4 << 30,
                 timeout_s: float = 2.0):
        import redis

        super().__init__(budget_bytes)
        self.url = redact(url)  # what logs and errors show: never the password
        self.loopback = is_loopback(url)
        self._redis = redis
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        keys = KeySpace(namespace)
        self._lru, self._size, self._sizes = keys.budget_lru(), keys.budget_bytes(), keys.budget_sizes()
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
