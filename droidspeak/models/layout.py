"""How a server keeps its models' weights for decoding: the order they are stored in, and which
kernel a decode step's few-row products run on.

A decode step reads every weight once for a handful of rows. MKL's matrix-vector product runs on one
thread whatever ``torch.set_num_threads`` says (measured here: 10-19 GB/s of the ~35-50 GB/s this
machine reads with both cores), so a step left half the machine idle; and for a batch of a few rows
(several requests of a decode group) its matrix product took ~2x one row's time though it reads the
same weights. Three changes, all applied by :func:`relayout`, none changing a weight or a digest:

* every projection's weight is stored transposed, ``[in, out]`` contiguous and seen as the usual
  ``[out, in]`` (MKL streams that order fastest for a vector);
* a projection given few rows (a decode step's batch, up to :data:`SPLIT_MAX_ROWS`) splits its input
  dimension in one part per thread and runs the parts as one batched product, which PyTorch spreads
  over the threads, then adds the parts (:class:`SplitLinear`);
* with ``packed``, 2 to :data:`SPLIT_MAX_ROWS` rows (a decode group's batch) run oneDNN's matrix
  product on a copy of the weight packed once for it: 4-16 rows take ~0.65x the split product's time
  here; one row keeps the split. The packed copy costs the projections'
  bytes a second time, and a served batch of four models gained 1.05x from it in
  bench/fleet_engine.py's side-by-side run, so a server keeps it only with
  ``DROIDSPEAK_PACKED_WEIGHTS=true``; it is packed again when the weight changes, and never used while
  gradients are recorded.

Larger inputs (a prefill's chunks) keep the one matrix product, which already uses every thread.
The few-row products are measured over SmolLM2's 211 projections (538 MB) by bench/decode_kernels.py;
``bench/fleet_engine.py`` measures what they give a served batch.

NOTE: these change the order of float additions, so logits move by rounding (~1e-5 at fp32); every
model a node serves gets the same kernels, and models that share a cache run the same ones.
"""

from __future__ import annotations

from typing import Any

import torch

SPLIT_MAX_ROWS = 16  # measured: 1.2-2.2x faster for 1-16 rows, no gain from ~32 rows on


def can_pack() -> bool:
    """Whether this PyTorch build has oneDNN's packed linear (CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class _Packed:
    """A weight packed for oneDNN, with the weight and version it was packed from (an opaque tensor
    that cannot be deep-copied: a copied module packs its own weight again when it first needs it)."""

    def __init__(self, w: torch.Tensor):
        with torch.no_grad():
            self.tensor = torch.ops.mkldnn._reorder_linear_weight(w.detach())
        self.weight, self.version = w, w._version

    def fresh(self, w: torch.Tensor) -> bool:
        return self.weight is w and self.version == w._version

    def __deepcopy__(self, memo: dict) -> None:
        return None


class SplitLinear(torch.nn.Linear):
    """An ``nn.Linear`` (same parameters, same state dict) whose few-row products use every thread."""

    parts: int = 1
    pack: bool = False  # keep a oneDNN-packed copy of the weight for 2..SPLIT_MAX_ROWS rows

    def packed(self) -> torch.Tensor | None:
        """The weight packed for oneDNN (packed again if the weight changed since), or None."""
        if not self.pack:
            return None
        p = self.__dict__.get("_packed")
        if p is None or not p.fresh(self.weight):
            p = self.__dict__["_packed"] = _Packed(self.weight)
        return p.tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        d_in, d_out = w.shape[1], w.shape[0]
        rows = x.numel() // d_in if d_in else 0
        if rows == 0 or rows > SPLIT_MAX_ROWS or x.dtype != w.dtype:
            return torch.nn.functional.linear(x, w, self.bias)
        if rows > 1 and self.pack and not torch.is_grad_enabled():
            return torch.ops.mkldnn._linear_pointwise(x, self.packed(), self.bias, "none", [], "")
        p = self.parts
        if p < 2 or w.stride() != (1, d_out):
            return torch.nn.functional.linear(x, w, self.bias)
        xs = x.reshape(rows, p, d_in // p).transpose(0, 1)  # [p, rows, in/p]
        y = torch.bmm(xs, w.t().view(p, d_in // p, d_out)).sum(0)  # [rows, out]
        if self.bias is not None:
            y += self.bias
        return y.view(*x.shape[:-1], d_out)


def relayout(model: Any, threads: int | None = None, packed: bool = False) -> None:
    """Store every projection's weight transposed, let few rows' products split over ``threads``
    (default: PyTorch's intra-op threads) and, with ``packed``, keep each weight packed for oneDNN too
    for a few rows' products; a tied embedding shares the new storage, as it shared the old. Safe to
    call twice. On the CPU only (a GPU's products use the device); packed only for float32 weights."""
    modules = list(model.modules())
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    parts = (threads or torch.get_num_threads()) if on_cpu else 1
    pack = packed and on_cpu and can_pack()
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
                m.pack = pack and m.weight.dtype == torch.float32
                if not m.pack:
                    m.__dict__.pop("_packed", None)
                m.packed()  # packed now, not on the first batched step
    for m in modules:  # an embedding tied to a projection keeps sharing its storage
        if isinstance(m, torch.nn.Embedding) and m.weight.data_ptr() in fresh:
            m.weight = fresh[m.weight.data_ptr()]
