"""A node's store from its settings: the tiers, the shared ones sealed under the deployment's secret.

The one place that decides whether a node may use what it was given: a shared tier on another
machine without a store secret is refused (one line), unless the operator says ``insecure_store``
explicitly: anyone who can write to such a tier could otherwise make this node serve their answers.
"""

from __future__ import annotations

from ..errors import DroidspeakError
from .backends import RedisBackend, open_backend, tiers_of
from .cache import CacheStore
from .keys import check_namespace
from .seal import Sealer


def open_store(spec: str, namespace: str = "default", fmt: str = "native", secret: str = "",
               encrypt: bool = False, insecure: bool = False) -> CacheStore:
    """The store ``spec`` names (``memory:2GB,disk:PATH,redis://...``) for ``namespace``; with a
    ``secret``, its disk and Redis tiers hold sealed values only (``encrypt``: AES-GCM, else HMAC)."""
    try:
        check_namespace(namespace)
        if encrypt and not secret:
            raise DroidspeakError("store_encrypt needs a store secret (DROIDSPEAK_STORE_SECRET)")
        sealer = Sealer(secret, namespace, encrypt) if secret else None
        backend = open_backend(spec, namespace, sealer)
    except ValueError as e:
        raise DroidspeakError(str(e)) from None
    remote = [t for t in tiers_of(backend) if isinstance(t, RedisBackend) and not t.loopback]
    if remote and sealer is None and not insecure:
        raise DroidspeakError(
            f"the shared tier {remote[0].url} is on another machine and no store secret is set: anyone who can "
            "write to it could make this node serve their answers. Set DROIDSPEAK_STORE_SECRET (the same on every "
            "node of the deployment), or pass --insecure-store to accept that")
    return CacheStore(backend, namespace=namespace, fmt=fmt)
