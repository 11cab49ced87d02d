"""The KV/E store: keys, serialisation, byte backends and the per-layer cache store."""

from .backends import Backend, DiskBackend, MemoryBackend, RedisBackend, ThrottledBackend, TieredBackend, open_backend
from .cache import CacheStore, FetchSource, Hit
from .codec import FORMATS, CorruptEntry, decode, encode
from .keys import KeySpace, chain_hashes

__all__ = ["Backend", "CacheStore", "CorruptEntry", "DiskBackend", "FORMATS", "FetchSource", "Hit", "KeySpace",
           "MemoryBackend", "RedisBackend", "ThrottledBackend", "TieredBackend", "chain_hashes", "decode", "encode",
           "open_backend"]
