"""Greedy decoding on a prepared cache (after a full or a partial prefill)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from transformers import DynamicCache

from .surface import ModelSurface


def stop_ids(tokenizer) -> set[int]:
    out = set()
    if tokenizer is None:
        return out
    for tok in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>"):
        if tok and tok in tokenizer.get_vocab():
            out.add(tokenizer.get_vocab()[tok])
    if tokenizer.eos_token_id is not None:
        out.add(int(tokenizer.eos_token_id))
    return out


@torch.inference_mode()
def greedy_stream(model, cache: DynamicCache, first_logits: torch.Tensor, max_new_tokens: int,
                  stop: Iterable[int] = ()) -> Iterator[int]:
    """Yield greedy tokens: the first from ``first_logits``, the rest by feeding each back."""
    surface = ModelSurface(model)
    stop = set(stop)
    logits = first_logits
    for i in range(max_new_tokens):
        nxt = int(torch.argmax(logits))
        yield nxt
        if nxt in stop or i == max_new_tokens - 1:
            return
        logits = surface.forward_tokens(torch.tensor([[nxt]]), cache)


def greedy(model, cache: DynamicCache, first_logits: torch.Tensor, max_new_tokens: int,
           stop: Iterable[int] = ()) -> list[int]:
    return list(greedy_stream(model, cache, first_logits, max_new_tokens, stop))
