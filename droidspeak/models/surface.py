"""The model-specific surface: the only place that knows how a transformers model is laid out.

Every decoder family droidspeak serves has one layout in transformers: ``ForCausalLM.model``
holds ``embed_tokens``, ``layers`` (decoder layers called as ``layer(h, attention_mask=,
position_embeddings=, position_ids=, cache=)``), ``rotary_emb`` and ``norm``; masks come from
``transformers.masking_utils``. What differs, and is handled here:

* attention kinds per layer (``config.layer_types``, or a model-wide ``sliding_window``):
  ``full_attention`` and ``sliding_attention``, each with its own mask and cache layer;
* RoPE per layer kind (Gemma 3: ``rotary_emb(x, position_ids, layer_type)``) or shared;
* scaled embeddings and q/k norms live inside the modules, so they need nothing here;
* PEFT wrappers are unwrapped; every forward says which adapter(s) the shared module applies
  (:mod:`.routing`), and an activated adapter (aLoRA) how many of the forwarded tokens lie at or
  after its activation point.

A new architecture is taught here and added to :data:`SUPPORTED_ARCHITECTURES`; the family
contract refuses every other one before anything runs.

Caches. The receiver's cache for a request is preallocated for the prompt and the tokens it may
generate (:meth:`ModelSurface.new_cache` with ``max_tokens``), so reused layers are copied in once
and the suffix and decoding append in place, with no concatenation, and attention sees only the
filled part. ``static=True`` gives transformers' fixed-shape ``StaticCache`` instead, for CUDA
graphs. A cache without ``max_tokens`` is the model's own ``DynamicCache``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer, get_layer_types_and_kwargs
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from ..errors import DroidspeakError
from .routing import Router

# NOTE: every architecture here is covered by the unit tests' equivalence guarantees (tests/test_partial.py).
SUPPORTED_ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM",
})
FULL, SLIDING = "full_attention", "sliding_attention"
KV = tuple[torch.Tensor, torch.Tensor]  # K, V: [batch, kv_heads, tokens, head_dim] each


class InPlaceLayer(DynamicLayer):
    """A full-attention cache layer whose K/V live in a buffer preallocated for ``max_tokens``:
    appending writes in place (no concatenation, no copy of what is there), and attention sees only
    the filled part (no padding to attend over, as a static cache's would). Otherwise a DynamicLayer.

    NOTE: keys/values here are views of the first ``n`` columns of the buffers: [B, kv_heads, n, D].
    """

    def __init__(self, max_tokens: int, k: torch.Tensor | None = None, v: torch.Tensor | None = None):
        super().__init__()
        self.max_tokens = int(max_tokens)
        self.n = 0
        if k is not None and v is not None:  # buffers given (views of one buffer for every layer)
            self._adopt(k, v)

    def _adopt(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self._k, self._v = k, v
        self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]
        self.device, self.dtype = k.device, k.dtype
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        # nothing past ``n`` is ever read: no need to clear the buffers
        self._adopt(key_states.new_empty(b, h, self.max_tokens, d),
                    value_states.new_empty(b, h, self.max_tokens, value_states.shape[-1]))

    def filled(self, n: int) -> None:
        """The first ``n`` tokens of the buffers were written from outside (a copy of stored blocks)."""
        self.n = n
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        m = key_states.shape[-2]
        if self.n + m > self.max_tokens:
            raise RuntimeError(f"cache full: {self.n} + {m} tokens > {self.max_tokens} preallocated")
        self._k[:, :, self.n:self.n + m].copy_(key_states)
        self._v[:, :, self.n:self.n + m].copy_(value_states)
        self.n += m
        self.keys, self.values = self._k[:, :, :self.n], self._v[:, :, :self.n]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.n

    def get_max_length(self) -> int:
        return self.max_tokens

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop with a negative count: the number of tokens to remove")
        self.n = max(0, self.n + tokens_to_remove)
        if self.is_initialized:
            self.keys, self.values = self._k[:, :, :self.n], self._v[:, :, :self.n]

    def reset(self) -> None:
        self.n = 0
        if self.is_initialized:
            self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]


def unsupported_reason(architecture: str) -> str | None:
    """Why a model of ``architecture`` cannot share caches here (None when it can)."""
    if architecture in SUPPORTED_ARCHITECTURES:
        return None
    return (f"architecture {architecture} is not supported by droidspeak's model surface "
            f"(supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})")


def alora_offsets(start: int, count: int, activation_at: int | None) -> int:
    """How many of ``count`` tokens at positions ``start..start+count-1`` an activated adapter acts on
    (those at or after ``activation_at``; none when the invocation does not occur)."""
    if activation_at is None:
        return 0
    return max(0, min(count, start + count - activation_at))


class ModelSurface:
    """Named access to a causal LM's parts, unwrapping PEFT models.

    ``activation``: an activated adapter's invocation tokens (see :mod:`droidspeak.models.exact`); every
    forward then passes PEFT the number of tokens the adapter acts on. ``adapter``: the PEFT adapter
    it runs as on a module shared with its base and siblings (None: the module as it is, adapters off).
    """

    def __init__(self, model: Any, activation: tuple[int, ...] | None = None, adapter: str | None = None):
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        arch = type(lm).__name__
        backbone = getattr(lm, "model", None)
        why = unsupported_reason(arch)
        if why is None and (backbone is None or not all(hasattr(backbone, a) for a in ("embed_tokens", "layers",
                                                                                        "rotary_emb"))):
            why = f"architecture {arch} does not have the expected decoder layout"
        if why:
            raise DroidspeakError(why)
        self.lm = lm
        self.backbone = backbone
        self.config = lm.config
        self.layers = backbone.layers
        self.activation = tuple(activation) if activation else None
        self.adapter = adapter  # the PEFT adapter this surface runs as on its module (None: the base, adapters off)
        self.router = Router.of(lm)
        kinds, _ = get_layer_types_and_kwargs(self.config.get_text_config(decoder=True))
        bad = sorted(set(kinds) - {FULL, SLIDING})
        if bad:
            raise DroidspeakError(f"architecture {arch} has attention layers of kind {bad[0]}, which droidspeak does "
                                  "not handle")
        self.layer_kinds: tuple[str, ...] = tuple(kinds)
        self._rope_per_kind = "layer_type" in inspect.signature(backbone.rotary_emb.forward).parameters

    # ------------------------------------------------------------------ properties
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.backbone.embed_tokens.weight.device

    # ------------------------------------------------------------------ layer building blocks
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        # ids: [1, n] -> [1, n, hidden] (a scaled embedding scales itself)
        return self.backbone.embed_tokens(ids.to(self.device))

    def position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict[str, Any]:
        """RoPE (cos, sin) per attention kind present."""
        rope = self.backbone.rotary_emb
        if self._rope_per_kind:
            return {k: rope(hidden, position_ids, k) for k in set(self.layer_kinds)}
        shared = rope(hidden, position_ids=position_ids)
        return {k: shared for k in set(self.layer_kinds)}

    def prefill_masks(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict[str, Any]:
        """Causal masks for a prefill of ``hidden`` ([1, n, hidden]) over an empty cache, per kind."""
        kw = dict(config=self.config, inputs_embeds=hidden, attention_mask=None, cache=None, position_ids=position_ids)
        masks: dict[str, Any] = {}
        if FULL in self.layer_kinds:
            masks[FULL] = create_causal_mask(**kw)
        if SLIDING in self.layer_kinds:
            masks[SLIDING] = create_sliding_window_causal_mask(**kw)
        return masks

    def run_layers(self, hidden: torch.Tensor, start: int, end: int, cache: Any, position_ids: torch.Tensor,
                   masks: Mapping[str, Any], pos_emb: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Run decoder layers ``start..end-1`` on ``hidden`` ([1, n, hidden]) as this surface's model (its own
        adapter on a shared module); their K/V land in ``cache``.

        NOTE: these are context tokens (a capture's, an assembly's), all before an activated adapter's
        activation point: it acts on none of them."""
        pos_emb = pos_emb or self.position_embeddings(hidden, position_ids)
        with self.router.route([self.adapter], [0] if self.activation else None, hidden.shape[1]):
            for idx in range(start, end):
                kind = self.layer_kinds[idx]
                hidden = self.layers[idx](hidden, attention_mask=masks[kind], position_embeddings=pos_emb[kind],
                                          position_ids=position_ids, cache=cache, use_cache=True)
                if isinstance(hidden, tuple):  # older decoder layers return (hidden, ...)
                    hidden = hidden[0]
        return hidden

    def layers_kv(self, hidden: torch.Tensor, start: int, end: int, position_ids: torch.Tensor,
                  masks: Mapping[str, Any]) -> tuple[torch.Tensor, dict[int, KV]]:
        """:meth:`run_layers` on a scratch cache: the hidden state after layer ``end-1`` and the K/V of
        every token by layer (sliding layers too: the masks, not the cache, apply their window)."""
        scratch = self.scratch_cache()
        out = self.run_layers(hidden, start, end, scratch, position_ids, masks)
        return out, {i: (scratch.layers[i].keys, scratch.layers[i].values) for i in range(start, end)}

    # ------------------------------------------------------------------ caches
    def scratch_cache(self) -> DynamicCache:
        """A cache that keeps every token of every layer (what captures and stores hold)."""
        return DynamicCache()  # no config: every layer a plain DynamicLayer, made as the forward reaches it

    def new_cache(self, max_tokens: int | None = None, static: bool = False, batch: int = 1) -> Any:
        """The model's own cache. With ``max_tokens``: full-attention layers preallocated and written in
        place (:class:`InPlaceLayer`), sliding-window layers keeping their window as the model's own
        do; with ``static``, transformers' fixed-shape ``StaticCache`` (what CUDA graphs need).
        Without: the model's growing ``DynamicCache``.

        NOTE: when every layer attends to the whole context, the preallocated K/V of all layers are
        views of one buffer, ``cache.kv_buffer``: ``[L, 2, batch, kv_heads, max_tokens, head_dim]``, so
        stored blocks go in with one copy each (:meth:`~droidspeak.store.blocks.BlockSource.fill`)."""
        if max_tokens is None:
            return DynamicCache(config=self.config)
        if static:
            return StaticCache(config=self.config, max_cache_len=int(max_tokens))
        if all(kind == FULL for kind in self.layer_kinds):
            attn = self.layers[0].self_attn
            heads = int(getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads)
            buf = torch.empty(self.num_layers, 2, batch, heads, int(max_tokens), attn.head_dim, dtype=self.dtype,
                              device=self.device)
            cache = Cache(layers=[InPlaceLayer(max_tokens, buf[i, 0], buf[i, 1]) for i in range(self.num_layers)])
            cache.kv_buffer = buf
            return cache
        _, kw = get_layer_types_and_kwargs(self.config.get_text_config(decoder=True))
        return Cache(layers=[InPlaceLayer(max_tokens) if kind == FULL else DynamicSlidingWindowLayer(**k)
                             for kind, k in zip(self.layer_kinds, kw)])

    def write_kv(self, cache: Any, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Put K/V of the first tokens into an empty layer of ``cache``, as the model would have (a
        sliding layer keeps its window). K, V: [1, kv_heads, tokens, head_dim]."""
        cache.layers[layer].update(k.to(device=self.device, dtype=self.dtype),
                                   v.to(device=self.device, dtype=self.dtype))

    def cache_from(self, kv: Mapping[int, KV], tokens: int | None = None, max_tokens: int | None = None) -> Any:
        """A cache holding the first ``tokens`` (default: all) of the given K/V for every layer."""
        cache = self.new_cache(max_tokens)
        for i in range(self.num_layers):
            k, v = kv[i]
            n = k.shape[2] if tokens is None else tokens
            self.write_kv(cache, i, k[:, :, :n], v[:, :, :n])
        return cache

    @staticmethod
    def seq_length(cache: Any) -> int:
        return int(cache.get_seq_length())

    def fork_cache(self, cache: Any, batch: int = 1) -> DynamicCache:
        """A growing cache over the same context tensors, repeated ``batch`` times as a view (no copy;
        an autograd graph is kept). What is appended never touches the original."""
        out = DynamicCache(config=self.config)
        for src, dst in zip(cache.layers, out.layers):
            if src.is_initialized:
                if isinstance(cache, StaticCache):
                    raise ValueError("fork a growing or in-place cache, not a fixed-shape one")
                k, v = src.keys, src.values
                k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
                dst.lazy_initialization(k, v)
                dst.keys, dst.values = k, v
                if hasattr(dst, "cumulative_length"):
                    dst.cumulative_length = int(src.get_seq_length())
        return out

    # ------------------------------------------------------------------ forwards
    def forward(self, ids: torch.Tensor, cache: Any, keep: int = 1, activation_at: int | None = None,
                **kw: Any) -> torch.Tensor:
        """The model's own forward of ``ids`` ([1, m]) on top of ``cache``: logits of the last
        ``keep`` tokens, ``[keep, vocab]``. ``activation_at``: where an activated adapter's
        invocation starts in the whole sequence (absolute position)."""
        start = self.seq_length(cache)
        offsets = [alora_offsets(start, ids.shape[1], activation_at)] if self.activation else None
        with self.router.route([self.adapter], offsets, ids.shape[1]):
            out = self.lm(input_ids=ids.to(self.device), cache=cache, use_cache=True, logits_to_keep=keep, **kw)
        return out.logits[0, -keep:]

    def forward_tokens(self, ids: torch.Tensor, cache: Any, activation_at: int | None = None) -> torch.Tensor:
        """Logits of the last token of ``ids`` run on ``cache``: ``[vocab]``."""
        return self.forward(ids, cache, 1, activation_at)[-1]

    def decode_step(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any,
                    adapters: list[str | None], offsets: list[int] | None) -> torch.Tensor:
        """One batched decode step over a left-padded batch cache: ids, positions ``[B, 1]``, mask
        ``[B, T+1]``; row ``i`` runs as ``adapters[i]`` (None: the base; any adapter on this module),
        an activated one acting on ``offsets[i]`` of its tokens. Returns the logits ``[B, vocab]``."""
        with self.router.route(adapters, offsets, 1):
            out = self.lm(input_ids=ids.to(self.device), attention_mask=mask, position_ids=positions, cache=cache,
                          use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    # ------------------------------------------------------------------ captures
    @contextlib.contextmanager
    def recording_inputs(self, layers: Iterable[int], into: dict[int, list[torch.Tensor]]) -> Iterator[None]:
        """While open, the hidden state entering each of ``layers`` is appended to ``into[layer]``
        (E: [1, tokens, hidden] per forward)."""

        def pre_hook(_module, args, kwargs, idx):
            h = args[0] if args else kwargs["hidden_states"]
            into.setdefault(idx, []).append(h.detach().clone())

        handles = [self.layers[i].register_forward_pre_hook(
            lambda m, a, k, i=i: pre_hook(m, a, k, i), with_kwargs=True) for i in sorted(set(layers))]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # ------------------------------------------------------------------ batching (the engine's decode)
    def stack(self, parts: list[list[KV]], lengths: list[int], room: int) -> tuple[Any, torch.Tensor]:
        """A left-padded batch cache of the given per-request K/V (``parts[r][layer]``, the last
        ``lengths[r]`` tokens of each are real), with ``room`` free columns to decode into; and the
        attention mask ``[B, T]`` (T = the longest request) marking real tokens."""
        B, T = len(parts), max(lengths)
        cache = self.new_cache(T + room, batch=B)
        for li in range(self.num_layers):
            k0 = parts[0][li][0]
            ks = k0.new_zeros(B, k0.shape[1], T, k0.shape[3])
            vs = k0.new_zeros(B, k0.shape[1], T, parts[0][li][1].shape[3])
            for r, (kv, n) in enumerate(zip(parts, lengths)):
                ks[r, :, T - n:] = kv[li][0][0, :, -n:]
                vs[r, :, T - n:] = kv[li][1][0, :, -n:]
            cache.layers[li].update(ks, vs)
        mask = torch.zeros(B, T, dtype=torch.long)
        for r, n in enumerate(lengths):
            mask[r, T - n:] = 1
        return cache, mask

    def unstack(self, cache: Any, row: int, length: int, width: int) -> list[KV]:
        """Request ``row``'s K/V by layer from a left-padded batch cache whose real columns end at
        ``width`` (its last ``length`` columns are the request's own)."""
        return [(layer.keys[row:row + 1, :, width - length:width], layer.values[row:row + 1, :, width - length:width])
                for layer in cache.layers]

    def request_kv(self, cache: Any) -> list[KV]:
        """A batch-1 request cache's K/V by layer, its real tokens only."""
        n = self.seq_length(cache)
        return [(layer.keys[:, :, :n], layer.values[:, :, :n]) for layer in cache.layers]
