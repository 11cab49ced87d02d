"""The in-process tier: the K/V (and the E peers need) of fixed-size token blocks, as tensors.

A block is ``block`` consecutive tokens of a context (16, as the store's chained hashes count them),
keyed by the family, the producer's weight identity and the chained hash of the context up to and
including the block, so two contexts with a common prefix share its blocks, and a block can only
be found by a prompt that begins with exactly its tokens. A block holds the K/V of every layer,
``[L, 2, kv_heads, block, head_dim]`` in the producer's dtype, and the E of the layers its producer's
peers need, ``[block, hidden]`` each. Nothing is serialised or checksummed: this is the process's own
memory, as trusted as the model itself.

A context's last, partial block (its shared prefix ending inside a block: the tokens after the last
full block, up to where the requests' own turns begin) is kept too, keyed by the chained hash before
it and its tokens (:func:`~.keys.tail_hash`), so a request on the same context reuses every token of
it, not only the whole blocks, and runs only its own tokens as the direct path does.

A hit is a run of consecutive blocks from the first (then at most one partial block); a receiver whose cache is one buffer for all
layers (every layer full attention) takes them with one copy per block into its own cache
(:meth:`BlockTier.fill`); others gather per layer. The budget is in bytes, least-recently-used
blocks go first.

NOTE: a block is a tensor; eviction only drops the tier's reference, so a block a running request
reads stays alive until that request lets go of it (and counts against nothing meanwhile).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..models.exact import WeightSummary

KV = tuple[torch.Tensor, torch.Tensor]  # [1, kv_heads, n, head_dim] each


@dataclass(slots=True)
class Block:
    kv: torch.Tensor  # [L, 2, kv_heads, block, head_dim]
    e: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [block, hidden]

    @classmethod
    def of(cls, layers: list[KV], e: Mapping[int, torch.Tensor], s: slice) -> "Block":
        """The tokens ``s`` of every layer's K/V and of each E (``[1, n, hidden]``), as a block of their own."""
        return cls(torch.stack([torch.stack((k[0, :, s], v[0, :, s])) for k, v in layers]),
                   {layer: t[0, s].clone() for layer, t in e.items()})

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size() + sum(t.numel() * t.element_size() for t in self.e.values())


class BlockTier:
    """Blocks of K/V and E as tensors, under a byte budget (see the module docstring)."""

    name = "memory"

    def __init__(self, budget_bytes: int | None = 1 << 30, block: int = 16):
        self.budget, self.block = budget_bytes, block
        self._blocks: OrderedDict[tuple[str, str, str], Block] = OrderedDict()  # LRU order, oldest first
        self._producers: dict[str, dict[str, WeightSummary]] = {}  # family -> identity -> summary
        self._bytes = 0
        self.evictions = 0
        self.errors = 0
        self.refused = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ writing
    def put(self, family: str, producer: WeightSummary, chains: list[str], num_layers: int,
            kv: Callable[[int], KV], e: Mapping[int, torch.Tensor], start: int = 0) -> int:
        """Store the blocks of a context whose chained hashes are ``chains``: ``kv(layer)`` gives the K/V of
        its tokens from ``start`` on (to at least ``len(chains) * block``), ``e`` the E it has (``[1, n -
        start, hidden]`` each). Blocks already held are kept (their E completed); the blocks before
        ``start`` must be held. Returns how many blocks are held from the first, afterwards."""
        b = self.block
        layers = [kv(layer) for layer in range(num_layers)]
        with self._lock:
            self._producers.setdefault(family, {})[producer.identity] = producer
            for i, chain in enumerate(chains):
                key = (family, producer.identity, chain)
                held = self._blocks.get(key)
                if i * b < start:
                    if held is None:
                        return i  # the given tensors do not reach back to here
                    self._blocks.move_to_end(key)
                    continue
                s = slice(i * b - start, (i + 1) * b - start)
                if held is not None:
                    self._blocks.move_to_end(key)
                    for layer, t in e.items():
                        if layer not in held.e:
                            held.e[layer] = t[0, s].clone()
                            self._bytes += held.e[layer].numel() * held.e[layer].element_size()
                    continue
                if not self._admit(key, Block.of(layers, e, s)):
                    return i
            self._evict()
        return len(chains)

    def put_tail(self, family: str, producer: WeightSummary, chain: str, key: str, num_layers: int,
                 kv: Callable[[int], KV], e: Mapping[int, torch.Tensor]) -> bool:
        """Store a context's partial last block under ``key`` (:func:`~.keys.tail_hash`): ``kv(layer)`` its K/V
        (``[1, kv_heads, r, head_dim]``), ``e`` its E (``[1, r, hidden]``). Kept only after the full block
        ``chain`` it follows, which must be held. Whether it is held afterwards."""
        layers = [kv(layer) for layer in range(num_layers)]
        with self._lock:
            if (family, producer.identity, chain) not in self._blocks:
                return False
            full = (family, producer.identity, key)
            if full in self._blocks:
                self._blocks.move_to_end(full)
                return True
            if not self._admit(full, Block.of(layers, e, slice(None))):
                return False
            self._evict()
        return full in self._blocks

    def _admit(self, key: tuple[str, str, str], block: Block) -> bool:
        """Hold a new block (the caller holds the lock and evicts after); False when it alone is over the budget."""
        if self.budget is not None and block.nbytes > self.budget:
            return False
        self._blocks[key] = block
        self._bytes += block.nbytes
        return True

    def _evict(self) -> None:
        while self.budget is not None and self._bytes > self.budget and self._blocks:
            _, gone = self._blocks.popitem(last=False)
            self._bytes -= gone.nbytes
            self.evictions += 1

    # ------------------------------------------------------------------ reading
    def producers(self, family: str) -> dict[str, WeightSummary]:
        return dict(self._producers.get(family, {}))

    def held(self, family: str, producer: str, chains: list[str],
             tails: Callable[[int], list[str]] | None = None) -> list[Block]:
        """The consecutive blocks held from the first for these chains (the longest stored prefix), each
        marked as just used; then, after ``k`` of them, the first partial block held among ``tails(k)`` (its
        keys, longest first), if it holds every E the whole blocks do."""
        out = []
        with self._lock:
            for chain in chains:
                block = self._blocks.get((family, producer, chain))
                if block is None:
                    break
                self._blocks.move_to_end((family, producer, chain))
                out.append(block)
            if out and tails is not None:
                for key in tails(len(out)):
                    tail = self._blocks.get((family, producer, key))
                    if tail is not None and set(out[-1].e) <= set(tail.e):
                        self._blocks.move_to_end((family, producer, key))
                        out.append(tail)
                        break
        return out

    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> dict:
        return {"name": self.name, "bytes": self._bytes, "budget": self.budget, "errors": self.errors,
                "evictions": self.evictions, "blocks": len(self._blocks)}


class BlockSource:
    """Held blocks as a :class:`~droidspeak.core.assemble.LayerSource` over their first ``tokens`` tokens."""

    def __init__(self, blocks: list[Block], tokens: int, dtype: torch.dtype):
        self.blocks, self.tokens, self.dtype = blocks, tokens, dtype

    def e(self, layer: int) -> torch.Tensor | None:
        parts = [b.e.get(layer) for b in self.blocks]
        if any(p is None for p in parts):
            return None
        return torch.cat(parts)[None, :self.tokens].to(self.dtype)  # [1, n, hidden]

    def kv(self, layer: int) -> KV | None:
        kv = torch.cat([b.kv[layer] for b in self.blocks], dim=2)[:, :, :self.tokens].to(self.dtype)  # [2, H, n, D]
        return kv[0:1], kv[1:2]

    def fill(self, buffer: torch.Tensor) -> None:
        """Copy the blocks into a cache's one buffer ``[L, 2, 1, kv_heads, max_tokens, head_dim]`` (one copy each;
        the last may be a partial block)."""
        lo = 0
        for block in self.blocks:
            hi = min(lo + block.kv.shape[3], self.tokens)
            if hi <= lo:
                break
            buffer[:, :, 0, :, lo:hi].copy_(block.kv[:, :, :, :hi - lo])
            lo = hi
