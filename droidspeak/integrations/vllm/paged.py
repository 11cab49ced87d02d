"""K/V in and out of a paged cache: the layouts vLLM's attention backends keep, read by shape.

A paged cache is one tensor per layer holding fixed-size blocks of token slots; slot ``s`` is token
``s % block_size`` of block ``s // block_size``. Backends order the dimensions differently: the CPU
backend (its ``vec`` kernels: x86 without AMX, fp32) keeps ``[blocks, kv_heads, block_size, 2 *
head_dim]`` whose every (block, head) holds K transposed, ``[head_dim, block_size]``, then V,
``[block_size, head_dim]`` (found by comparing with transformers' own K/V, position by position); the
GPU backends a leading or second K/V axis of 2 with ``(block_size, kv_heads)`` or ``(kv_heads,
block_size)`` inside (not run here: no GPU).
:func:`layout_of` names the one a tensor has, or None when its shape fits none (or several): then
the connector moves nothing for that engine and says so in one line.

Pure PyTorch, no vLLM import: tested on tensors made to each layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KV = tuple[torch.Tensor, torch.Tensor]  # [1, kv_heads, n, head_dim] each

# 5-D layouts, as the order of (kv, block, slot-in-block, head, dim) in the tensor
_FIVE = {
    "kv,block,slot,head,dim": ("kv", "block", "slot", "head", "dim"),
    "kv,block,head,slot,dim": ("kv", "block", "head", "slot", "dim"),
    "block,kv,slot,head,dim": ("block", "kv", "slot", "head", "dim"),
    "block,kv,head,slot,dim": ("block", "kv", "head", "slot", "dim"),
}


@dataclass(frozen=True, slots=True)
class PagedLayout:
    """Where a layer's K and V of a token slot are in a paged cache tensor."""

    name: str
    block_size: int

    def _canonical(self, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V as views ``[blocks, block_size, kv_heads, head_dim]`` of ``cache`` (no copy)."""
        bs = self.block_size
        if self.name == "cpu":  # per (block, head): K as [head_dim, block_size], then V as [block_size, head_dim]
            nb, h, _, two_d = cache.shape
            d, (s0, s1), off = two_d // 2, cache.stride()[:2], cache.storage_offset()
            k = cache.as_strided((nb, h, d, bs), (s0, s1, bs, 1), off).permute(0, 3, 1, 2)
            v = cache.as_strided((nb, h, bs, d), (s0, s1, d, 1), off + bs * d).permute(0, 2, 1, 3)
            return k, v
        dims = _FIVE[self.name]
        order = [dims.index(d) for d in ("kv", "block", "slot", "head", "dim")]
        t = cache.permute(*order)
        return t[0], t[1]

    def gather(self, cache: torch.Tensor, slots: torch.Tensor) -> KV:
        """The K and V of ``slots`` (token order), as new tensors ``[1, kv_heads, n, head_dim]``."""
        k, v = self._canonical(cache)
        b, o = slots // self.block_size, slots % self.block_size
        return k[b, o].transpose(0, 1)[None].contiguous(), v[b, o].transpose(0, 1)[None].contiguous()

    def scatter(self, cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write K and V (``[1, kv_heads, n, head_dim]``) into ``slots`` of ``cache``, in place."""
        ck, cv = self._canonical(cache)
        b, o = slots // self.block_size, slots % self.block_size
        ck[b, o] = k[0].transpose(0, 1).to(ck.dtype)
        cv[b, o] = v[0].transpose(0, 1).to(cv.dtype)


def layout_of(cache: torch.Tensor, block_size: int, kv_heads: int, head_dim: int) -> PagedLayout | None:
    """The layout of a layer's paged cache from its shape, or None when it fits none or more than one."""
    shape = tuple(cache.shape)
    if len(shape) == 4:
        fits = (shape[1] == kv_heads and shape[2] == block_size and shape[3] == 2 * head_dim
                and cache.stride()[2:] == (2 * head_dim, 1))
        return PagedLayout("cpu", block_size) if fits else None
    if len(shape) != 5:
        return None
    sizes = {"kv": 2, "slot": block_size, "head": kv_heads, "dim": head_dim}
    found = [name for name, dims in _FIVE.items()
             if all(sizes.get(d, n) == n for d, n in zip(dims, shape, strict=True))]
    return PagedLayout(found[0], block_size) if len(found) == 1 else None


def slots_of(block_ids: list[int], block_size: int, start: int, end: int) -> list[int]:
    """The slots of token positions ``[start, end)`` of a request whose blocks are ``block_ids``."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, end)]
