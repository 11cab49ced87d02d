"""How a server keeps its models' weights for decoding: the order they are stored in, and how a
decode step's matrix-vector products use both cores.

A decode step reads every weight once for a handful of rows. MKL's matrix-vector product runs on one
thread whatever ``torch.set_num_threads`` says (measured here: 10-19 GB/s of the ~35-50 GB/s this
machine reads with both cores), so a step left half the machine idle. Two changes, both applied by
:func:`relayout`, and neither changes a weight nor a digest:

* every projection's weight is stored transposed, ``[in, out]`` contiguous and seen as the usual
  ``[out, in]`` (MKL streams that order fastest for a vector);
* a projection given few rows (a decode step's batch, up to :data:`SPLIT_MAX_ROWS`) splits its input
  dimension in one part per thread and runs the parts as one batched product, which PyTorch spreads
  over the threads, then adds the parts (:class:`SplitLinear`). Larger inputs (a prefill's chunks)
  keep the one matrix product, which already uses every thread.

NOTE: both change the order of float additions, so logits move by rounding (~1e-5 at fp32); every
model a node serves gets the same kernels, and models that share a cache run the same ones.
"""

from __future__ import annotations

from typing import Any

import torch

SPLIT_MAX_ROWS = 16  # measured: 1.2-2.2x faster for 1-16 rows, no gain from ~32 rows on


class SplitLinear(torch.nn.Linear):
    """An ``nn.Linear`` (same parameters, same state dict) whose few-row products use every thread."""

    parts: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        d_in, d_out = w.shape[1], w.shape[0]
        rows = x.numel() // d_in if d_in else 0
        p = self.parts
        if p < 2 or rows > SPLIT_MAX_ROWS or rows == 0 or x.dtype != w.dtype or w.stride() != (1, d_out):
            return torch.nn.functional.linear(x, w, self.bias)
        xs = x.reshape(rows, p, d_in // p).transpose(0, 1)  # [p, rows, in/p]
        y = torch.bmm(xs, w.t().view(p, d_in // p, d_out)).sum(0)  # [rows, out]
        if self.bias is not None:
            y += self.bias
        return y.view(*x.shape[:-1], d_out)


def relayout(model: Any, threads: int | None = None) -> None:
    """Store every projection's weight transposed and let few-row products split over ``threads``
    (default: PyTorch's intra-op threads); a tied embedding shares the new storage, as it shared the old.
    Safe to call twice. Products are split on the CPU only (a GPU's matrix-vector product uses the device)."""
    modules = list(model.modules())
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    parts = (threads or torch.get_num_threads()) if on_cpu else 1
    fresh: dict[int, Any] = {}
    for m in modules:
        if isinstance(m, torch.nn.Linear) and m.weight.dim() == 2:
            w = m.weight
            if w.stride(1) == 1:
                if w.data_ptr() not in fresh:
                    fresh[w.data_ptr()] = torch.nn.Parameter(w.detach().t().contiguous().t(),
                                                             requires_grad=w.requires_grad)
                m.weight = fresh[w.data_ptr()]
            if type(m) in (torch.nn.Linear, SplitLinear):
                m.__class__ = SplitLinear
                m.parts = parts if parts > 1 and m.in_features % parts == 0 else 1
    for m in modules:  # an embedding tied to a projection keeps sharing its storage
        if isinstance(m, torch.nn.Embedding) and m.weight.data_ptr() in fresh:
            m.weight = fresh[m.weight.data_ptr()]
