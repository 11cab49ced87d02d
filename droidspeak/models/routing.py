"""Which adapters a module's LoRA layers apply, per forward: one adapter for the whole batch, or one per row.

A base and all of its adapters (LoRA, activated LoRA, top-layer LoRA) run on one PeftModel, and every
model surface on that module routes through the module's one :class:`Router`. Before every forward,
the surface that runs says, per batch row, which adapter applies (None: the base) and, for an
activated adapter, on how many of the forwarded tokens it acts (:meth:`Router.route`). The router
picks how the LoRA layers run for that one forward:

* **lean** (the usual case at inference: every row's adapter acts on all of its forwarded tokens, or
  none): each LoRA layer runs its base layer and adds one low-rank product for the whole batch: the
  A matrices of the adapters in the batch side by side, the rows' own columns kept by a mask (no mask
  when one adapter runs), the B matrices (scaled) side by side: ``x A_cat^T (* M) (B_cat s)^T``, three
  operations a layer whatever the number of adapters. PEFT's own forward is skipped: its per-call
  checks, casts and per-adapter loop, and for a batch of several adapters its gather and scatter per
  adapter (``adapter_names``), made an adapter's decode step 1.13-1.25x longer here (bench/fleet_engine.py). An activated adapter
  that acts on every forwarded token of its rows (a decode step after its invocation) is plain LoRA
  arithmetic on those tokens; one that acts on none of them is the base. The fused matrices are made
  once per set of adapters and kept;
* **PEFT's** forward otherwise: a row an activated adapter acts on in part (a prompt that invokes it:
  PEFT's activated variant with its ``alora_offsets``), a forward that records gradients, a layer
  in training mode, merged, or an adapter this router does not do by hand (DoRA, a bias on B, an
  embedding LoRA, adapter weights in another dtype than the base's: :meth:`Router._kind`). One adapter for
  every row is set by two attributes per layer (PEFT's ``set_adapter`` and ``disable_adapter`` walk
  and print every module: tens of milliseconds a call); several go by PEFT's ``adapter_names``.

Each LoRA layer's ``forward`` is its router's (an instance attribute): the lean path while a lean
forward of the router runs, and PEFT's own forward (with the keyword arguments of the route) at any
other time, so training and plain PEFT calls on the module run as PEFT wrote them.

NOTE: the state is the router's and lasts one forward (:meth:`Router.route` is a context manager that
puts the layers back as they were); forwards on one module never interleave (one engine thread, or
one CLI command). tests/test_engine.py checks a mixed batch against PEFT's own generate, and
tests/test_routing.py the lean path against PEFT's forward.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
_PEFT_KWARGS = ("adapter_names", "alora_offsets")
_FUSIONS_KEPT = 8  # sets of adapters whose fused matrices are kept (a decode group's rows change as requests come)
_PLANS_KEPT = 32  # row orders whose per-layer plans (masks) are kept: a decode group's rows last many steps


def _routed_forward(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return layer.__dict__["_droidspeak_router"]._forward(layer, x, *args, **kwargs)


class Router:
    def __init__(self, layers: list[Any]):
        self.lean = True  # False: every forward runs PEFT's own (a benchmark's side-by-side comparison)
        self.kwargs: dict[str, Any] = {}  # keyword arguments PEFT's forward gets while a PEFT route is open
        self._lean: dict[Any, tuple] | None = None  # while a lean forward runs: layer -> (A^T, B^T, mask)
        self.adopt(layers)

    @classmethod
    def of(cls, lm: Any) -> "Router":
        """The router of a (PEFT-unwrapped) causal LM: one per module, shared by every surface on it, over
        the LoRA layers the module holds now (adapters loaded since the last call join it)."""
        try:
            from peft.tuners.lora import LoraLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            return cls([])
        layers = [m for m in lm.modules() if isinstance(m, LoraLayer)]
        # a layer routed already belongs to its router (the surfaces of one module, however they name it)
        router = next((m.__dict__["_droidspeak_router"] for m in layers if "_droidspeak_router" in m.__dict__), None)
        if router is None:
            return cls(layers)
        router.adopt(layers)
        return router

    def adopt(self, layers: list[Any]) -> None:
        """Route these LoRA layers (again): forget what was derived from the adapters they held."""
        self.layers: list[Any] = list(layers)
        self._fusions: dict[tuple[str, ...], dict[Any, tuple]] = {}  # adapters -> per layer (A^T, B^T, owners)
        self._plans: dict[tuple[str | None, ...], dict[Any, tuple]] = {}  # row order -> per layer (A^T, B^T, mask)
        self._kinds: dict[str, str] = {}  # adapter -> the PEFT variant's class name ('' for plain LoRA), or why not lean
        self._activated: set[str] | None = None
        for m in self.layers:  # their forward becomes this router's (plain attributes: neither state nor modules;
            m.__dict__["_droidspeak_router"] = self  # a deep copy of the module copies its router with it)
            m.__dict__["forward"] = types.MethodType(_routed_forward, m)

    @property
    def activated(self) -> set[str]:
        """The activated adapters (PEFT's aLoRA variant) on these layers."""
        if self._activated is None:
            self._activated = {n for m in self.layers for n in m.lora_A if self._kind(n) == "ALoraLinearVariant"}
        return self._activated

    def _kind(self, name: str) -> str:
        """What an adapter is on these layers: '' (plain LoRA on linear layers), PEFT's variant class name
        (an activated adapter's ``ALoraLinearVariant``), or why the lean path cannot run it."""
        k = self._kinds.get(name)
        if k is None:
            kinds = set()
            for m in self.layers:
                if name in getattr(m, "lora_embedding_A", {}):
                    kinds.add("embedding")
                elif name in m.lora_A:
                    if type(m).__name__ != "Linear" or m.lora_B[name].bias is not None:
                        kinds.add("not a plain linear LoRA")
                    elif m.lora_A[name].weight.dtype != m.get_base_layer().weight.dtype:
                        kinds.add("dtype")
                    else:
                        v = getattr(m, "lora_variant", {}).get(name)
                        kinds.add(type(v).__name__ if v is not None else "")
            k = self._kinds[name] = kinds.pop() if len(kinds) == 1 else "mixed"
        return k

    # ------------------------------------------------------------------ the layers' forward
    def _forward(self, m: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        lean = self._lean
        if lean is None:
            if self.kwargs:
                kwargs.update(self.kwargs)
            return type(m).forward(m, x, *args, **kwargs)
        if kwargs:  # PEFT's own per-call arguments (a PeftModel's hooks pass them): the route decided already
            kwargs = {k: v for k, v in kwargs.items() if k not in _PEFT_KWARGS}
        out = m.base_layer(x, *args, **kwargs)
        f = lean.get(m)
        if f is not None:
            a_t, b_t, mask = f
            h = x.reshape(-1, x.shape[-1]) @ a_t  # [B*T, R]
            if mask is not None:  # each row its own adapter's columns
                h.mul_(mask if x.shape[1] == 1 else mask.repeat_interleave(x.shape[1], 0))
            out.view(-1, out.shape[-1]).addmm_(h, b_t)  # in place on the base layer's fresh output
        return out

    def _fusion(self, names: tuple[str, ...]) -> dict[Any, tuple]:
        """Per layer: the adapters' A side by side, transposed ``[in, R]``, their scaled B side by side,
        transposed ``[R, out]``, and which adapter owns each of the R columns."""
        got = self._fusions.get(names)
        if got is None:
            got = {}
            for m in self.layers:
                here = [n for n in names if n in m.lora_A]
                if not here:
                    continue
                a_cat = torch.cat([m.lora_A[n].weight.detach() for n in here])
                b_cat = torch.cat([m.lora_B[n].weight.detach() * m.scaling[n] for n in here], dim=1)
                owners = torch.cat([torch.full((m.lora_A[n].weight.shape[0],), names.index(n)) for n in here])
                got[m] = (a_cat.t().contiguous(), b_cat.t().contiguous(), owners)
            if len(self._fusions) >= _FUSIONS_KEPT:  # the oldest set goes, and the plans made of it
                gone = next(iter(self._fusions))
                del self._fusions[gone]
                self._plans = {r: p for r, p in self._plans.items() if tuple(sorted(set(r) - {None})) != gone}
            self._fusions[names] = got
        return got

    def _leanable(self, names: set[str]) -> bool:
        """Whether the lean path computes what PEFT's forward would, for rows of these adapters."""
        if not self.lean or torch.is_grad_enabled():
            return False
        if any(self._kind(n) not in ("", "ALoraLinearVariant") for n in names):
            return False  # DoRA and other variants, biases, embeddings, other dtypes: PEFT's own arithmetic
        m = self.layers[0]
        return not (m.training or getattr(m, "merged", False))

    # ------------------------------------------------------------------ routes
    @contextlib.contextmanager
    def route(self, adapters: list[str | None], offsets: list[int] | None, tokens: int) -> Iterator[None]:
        """While open, batch row ``i`` runs as ``adapters[i]`` (None: the base); ``offsets[i]``: on how many
        of the ``tokens`` forwarded tokens of row ``i`` an activated adapter acts."""
        if not self.layers:
            yield
            return
        activated = self.activated
        rows = list(adapters)
        partial = False  # some activated row acts on only part of its tokens: PEFT's variant, with offsets
        if offsets is not None:
            for i, a in enumerate(rows):
                if a in activated:
                    if offsets[i] <= 0:
                        rows[i] = None  # acts on none of them: the base
                    elif offsets[i] < tokens:
                        partial = True
        names = {a for a in rows if a is not None}
        if not partial and self._leanable(names):
            with self._lean_route(rows):
                yield
            return
        with self._peft_route(rows, offsets if partial else None, set() if partial else names & activated):
            yield

    def _lean_plan(self, rows: tuple[str | None, ...]) -> dict[Any, tuple]:
        """Per layer, what the lean path adds for these rows: (A^T, B^T, the rows' column mask or None)."""
        plan = self._plans.get(rows)
        if plan is None:
            names = tuple(sorted({a for a in rows if a is not None}))
            fusion = self._fusion(names) if names else {}
            if len(names) == 1 and None not in rows:  # one adapter for every row: no mask
                plan = {key: (a_t, b_t, None) for key, (a_t, b_t, _) in fusion.items()}
            else:
                row_of = torch.tensor([names.index(a) if a is not None else -1 for a in rows])
                plan = {key: (a_t, b_t, (owners[None, :] == row_of[:, None]).to(a_t.dtype))  # mask [B, R]
                        for key, (a_t, b_t, owners) in fusion.items()}
            if len(self._plans) >= _PLANS_KEPT:  # the oldest goes
                self._plans.pop(next(iter(self._plans)))
            self._plans[rows] = plan
        return plan

    @contextlib.contextmanager
    def _lean_route(self, rows: list[str | None]) -> Iterator[None]:
        self._lean = self._lean_plan(tuple(rows))
        try:
            yield
        finally:
            self._lean = None

    @contextlib.contextmanager
    def _peft_route(self, rows: list[str | None], offsets: list[int] | None, plain: set[str]) -> Iterator[None]:
        """PEFT's forward: ``offsets`` for its activated variant (None: none acts in part); ``plain``: activated
        adapters acting on all their tokens, run as plain LoRA (their variant set aside for the forward)."""
        one = len(set(rows)) == 1
        kw: dict[str, Any] = {"alora_offsets": list(offsets)} if offsets is not None else {}
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
        self.kwargs = kw
        try:
            yield
        finally:
            self.kwargs = {}
            for m, a, v in variants:
                m.lora_variant[a] = v
            for m, (disabled, active) in zip(self.layers, saved):
                m._disable_adapters, m._active_adapter = disabled, active
