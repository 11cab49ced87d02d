"""The models a node serves, by name, and the decode groups they form.

Every base is loaded once; every LoRA or activated LoRA of it is an adapter on that one copy,
applied unmerged (PEFT), so N adapters cost N x ~10 MB, not N models. A base and its adapters form
one *decode group*: their running requests decode in one forward, each row with its own adapter
(:mod:`droidspeak.models.routing`). Full fine-tunes (other weights of the same family) are their
own models and groups. All model code runs on the engine loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DroidspeakError, UnknownModelError
from ..kinds import ModelKind
from ..models.exact import WeightSummary
from ..models.layout import relayout
from ..models.loaded import LoadedModel
from ..models.loading import attach_adapters, load_model
from ..models.registry import registry, resolve


@dataclass
class Hosted:
    name: str
    kind: ModelKind
    parent: str | None
    loaded: LoadedModel
    peft: Any = None  # the shared PeftModel of its base and the base's adapters
    adapter: str | None = None  # its PEFT adapter name (None: adapters disabled, i.e. the base itself)
    group: str | None = None  # its decode group (its base's name on a shared PeftModel; None: its own)


class ModelHost:
    """The models a node serves."""

    @classmethod
    def of(cls, hosted: list[Hosted]) -> "ModelHost":
        """A host over models already loaded (tests, embedding)."""
        h = cls.__new__(cls)
        h.models = {x.name: x for x in hosted}
        h._surfaces = {}
        return h

    def __init__(self, names: list[str] | None = None, packed: bool = False):
        """Load ``names`` (default: every registered model); ``packed``: keep the decode layout's oneDNN-packed
        weights too (:func:`droidspeak.models.layout.relayout`)."""
        wanted = [resolve(n) for n in (names or list(registry()))]
        self.models: dict[str, Hosted] = {}
        self._surfaces: dict[str, Any] = {}
        adapters = [s for s in wanted if s.is_adapter]
        bases = {s.parent for s in adapters} | {s.name for s in wanted if s.kind == ModelKind.BASE}
        for base_name in sorted(b for b in bases if b is not None):
            base = load_model(base_name)
            relayout(base.model, packed=packed)  # decode-friendly weight storage (before PEFT wraps the projections)
            peft, loaded = attach_adapters(base, [s for s in adapters if s.parent == base_name])
            group = base_name if peft is not None else None
            for adapter_name, m in loaded:
                self.models[m.name] = Hosted(m.name, m.kind, m.spec.parent, m, peft, adapter_name, group)
            if any(s.name == base_name for s in wanted):
                self.models[base_name] = Hosted(base_name, ModelKind.BASE, None,
                                                base.running(peft) if peft is not None else base, peft, None, group)
        for s in wanted:
            if not s.is_adapter and s.kind != ModelKind.BASE:
                full = load_model(s.name)
                relayout(full.model, packed=packed)
                self.models[s.name] = Hosted(s.name, s.kind, s.parent, full)
        self.models = {s.name: self.models[s.name] for s in wanted}  # in the order asked
        if not self.models:
            raise DroidspeakError("no models to serve")

    def get(self, name: str) -> Hosted:
        h = self.models.get(name)
        if h is None:
            raise UnknownModelError(f"model '{name}' is not served here; served: {', '.join(self.models)}")
        return h

    def group_of(self, name: str) -> str:
        """The decode group ``name``'s requests run in."""
        h = self.get(name)
        return h.group or h.name

    def group_surface(self, group: str) -> Any:
        """The surface a decode group's batched step runs on: the shared module, any adapter per row."""
        surface = self._surfaces.get(group)
        if surface is None:
            member = next(h for h in self.models.values() if (h.group or h.name) == group)
            if member.peft is not None:
                from ..models.surface import ModelSurface

                surface = ModelSurface(member.peft)
            else:
                surface = member.loaded.surface
            self._surfaces[group] = surface
        return surface

    def weights(self) -> list[WeightSummary]:
        """Weight summaries of every hosted model (whose plans a miss's capture serves, see
        :mod:`droidspeak.sharing.peers`)."""
        return [h.loaded.weights for h in self.models.values()]

    def name_of(self, identity: str | None) -> str | None:
        """The hosted model with these weights, else a short hash (weights this node does not host)."""
        if not identity:
            return None
        for n, h in self.models.items():
            if h.loaded.identity == identity:
                return n
        return f"identity:{identity[:12]}"
