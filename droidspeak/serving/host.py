"""The models a node serves, by name.

Every base is loaded once; every LoRA or activated LoRA of it is an adapter on that one copy,
applied unmerged (PEFT), so N adapters cost N x ~10 MB, not N models. Full fine-tunes (other
weights of the same family) are their own models. All model code runs on the engine thread,
inside :meth:`ModelHost.active`, which selects the right adapter.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import DroidspeakError, UnknownModelError
from ..kinds import ModelKind
from ..models.exact import WeightSummary
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


class ModelHost:
    """The models a node serves."""

    @classmethod
    def of(cls, hosted: list[Hosted]) -> "ModelHost":
        """A host over models already loaded (tests, embedding)."""
        h = cls.__new__(cls)
        h.models = {x.name: x for x in hosted}
        return h

    def __init__(self, names: list[str] | None = None):
        wanted = [resolve(n) for n in (names or list(registry()))]
        self.models: dict[str, Hosted] = {}
        adapters = [s for s in wanted if s.is_adapter]
        bases = {s.parent for s in adapters} | {s.name for s in wanted if s.kind == ModelKind.BASE}
        for base_name in sorted(b for b in bases if b is not None):
            base = load_model(base_name)
            peft, loaded = attach_adapters(base, [s for s in adapters if s.parent == base_name])
            for adapter_name, m in loaded:
                self.models[m.name] = Hosted(m.name, m.kind, m.spec.parent, m, peft, adapter_name)
            if any(s.name == base_name for s in wanted):
                self.models[base_name] = Hosted(base_name, ModelKind.BASE, None,
                                                base.running(peft) if peft is not None else base, peft, None)
        for s in wanted:
            if not s.is_adapter and s.kind != ModelKind.BASE:
                self.models[s.name] = Hosted(s.name, s.kind, s.parent, load_model(s.name))
        self.models = {s.name: self.models[s.name] for s in wanted}  # in the order asked
        if not self.models:
            raise DroidspeakError("no models to serve")

    def get(self, name: str) -> Hosted:
        h = self.models.get(name)
        if h is None:
            raise UnknownModelError(f"model '{name}' is not served here; served: {', '.join(self.models)}")
        return h

    @contextmanager
    def active(self, name: str):
        """Run model code as ``name`` (selects its adapter on the shared base)."""
        h = self.get(name)
        if h.peft is None:
            yield h.loaded
        elif h.adapter is None:
            with h.peft.disable_adapter():
                yield h.loaded
        else:
            h.peft.set_adapter(h.adapter)
            yield h.loaded

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
