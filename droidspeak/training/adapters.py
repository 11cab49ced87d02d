"""Training the shipped variants: a standard LoRA, an activated LoRA (aLoRA), or a LoRA on the top layers.

All three kinds see the same rows in the same order with the same step budget: each step is one
training context (1-4K tokens) with several requests about it (``Recipe.questions``), and the loss
is the mean over the requests of the answer tokens' cross-entropy. What differs is what the
adapter may touch, and so how much of the context's cache it shares with its base:

* ``lora``: every projection of every layer. The context runs once *with* gradients and the
  requests run packed over its cache, so the backward pass goes through the context once per
  step (the same gradients as a batch of ``questions`` full sequences, at a fraction of the cost).
* ``alora``: an activated LoRA (PEFT ``alora_invocation_tokens``) whose invocation sequence is
  the request turn's header (``<|im_start|>user\\n`` for SmolLM2): it acts on the request and the
  answer only, never on the context before it. So the context goes through the base once,
  without gradients, and every request trains over that cache. Its context cache *is*
  the base's: shared exactly, with nothing recomputed.
* ``top:K``: every projection of layers ``K..L-1`` (PEFT ``layers_to_transform``). Layers below
  K stay the base's bit for bit, so plan ``K:L`` over the base's cache is exact.
"""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from ..errors import DroidspeakError
from ..models.surface import ModelSurface

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True, slots=True)
class AdapterKind:
    """Which weights an adapter may change: ``lora``, ``alora`` or ``top:K``."""

    kind: Literal["lora", "alora", "top"]
    first_layer: int = 0  # top:K: the lowest layer the adapter touches

    @classmethod
    def parse(cls, text: str) -> "AdapterKind":
        t = text.strip().lower()
        if t in ("lora", "alora"):
            return cls(t)  # type: ignore[arg-type]
        m = re.fullmatch(r"top:(\d+)", t)
        if m:
            return cls("top", int(m.group(1)))
        raise DroidspeakError(f"unknown adapter kind '{text}': use lora, alora or top:K (K = the first trained layer)")

    @property
    def name_suffix(self) -> str:
        return {"lora": "", "alora": "-alora", "top": f"-top{self.first_layer}"}[self.kind]

    def __str__(self) -> str:
        return f"top:{self.first_layer}" if self.kind == "top" else self.kind


def invocation_tokens(tokenizer: Any) -> list[int]:
    """The request turn's header, where an activated adapter starts acting (see the layout rule in
    :mod:`droidspeak.core.prompt`: the request is the turn after the context's)."""
    from ..core.prompt import layout

    a = layout(tokenizer, "x", "first request").suffix
    b = layout(tokenizer, "x", "another, different request").suffix
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == 0:
        raise DroidspeakError("this tokenizer's request turn has no fixed header to invoke an activated adapter with")
    return list(a[:n])


def lora_config(adapter: AdapterKind, rank: int, alpha: int, num_layers: int, invocation: list[int] | None):
    from peft import LoraConfig

    kw: dict[str, Any] = dict(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                              task_type="CAUSAL_LM")
    if adapter.kind == "alora":
        kw["alora_invocation_tokens"] = list(invocation or [])
    elif adapter.kind == "top":
        if not 0 < adapter.first_layer < num_layers:
            raise DroidspeakError(f"top:K needs 0 < K < {num_layers}")
        kw["layers_to_transform"] = list(range(adapter.first_layer, num_layers))
        kw["layers_pattern"] = "layers"
    return LoraConfig(**kw)


def _requests_loss(model: Any, cache: Any, surface: ModelSurface, requests: list[tuple[list[int], list[int]]],
                   alora: bool) -> torch.Tensor:
    """Mean over the requests of their answer tokens' cross-entropy, computed in ONE forward.

    The requests are packed one after another in a single row over the context's cache, each at the
    positions it would have alone (right after the context), behind a block-causal mask: a request's
    token sees the whole context and its own request's earlier tokens, never another request. So
    each request's logits are those of its own forward over the context, and the context's K/V is
    read once, not copied once per request (the copies were half of a batched step's forward)."""
    n = cache.get_seq_length()
    seqs = [q + a for q, a in requests]
    total = sum(len(s) for s in seqs)
    ids = torch.tensor([[t for s in seqs for t in s]])
    positions = torch.cat([torch.arange(n, n + len(s)) for s in seqs]).unsqueeze(0)
    block = torch.zeros(total, total, dtype=torch.bool)  # which packed tokens each packed token sees
    pred, tgt, owner = [], [], []  # where each answer token is predicted, the token, its request
    at = 0
    for i, ((q, a), s) in enumerate(zip(requests, seqs)):
        block[at:at + len(s), at:at + len(s)] = torch.ones(len(s), len(s), dtype=torch.bool).tril()
        pred += range(at + len(q) - 1, at + len(s) - 1)
        tgt += a
        owner += [i] * len(a)
        at += len(s)
    dtype = next(p for p in model.parameters()).dtype
    mask = _attention_masks(model.config, cache, block, positions[0], dtype)
    forked = surface.fork_cache(cache)  # the context's cache as a view: never written
    kw = {"alora_offsets": [total]} if alora else {}  # the adapter acts on every request token
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=forked, use_cache=True,
                   **kw).logits[0]
    # each request's loss is its own mean over its answer tokens, then the requests are averaged
    picked = torch.log_softmax(logits[pred].float(), dim=-1).gather(-1, torch.tensor(tgt).unsqueeze(-1)).squeeze(-1)
    owner_t = torch.tensor(owner)
    per_req = torch.zeros(len(requests)).index_add(0, owner_t, -picked)
    counts = torch.bincount(owner_t, minlength=len(requests)).clamp_min(1)
    return (per_req / counts).mean()


def context_cache(model: Any, prefix: list[int], alora: bool) -> Any:
    """A training step's context cache: the base's, without gradients, for an activated adapter (it never
    sees the context); else the adapter's own, with gradients that flow through the context once, shared
    by every request's loss."""
    ctx = torch.tensor([prefix])
    if alora:
        with torch.no_grad(), model.disable_adapter():
            return model(input_ids=ctx, use_cache=True, logits_to_keep=1).cache
    return model(input_ids=ctx, use_cache=True, logits_to_keep=1).cache


def _attention_masks(config: Any, cache: Any, block: torch.Tensor, queries: torch.Tensor, dtype: torch.dtype) -> Any:
    """The packed row's additive 4D mask(s), as the model takes prepared ones: one mask when its layers all attend
    alike, else one per layer type (Gemma 3). ``block``: which packed tokens see which ([total, total]); every
    token sees all the context a layer's cache holds (a sliding-window layer holds only its last tokens), and a
    sliding-window layer only keys less than the window behind the query's position (as the model's own masks)."""
    n = cache.get_seq_length()

    def mask(layer: int, window: int | None) -> torch.Tensor:
        held = cache.layers[layer].keys.shape[-2]
        keys = torch.cat([torch.arange(n - held, n), queries])
        ok = torch.cat([torch.ones(len(queries), held, dtype=torch.bool), block], dim=1)
        if window:
            ok &= queries[:, None] - keys[None, :] < window
        return torch.zeros(1, 1, *ok.shape, dtype=dtype).masked_fill(~ok, torch.finfo(dtype).min)

    window = getattr(config, "sliding_window", None)
    types = list(getattr(config, "layer_types", None) or [])
    if not window or set(types) == {"full_attention"}:
        return mask(0, None)
    if "full_attention" not in types:
        return mask(0, window)
    return {"full_attention": mask(types.index("full_attention"), None),
            "sliding_attention": mask(types.index("sliding_attention"), window)}


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


def train_adapter(base: Any, groups: list[tuple[list[int], list[tuple[list[int], list[int]]]]], adapter: AdapterKind,
                  rank: int, alpha: int, lr: float, seed: int, warmup: int, progress: bool = True,
                  invocation: list[int] | None = None) -> tuple[Any, list[float], float]:
    """Train an adapter of ``adapter``'s kind on ``base`` (a LoadedModel, modified in place).

    ``groups``: per step, the context's prefix tokens and its ``(request tokens, answer tokens)``
    pairs. Returns the PeftModel, the loss per step and the wall time.
    """
    from peft import get_peft_model

    torch.manual_seed(seed)
    cfg = lora_config(adapter, rank, alpha, base.num_layers, invocation)
    model = get_peft_model(base.model, cfg)
    alora = adapter.kind == "alora"
    losses, wall = run_steps(model, groups, lr, warmup, lambda m, prefix: context_cache(m, prefix, alora), alora,
                             progress, f"train {adapter}")
    return model, losses, wall


def run_steps(model: Any, groups: list[tuple[list[int], list[tuple[list[int], list[int]]]]], lr: float, warmup: int,
              context: Callable[[Any, list[int]], Any], alora: bool, progress: bool = True,
              desc: str = "train") -> tuple[list[float], float]:
    """The training loop over ``groups`` (one step per context) of ``model``'s trainable parameters: AdamW with
    warm-up and cosine decay, gradients clipped to norm 1. ``context(model, prefix)`` makes a step's context
    cache; the requests' loss runs packed over it (``alora``: the activated adapter acts on every request token).
    Returns the loss per step and the wall time."""
    from tqdm import tqdm

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, len(groups), warmup))
    surface = ModelSurface(model)
    losses: list[float] = []
    t0 = time.time()
    bar = tqdm(groups, desc=desc, disable=not progress, file=sys.stderr)
    for prefix, requests in bar:
        cache = context(model, prefix)
        loss = _requests_loss(model, cache, surface, requests, alora=alora)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    return losses, time.time() - t0


def save_half(model: Any, out: Any) -> None:
    """Save the adapter as safetensors in fp16 (half the bytes; loading casts it back exactly)."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(str(out), safe_serialization=True)
    w = out / "adapter_model.safetensors"
    tensors = load_file(str(w))
    save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(w))
