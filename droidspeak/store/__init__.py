"""The KV/E store: keys, serialisation, sealing, byte backends and the per-layer cache store."""

from .backends import (
                       Backend,
                       DiskBackend,
                       MemoryBackend,
                       RedisBackend,
                       SealedBackend,
                       ThrottledBackend,
                       TieredBackend,
                       open_backend,
)
from .blocks import BlockSource, BlockTier
from .cache import CacheStore, FetchSource, Hit
from .codec import FORMATS, CorruptEntry, decode, encode
from .keys import KeySpace, chain_hashes
from .node import open_store
from .seal import Refused, Sealer

__all__ = ["Backend", "BlockSource", "BlockTier", "CacheStore", "CorruptEntry", "DiskBackend", "FORMATS",
           "FetchSource", "Hit", "KeySpace", "MemoryBackend", "RedisBackend", "Refused", "SealedBackend", "Sealer",
           "ThrottledBackend", "TieredBackend", "chain_hashes", "decode", "encode", "open_backend", "open_store"]
