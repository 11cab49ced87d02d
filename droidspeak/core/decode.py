"""Greedy decoding on a prepared cache (after a full or a partial prefill), and token -> text."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..models.loaded import LoadedModel
from .result import PrefillResult


def stop_ids(tokenizer) -> set[int]:
    out = set()
    if tokenizer is None:
        return out
    vocab = tokenizer.get_vocab()
    for tok in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>", "<end_of_turn>"):
        if tok and tok in vocab:
            out.add(vocab[tok])
    if tokenizer.eos_token_id is not None:
        out.add(int(tokenizer.eos_token_id))
    return out


@torch.inference_mode()
def greedy_stream(model: LoadedModel, res: PrefillResult, max_new_tokens: int,
                  stop: Iterable[int] = ()) -> Iterator[int]:
    """Yield greedy tokens: the first from the prefill's logits, the rest by feeding each back
    into the prefill's cache (an activated adapter keeps acting from its activation point)."""
    surface = model.surface
    stop = set(stop)
    logits = res.logits
    for i in range(max_new_tokens):
        nxt = int(torch.argmax(logits))
        yield nxt
        if nxt in stop or i == max_new_tokens - 1:
            return
        logits = surface.forward_tokens(torch.tensor([[nxt]]), res.cache, res.activation_at)


def greedy(model: LoadedModel, res: PrefillResult, max_new_tokens: int, stop: Iterable[int] = ()) -> list[int]:
    return list(greedy_stream(model, res, max_new_tokens, stop))


def greedy_text(model: LoadedModel, res: PrefillResult, max_new_tokens: int) -> str:
    """The greedy answer as text, stopping at the model's end-of-turn tokens."""
    return model.detokenize(greedy(model, res, max_new_tokens, stop_ids(model.tokenizer)))
