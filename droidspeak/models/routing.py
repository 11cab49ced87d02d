"""Which adapters a module's LoRA layers apply, per forward: one adapter for the whole batch, or one per row.

A base and all of its adapters (LoRA, activated LoRA, top-layer LoRA) run on one PeftModel. Before
every forward, the model surface of whoever runs says, per batch row, which adapter applies (None:
the base) and, for an activated adapter, on how many of the forwarded tokens it acts
(:meth:`Router.route`). The router sets the layers for that one forward:

* one adapter for every row: two attributes per layer (PEFT's ``set_adapter`` and
  ``disable_adapter`` walk and print every module: tens of milliseconds a call, once per decode step
  of a base that hosts adapters);
* one adapter per row: the running requests of a base and all its variants decode in one forward.
  Each layer then adds one gathered low-rank product for the whole batch: the A matrices of the
  adapters in the batch side by side, the rows' own columns kept by a mask, the B matrices (scaled)
  side by side: ``(x A_cat^T * M) (B_cat s)^T``, three operations a layer whatever the number of adapters
  (PEFT's mixed batches, ``adapter_names``, loop over the adapters with a gather and a scatter
  each: a third of a decode step for a base and three variants here). The fused matrices are made
  once per set of adapters and kept;
* an activated adapter that acts on every forwarded token of its rows (a decode step after its
  invocation) is plain LoRA arithmetic on those tokens (``result + B(A(x)) * scaling``, the same
  operations), so for that forward it runs as one, without PEFT's per-call masks; one that acts on
  none of them is the base; only a row it acts on in part (a prompt that invokes it) needs PEFT's
  activated variant and its ``alora_offsets``.

Keyword arguments reach the layers through one pre-hook per layer, and the gathered product through
one forward hook per layer, both installed once and acting only while a forward of this router runs.

NOTE: the state is the module's and lasts one forward (:meth:`Router.route` is a context manager
that puts the layers back as they were); forwards on one module never interleave (one engine
thread, or one CLI command). tests/test_engine.py checks a mixed batch against PEFT's own generate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class Router:
    def __init__(self, layers: list[Any]):
        self.layers = layers
        # the activated adapters (PEFT's aLoRA variant) on these layers
        self.activated = {name for m in layers for name, v in getattr(m, "lora_variant", {}).items()
                          if type(v).__name__ == "ALoraLinearVariant"}
        self.kwargs: dict[str, Any] = {}
        self._hooked = False
        self._fused: dict[int, tuple] | None = None  # while a mixed forward runs: layer id -> (A_cat, B_cat, mask)
        self._fusions: dict[tuple[str, ...], dict[int, tuple]] = {}  # adapters -> per layer (A_cat, B_cat, owners)

    @classmethod
    def of(cls, lm: Any) -> "Router":
        """A router over the LoRA layers a (PEFT-unwrapped) causal LM holds now."""
        try:
            from peft.tuners.lora import LoraLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            return cls([])
        return cls([m for m in lm.modules() if isinstance(m, LoraLayer)])

    def _inject(self, _module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.kwargs:
            kwargs.update(self.kwargs)
        return args, kwargs

    def _add_lora(self, module: Any, args: tuple, output: Any) -> Any:
        f = self._fused.get(id(module)) if self._fused is not None else None
        if f is None:
            return output
        a_cat, b_cat, mask = f
        x = args[0]  # [B, T, in]
        h = x.reshape(-1, x.shape[-1]) @ a_cat.T  # [B*T, R]
        h.mul_(mask if x.shape[1] == 1 else mask.repeat_interleave(x.shape[1], 0))  # each row its own columns
        output.view(-1, output.shape[-1]).addmm_(h, b_cat.T)  # [B*T, out], in place on the base layer's fresh output
        return output

    def _fusion(self, names: tuple[str, ...]) -> dict[int, tuple]:
        """Per layer: the adapters' A side by side ``[R, in]``, their scaled B side by side ``[out, R]``,
        and which adapter owns each of the R columns."""
        got = self._fusions.get(names)
        if got is None:
            import torch

            got = {}
            for m in self.layers:
                here = [n for n in names if n in m.lora_A]
                if not here:
                    continue
                a_cat = torch.cat([m.lora_A[n].weight for n in here])
                b_cat = torch.cat([m.lora_B[n].weight * m.scaling[n] for n in here], dim=1)
                owners = torch.cat([torch.full((m.lora_A[n].weight.shape[0],), names.index(n)) for n in here])
                got[id(m)] = (a_cat.detach(), b_cat.detach(), owners)
            if len(self._fusions) >= 4:  # a few sets of adapters at once; the oldest goes
                self._fusions.pop(next(iter(self._fusions)))
            self._fusions[names] = got
        return got

    @contextlib.contextmanager
    def route(self, adapters: list[str | None], offsets: list[int] | None, tokens: int) -> Iterator[None]:
        """While open, batch row ``i`` runs as ``adapters[i]`` (None: the base); ``offsets[i]``: on how many
        of the ``tokens`` forwarded tokens of row ``i`` an activated adapter acts."""
        if not self.layers:
            yield
            return
        rows = list(adapters)
        partial = False  # some activated row acts on only part of its tokens: PEFT's variant, with offsets
        if offsets is not None:
            for i, a in enumerate(rows):
                if a in self.activated:
                    if offsets[i] <= 0:
                        rows[i] = None  # acts on none of them: the base
                    elif offsets[i] < tokens:
                        partial = True
        one = len(set(rows)) == 1
        if not one and not partial:  # every row's adapter on all its tokens: one gathered product a layer
            with self._gathered(rows):
                yield
            return
        plain = set() if partial else {a for a in rows if a in self.activated}  # acts on all: plain LoRA
        kw: dict[str, Any] = {"alora_offsets": list(offsets)} if partial else {}
        if not one:
            kw["adapter_names"] = [a or BASE for a in rows]
        saved = [(m._disable_adapters, m._active_adapter) for m in self.layers]
        variants = []
        for m in self.layers:
            m._disable_adapters = one and rows[0] is None
            if one and rows[0] is not None:
                m._active_adapter = [rows[0]]
            for a in plain:
                v = m.lora_variant.pop(a, None)
                if v is not None:
                    variants.append((m, a, v))
        if kw and not self._hooked:
            for m in self.layers:
                m.register_forward_pre_hook(self._inject, with_kwargs=True)
            self._hooked = True
        self.kwargs = kw
        try:
            yield
        finally:
            self.kwargs = {}
            for m, a, v in variants:
                m.lora_variant[a] = v
            for m, (disabled, active) in zip(self.layers, saved):
                m._disable_adapters, m._active_adapter = disabled, active

    @contextlib.contextmanager
    def _gathered(self, rows: list[str | None]) -> Iterator[None]:
        import torch

        names = tuple(sorted({a for a in rows if a is not None}))
        fusion = self._fusion(names)
        row_of = torch.tensor([names.index(a) if a is not None else -1 for a in rows])
        # mask [B, 1, R]: row b keeps the columns of its own adapter (none for a base row)
        self._fused = {key: (a_cat, b_cat, (owners[None, :] == row_of[:, None]).to(a_cat.dtype))  # mask [B, R]
                       for key, (a_cat, b_cat, owners) in fusion.items()}
        saved = [m._disable_adapters for m in self.layers]
        for m in self.layers:
            m._disable_adapters = True  # PEFT runs the base layer; the hook adds every row's own product
        if not getattr(self, "_post_hooked", False):
            for m in self.layers:
                m.register_forward_hook(self._add_lora)
            self._post_hooked = True
        try:
            yield
        finally:
            self._fused = None
            for m, disabled in zip(self.layers, saved):
                m._disable_adapters = disabled
