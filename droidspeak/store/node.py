"""A node's store from its settings: the tiers, the shared ones sealed under the deployment's secret.

The one place that decides whether a node may use what it was given: a shared tier on another
machine without a store secret is refused (one line), unless the operator says ``insecure_store``
explicitly: anyone who can write to such a tier could otherwise make this node serve their answers.
"""

from __future__ import annotations

from ..errors import DroidspeakError
from .backends import RedisBackend, open_backend, parse_size, tiers_of
from .blocks import BlockTier
from .cache import CacheStore
from .keys import check_namespace
from .seal import Sealer


def open_store(spec: str, namespace: str = "default", fmt: str = "native", secret: str = "",
               encrypt: bool = False, insecure: bool = False, write_behind: int = 0) -> CacheStore:
    """The store ``spec`` names (``memory:2GB,disk:PATH,redis://...``) for ``namespace``: a ``memory``
    tier is the in-process tier of tensor blocks; with a ``secret``, the disk and Redis tiers hold sealed
    values only (``encrypt``: AES-GCM, else HMAC); with ``write_behind`` (a queue length), a background
    writer puts contexts in them off the request's path."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    memory = [p for p in parts if p == "memory" or p.startswith("memory:")]
    shared = [p for p in parts if p not in memory]
    try:
        check_namespace(namespace)
        if encrypt and not secret:
            raise DroidspeakError("store_encrypt needs a store secret (DROIDSPEAK_STORE_SECRET)")
        if not parts:
            raise ValueError("empty store spec")
        if len(memory) > 1:
            raise ValueError("one memory tier at most")
        blocks = BlockTier(parse_size(memory[0].split(":", 1)[1]) if ":" in memory[0] else 1 << 30) if memory else None
        sealer = Sealer(secret, namespace, encrypt) if secret else None
        backend = open_backend(",".join(shared), namespace, sealer) if shared else None
    except ValueError as e:
        raise DroidspeakError(str(e)) from None
    remote = [t for t in (tiers_of(backend) if backend is not None else []) if isinstance(t, RedisBackend) and not t.loopback]
    if remote and sealer is None and not insecure:
        raise DroidspeakError(
            f"the shared tier {remote[0].url} is on another machine and no store secret is set: anyone who can "
            "write to it could make this node serve their answers. Set DROIDSPEAK_STORE_SECRET (the same on every "
            "node of the deployment), or pass --insecure-store to accept that")
    return CacheStore(backend, namespace=namespace, fmt=fmt, blocks=blocks, write_behind=write_behind)
