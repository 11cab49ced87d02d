"""Sealed values: what a shared tier holds can be trusted only by a node that holds the deployment's secret.

Every value a node writes to a shared tier (Redis, a disk tier) is *sealed* under a key derived from
the deployment's store secret and the namespace: authenticated with HMAC-SHA256 over the value's key
and its bytes (the safetensors header with its metadata, the tensor bytes), or, with ``encrypt``,
encrypted and authenticated with AES-256-GCM (the key as associated data). A value is opened only
when its tag verifies under this node's key (compared in constant time); anything else (a value
forged with the public codec and a valid unkeyed checksum, one sealed under another secret or
namespace, one moved to another key, an unsealed one) is refused, and the reader computes instead.

Layout of a sealed value: ``MAGIC (4 bytes) || body``; ``DSM1``: ``value || HMAC (32 bytes)``;
``DSE1``: ``nonce (12 bytes) || AES-GCM ciphertext and tag``. The in-process tier holds no sealed
values: it is the node's own memory.

Rotating the secret: nodes restarted with a new secret refuse every value sealed under the old one;
those lookups are misses, the contexts are prefilled and stored afresh, and the old values age out of
the tier's byte budget. Nothing breaks and no answer changes.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from ..errors import DroidspeakError

MAC, AEAD = b"DSM1", b"DSE1"
_TAG = 32
_NONCE = 12


class Refused(Exception):
    """A value that must not be opened (the reason is the message; it never holds the secret)."""


class Sealer:
    """Seals and opens values for one deployment namespace (see the module docstring)."""

    def __init__(self, secret: str | bytes, namespace: str, encrypt: bool = False):
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < 16:
            raise DroidspeakError("the store secret must be at least 16 bytes (e.g. `openssl rand -hex 32`)")
        # one key per purpose and namespace: a tenant's secret opens nothing of another namespace
        self._mac_key = hmac.new(raw, b"droidspeak/store/mac/v1|" + namespace.encode(), hashlib.sha256).digest()
        self._aead = None
        if encrypt:
            try:
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            except ImportError:  # pragma: no cover - a dependency
                raise DroidspeakError("store_encrypt needs the 'cryptography' package") from None
            self._aead = AESGCM(hmac.new(raw, b"droidspeak/store/aead/v1|" + namespace.encode(),
                                         hashlib.sha256).digest())
        self.encrypt = encrypt

    def __repr__(self) -> str:  # never the key
        return f"Sealer(encrypt={self.encrypt})"

    def _tag(self, key: str, value: bytes | memoryview) -> bytes:
        h = hmac.new(self._mac_key, digestmod=hashlib.sha256)
        h.update(len(key).to_bytes(4, "big") + key.encode())  # the key is part of what is authenticated
        h.update(value)
        return h.digest()

    def seal(self, key: str, value: bytes) -> bytes:
        if self._aead is not None:
            nonce = os.urandom(_NONCE)
            return AEAD + nonce + self._aead.encrypt(nonce, value, key.encode())
        return MAC + value + self._tag(key, value)

    def open(self, key: str, sealed: bytes) -> bytes:
        """The value sealed under ``key`` by a holder of this node's secret; :class:`Refused` otherwise."""
        magic = bytes(sealed[:4])
        if magic == AEAD:
            if self._aead is None:
                raise Refused("encrypted, and this node does not decrypt (store_encrypt is off)")
            from cryptography.exceptions import InvalidTag

            if len(sealed) < 4 + _NONCE + 16:
                raise Refused("truncated")
            try:
                return self._aead.decrypt(bytes(sealed[4:4 + _NONCE]), bytes(sealed[4 + _NONCE:]), key.encode())
            except InvalidTag:
                raise Refused("not authenticated under this node's store secret") from None
        if magic == MAC:
            if self._aead is not None:
                raise Refused("not encrypted, and this node requires encrypted values (store_encrypt)")
            if len(sealed) < 4 + _TAG:
                raise Refused("truncated")
            view = memoryview(sealed)
            body, tag = view[4:len(sealed) - _TAG], view[len(sealed) - _TAG:]
            if not hmac.compare_digest(self._tag(key, body), tag):
                raise Refused("not authenticated under this node's store secret")
            return bytes(body)
        raise Refused("not sealed (written without a store secret)")
