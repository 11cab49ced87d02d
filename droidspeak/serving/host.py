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
from ..exact import WeightSummary
from ..kinds import ModelKind
from ..models import LoadedModel, adapter_summary, check_adapter_base, load_model, registry, resolve


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
        specs = registry()
        wanted = [resolve(n) for n in (names or list(specs))]
        self.models: dict[str, Hosted] = {}
        adapters = [s for s in wanted if s.kind in (ModelKind.LORA, ModelKind.ALORA)]
        bases = {s.parent for s in adapters} | {s.name for s in wanted if s.kind == ModelKind.BASE}
        shared: dict[str, tuple[LoadedModel, Any]] = {}
        for base_name in sorted(b for b in bases if b is not None):
            base = load_model(base_name)
            mine = [s for s in adapters if s.parent == base_name]
            peft = None
            if mine:
                from peft import PeftModel

                for s in mine:
                    check_adapter_base(s, base)
                peft = PeftModel.from_pretrained(base.model, str(mine[0].path), adapter_name=mine[0].name,
                                                 is_trainable=False)
                for s in mine[1:]:
                    peft.load_adapter(str(s.path), adapter_name=s.name, is_trainable=False)
                peft.eval()
            shared[base_name] = (base, peft)
        for s in wanted:
            if s.kind == ModelKind.BASE:
                base, peft = shared[s.name]
                model = peft if peft is not None else base.model
                self.models[s.name] = Hosted(s.name, s.kind, None, LoadedModel(
                    s, model, base.tokenizer, base.identity, base.family, base.weights), peft, None)
            elif s.kind in (ModelKind.LORA, ModelKind.ALORA):
                base, peft = shared[s.parent]  # type: ignore[index]
                summary = adapter_summary(s.path, base.weights)  # type: ignore[arg-type]
                loaded = LoadedModel(s, peft, base.tokenizer, summary.identity, base.family, summary,
                                     {"base_identity": base.identity},
                                     base.weights if s.kind == ModelKind.ALORA else summary)
                self.models[s.name] = Hosted(s.name, s.kind, s.parent, loaded, peft, s.name)
            else:
                self.models[s.name] = Hosted(s.name, s.kind, s.parent, load_model(s.name))
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

    def peers(self) -> list[WeightSummary]:
        """Weight summaries of every hosted model (whose exact plans a capture must serve)."""
        return [h.loaded.weights for h in self.models.values()]

    def name_of(self, identity: str | None) -> str | None:
        """The hosted model with these weights, else a short hash (weights this node does not host)."""
        if not identity:
            return None
        for n, h in self.models.items():
            if h.loaded.identity == identity:
                return n
        return f"identity:{identity[:12]}"
