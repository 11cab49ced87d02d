"""Store keys, every format in one place: what an entry is, spelled out so that no entry can be
taken for another, and the bookkeeping keys beside the entries (a Redis tier's byte budget, the
quality guard's traffic log).

A key names the deployment namespace, the entry format version, the model family fingerprint,
the sender's content identity, the chained hash of the context's token blocks, the layer and the
kind (``kv`` or ``e``). Chained block hashes (as vLLM's prefix caching does) make every block
boundary of a context addressable, so the longest stored prefix of a new prompt is found with one
existence check per boundary.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from ..kinds import TensorKind

FORMAT_VERSION = 1
DEFAULT_BLOCK = 16
_NS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_namespace(ns: str) -> str:
    if not _NS_RE.match(ns or ""):
        raise ValueError(f"store namespace '{ns}' must be 1-64 letters, digits, '.', '_' or '-'")
    return ns


def chain_hashes(token_ids: list[int] | tuple[int, ...], block: int = DEFAULT_BLOCK) -> list[str]:
    """Hash of every full block prefix: ``out[i]`` covers tokens ``[0, (i+1)*block)``."""
    out, prev = [], b""
    arr = np.asarray(token_ids, dtype=np.int64)
    for i in range(len(arr) // block):
        h = hashlib.blake2b(prev + arr[i * block:(i + 1) * block].tobytes(), digest_size=16)
        prev = h.digest()
        out.append(h.hexdigest())
    return out


def tail_hash(chain: str, tail: list[int] | tuple[int, ...]) -> str:
    """Hash of a partial block: the ``tail`` tokens (fewer than a block) right after the full block whose chained
    hash is ``chain``. Hashed apart from full blocks (its own personalization), so it can never be taken for one."""
    arr = np.asarray(tail, dtype=np.int64)
    return hashlib.blake2b(bytes.fromhex(chain) + arr.tobytes(), digest_size=16, person=b"droidspeak-tail").hexdigest()


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key builder for one deployment namespace."""

    namespace: str = "default"
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    @property
    def root(self) -> str:
        return f"ds{self.version}:{self.namespace}"

    def entry(self, family: str, sender: str, chain: str, layer: int, kind: TensorKind) -> str:
        return f"{self.root}:{family}:{sender}:{chain}:{TensorKind(kind).value}:{layer}"

    def manifest(self, family: str, sender: str, chain: str) -> str:
        return f"{self.root}:{family}:{sender}:{chain}:manifest"

    def index(self, family: str, sender: str, chain: str) -> str:
        """Marks that ``sender`` stored a context through this block boundary; value: manifest key."""
        return f"{self.root}:{family}:{sender}:idx:{chain}"

    def senders(self, family: str) -> str:
        return f"{self.root}:{family}:senders"

    # ---------------------------------------------------------------- bookkeeping beside the entries
    def budget_lru(self) -> str:
        """A Redis tier's sorted set of this namespace's keys by last use (eviction order)."""
        return f"ds:{self.namespace}:lru"

    def budget_bytes(self) -> str:
        """A Redis tier's count of this namespace's bytes."""
        return f"ds:{self.namespace}:bytes"

    def budget_sizes(self) -> str:
        """A Redis tier's hash of each key's size."""
        return f"ds:{self.namespace}:sizes"

    def traffic(self, pair: str, slot: int | str) -> str:
        """One checked prompt the quality guard kept for ``pair`` (``slot`` ``next``: the ring's cursor)."""
        return f"{self.root}:traffic:{pair}:{slot}"
