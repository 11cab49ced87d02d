"""The model-specific surface: the only place that knows how a transformers model is laid out.

Llama-family decoders in transformers (Llama, Mistral, Qwen2, SmolLM) share one layout:
``ForCausalLM.model`` holds ``embed_tokens``, ``layers`` (decoder layers called as
``layer(h, attention_mask=, position_embeddings=, position_ids=, cache=, use_cache=)``),
``rotary_emb`` and ``norm``; masks come from ``transformers.masking_utils``; per-layer attention
kinds, where a model has several, are named by ``config.layer_types``. A new architecture needs
only this class to be taught about it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from .errors import DroidspeakError


class ModelSurface:
    """Named access to a causal LM's parts, unwrapping PEFT models."""

    def __init__(self, model: Any):
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        backbone = getattr(lm, "model", None)
        if backbone is None or not all(hasattr(backbone, a) for a in ("embed_tokens", "layers", "rotary_emb")):
            raise DroidspeakError(f"unsupported architecture {type(lm).__name__}: expected a Llama-family decoder")
        self.lm = lm
        self.backbone = backbone
        self.config = lm.config
        self.layers = backbone.layers
        self.layer_types: list[str] | None = getattr(self.config, "layer_types", None)

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.backbone.embed_tokens.weight.device

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        # ids: [1, n] -> [1, n, hidden]
        return self.backbone.embed_tokens(ids)

    def prefill_masks(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict[str, Any]:
        """Causal masks for a prefill of ``hidden`` ([1, n, hidden]) over an empty cache."""
        kw = dict(config=self.config, inputs_embeds=hidden, attention_mask=None, cache=None,
                  position_ids=position_ids)
        masks = {"full_attention": create_causal_mask(**kw)}
        if self.layer_types and "sliding_attention" in self.layer_types:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
        return masks

    def run_layers(self, hidden: torch.Tensor, start: int, end: int, cache: DynamicCache,
                   position_ids: torch.Tensor, masks: dict[str, Any]) -> torch.Tensor:
        """Run decoder layers ``start..end-1`` on ``hidden`` ([1, n, hidden]); K/V land in ``cache``."""
        pos_emb = self.backbone.rotary_emb(hidden, position_ids=position_ids)
        for idx in range(start, end):
            kind = self.layer_types[idx] if self.layer_types else "full_attention"
            hidden = self.layers[idx](hidden, attention_mask=masks[kind], position_embeddings=pos_emb,
                                      position_ids=position_ids, cache=cache, use_cache=True)
            if isinstance(hidden, tuple):  # older decoder layers return (hidden, ...)
                hidden = hidden[0]
        return hidden

    def layers_kv(self, hidden: torch.Tensor, start: int, end: int, position_ids: torch.Tensor,
                  masks: dict[str, Any]) -> tuple[torch.Tensor, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        """:meth:`run_layers` on a scratch cache: the hidden state after layer ``end-1`` and K/V by layer."""
        scratch = self.new_cache()
        out = self.run_layers(hidden, start, end, scratch, position_ids, masks)
        return out, {i: (scratch.layers[i].keys, scratch.layers[i].values) for i in range(start, end)}

    def cache_from(self, kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
        """A cache holding the given K/V for every layer, on the model's device and in its dtype."""
        cache = self.new_cache()
        dev, dtype = self.device, self.dtype
        for i in range(len(self.layers)):
            k, v = kv[i]
            cache.layers[i].update(k.to(device=dev, dtype=dtype), v.to(device=dev, dtype=dtype))
        return cache

    def first_logits(self, cache: DynamicCache, rest: list[int], context: torch.Tensor) -> torch.Tensor:
        """Logits after the prompt: ``rest`` (the tokens after the cached context) run on ``cache``; with
        nothing after the context, its last token is dropped from the cache and replayed."""
        if rest:
            return self.forward_tokens(torch.tensor([list(rest)]), cache)
        cache.crop(-1)  # transformers 5: a negative count removes that many tokens from every layer
        return self.forward_tokens(context[:, -1:], cache)

    def forward_tokens(self, ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """The model's own forward of ``ids`` ([1, m]) on top of ``cache``; logits of the last token."""
        out = self.lm(input_ids=ids.to(self.device), cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]

    def forward_logits(self, ids: torch.Tensor, cache: DynamicCache, keep: int) -> torch.Tensor:
        """Like :meth:`forward_tokens`, but the logits of the last ``keep`` tokens: ``[keep, vocab]``."""
        out = self.lm(input_ids=ids.to(self.device), cache=cache, use_cache=True, logits_to_keep=keep)
        return out.logits[0, -keep:]
