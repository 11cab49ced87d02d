"""A model ready to run: the module, its tokenizer, and what decides whom it shares caches with.

:class:`LoadedModel` is made in two ways only, so every caller (the CLI, the server's host, the
tests' tiny models) gets the same fields: :meth:`LoadedModel.of` for a model that is its own
weights (a base, a full fine-tune), :meth:`LoadedModel.adapter` for an adapter on a loaded base.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..kinds import ModelKind
from . import identity as ident
from .exact import WeightSummary
from .family import FamilyFingerprint
from .registry import ModelSpec


def summarize(model: Any, family: FamilyFingerprint) -> WeightSummary:
    """The weight summary of a plain (non-adapter) model from its state dict."""
    state = model.state_dict()
    embed, layers = ident.layer_digests(state, family.num_layers)
    return WeightSummary(ident.tensors_digest(state), embed, layers)


@dataclass(slots=True)
class LoadedModel:
    """A model ready to run (see the module docstring).

    NOTE: ``weights`` are the model's own (base + adapter); ``base`` is its base's, for an adapter.
    An activated adapter's shareable captures are its base's cache, so ``capture_weights`` is
    ``base`` for it and ``weights`` for every other model.
    """

    spec: ModelSpec
    model: Any  # a transformers *ForCausalLM (a LoRA merged in), or a PeftModel (unmerged, aLoRA, a host's adapters)
    tokenizer: Any  # None only for the tests' tiny models
    family: FamilyFingerprint
    weights: WeightSummary  # per-layer digests: what exactness is judged on
    base: WeightSummary | None = None  # an adapter's base's weights
    adapter_name: str | None = None  # the PEFT adapter it runs as on its module (None: a base, adapters off)
    _surface: Any = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ the two ways to make one
    @classmethod
    def of(cls, spec: ModelSpec, model: Any, tokenizer: Any, family: FamilyFingerprint,
           weights: WeightSummary | None = None) -> "LoadedModel":
        """A model that is its own weights (a base or a full fine-tune): identity from its state dict, or
        ``weights`` where the loader remembers the summary of these very files (see ``models.loading``)."""
        model.eval()
        return cls(spec, model, tokenizer, family, weights or summarize(model, family))

    @classmethod
    def adapter(cls, spec: ModelSpec, model: Any, base: "LoadedModel", weights: WeightSummary,
                adapter_name: str | None) -> "LoadedModel":
        """An adapter (``weights``: base + adapter, see :func:`~droidspeak.models.loading.summarize_adapter`)
        applied on ``base`` as ``model``: a PeftModel on which it is ``adapter_name``, or a module with the
        adapter merged in (``adapter_name`` None)."""
        model.eval()
        return cls(spec, model, base.tokenizer, base.family, weights, base.weights, adapter_name)

    def running(self, model: Any, adapter_name: str | None = None) -> "LoadedModel":
        """The same model, its module replaced (a host runs a base through its shared PeftModel; a merged
        LoRA runs as its merged module)."""
        return replace(self, model=model, adapter_name=adapter_name)

    # ------------------------------------------------------------------ derived
    @property
    def identity(self) -> str:
        """Content hash of the weights (base + adapter), never a name."""
        return self.weights.identity

    @property
    def capture_weights(self) -> WeightSummary:
        """The weights that produce this model's shareable captures (an activated adapter's: its base's)."""
        return self.base if self.weights.activation is not None and self.base is not None else self.weights

    @property
    def context_identity(self) -> str:
        """Whose weights produce this model's shareable context caches (an aLoRA's: its base's)."""
        return self.weights.context_identity

    @property
    def activation(self) -> tuple[int, ...] | None:
        """An activated adapter's invocation tokens (None for every other model)."""
        return self.weights.activation

    @property
    def surface(self) -> Any:
        """The model's :class:`~droidspeak.models.surface.ModelSurface` (made once)."""
        if self._surface is None:
            from .surface import ModelSurface

            self._surface = ModelSurface(self.model, self.activation, self.adapter_name)
        return self._surface

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> ModelKind:
        return self.spec.kind

    @property
    def num_layers(self) -> int:
        return self.family.num_layers

    @property
    def config(self) -> Any:
        return self.model.config

    def detokenize(self, tokens: list[int]) -> str:
        """Generated tokens as text (special tokens dropped); ids joined by spaces without a tokenizer."""
        if self.tokenizer is None:
            return " ".join(map(str, tokens))
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
