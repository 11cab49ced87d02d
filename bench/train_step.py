"""What one activated-adapter training step costs, and what packing the requests saved.

A step of ``variants train --adapter alora`` runs the context once through the base without gradients,
then the requests' forward and backward over that cache. This script times both parts on SmolLM2 with
real QA training rows (``--contexts`` contexts of the recipe's lengths, ``--questions`` requests each),
side by side in one run:

* **packed** (what training does): every request in one row behind a block-causal mask
  (:func:`droidspeak.training.adapters._requests_loss`);
* **batched** (what it did before): the requests as a right-padded batch over the context's cache
  forked as an expanded view, one row per request (kept here as the baseline);
* **a standard LoRA's step** on the same rows (``--adapter lora``: the context runs with gradients and the
  backward pass goes through it), so an activated recipe's step budget can be read as training compute.

Both losses are printed and must agree; the gradient equality is a test (tests/test_training.py).

    .venv/bin/python bench/train_step.py --questions 4 16 --out bench/results/train_step.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402


def batched_loss(model, cache, surface, requests):
    """The layout training used before packing: one right-padded row per request over an expanded fork."""
    B = len(requests)
    width = max(len(q) + len(a) for q, a in requests)
    n = cache.get_seq_length()
    ids = torch.zeros(B, width, dtype=torch.long)
    labels = torch.full((B, width), -100, dtype=torch.long)
    mask = torch.zeros(B, n + width, dtype=torch.long)
    mask[:, :n] = 1
    for i, (q, a) in enumerate(requests):
        ids[i, :len(q) + len(a)] = torch.tensor(q + a)
        labels[i, len(q):len(q) + len(a)] = torch.tensor(a)
        mask[i, n:n + len(q) + len(a)] = 1
    logits = model(input_ids=ids, attention_mask=mask, cache=surface.fork_cache(cache, batch=B), use_cache=True,
                   alora_offsets=[width] * B).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tgt = labels[:, 1:]
    picked = logp.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    valid = tgt != -100
    return (-(picked * valid).sum(1) / valid.sum(1).clamp_min(1)).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--contexts", type=int, default=3)
    ap.add_argument("--out", default="bench/results/train_step.json")
    args = ap.parse_args()

    from peft import get_peft_model

    from droidspeak.models import load_model
    from droidspeak.models.surface import ModelSurface
    from droidspeak.training.adapters import AdapterKind, _requests_loss, context_cache, invocation_tokens, lora_config
    from droidspeak.training.variants import RECIPES, training_groups

    r = RECIPES["smollm2-qa"]
    base = load_model(r.parent)
    inv = invocation_tokens(base.tokenizer)
    lora = get_peft_model(copy.deepcopy(base.model), lora_config(AdapterKind("lora"), r.ranks["lora"],
                                                                 2 * r.ranks["lora"], base.num_layers, None))
    model = get_peft_model(base.model, lora_config(AdapterKind("alora"), r.ranks["alora"], 2 * r.ranks["alora"],
                                                   base.num_layers, inv))
    model.train(), lora.train()
    surface, lora_surface = ModelSurface(model), ModelSurface(lora)
    rows = []
    for q in args.questions:
        groups = training_groups(replace(r, questions=q), base.tokenizer, args.contexts)
        for prefix, requests in groups[:args.contexts]:
            t0 = time.perf_counter()
            cache = context_cache(model, prefix, alora=True)
            ctx_s = time.perf_counter() - t0
            row = {"questions": len(requests), "context_tokens": len(prefix),
                   "request_tokens": sum(len(a) + len(b) for a, b in requests), "context_forward_s": round(ctx_s, 3)}
            for name, fn in (("batched", lambda: batched_loss(model, cache, surface, requests)),
                             ("packed", lambda: _requests_loss(model, cache, surface, requests, alora=True))):
                t0 = time.perf_counter()
                loss = fn()
                loss.backward()
                row[f"{name}_s"] = round(time.perf_counter() - t0, 3)
                row[f"{name}_loss"] = round(loss.item(), 5)
                model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            lora_cache = context_cache(lora, prefix, alora=False)
            _requests_loss(lora, lora_cache, lora_surface, requests, alora=False).backward()
            row["lora_step_s"] = round(time.perf_counter() - t0, 3)
            lora.zero_grad(set_to_none=True)
            row["alora_step_s"] = round(ctx_s + row["packed_s"], 3)
            row["lora_over_alora_step"] = round(row["lora_step_s"] / row["alora_step_s"], 2)
            row["requests_speedup"] = round(row["batched_s"] / row["packed_s"], 2)
            row["step_speedup"] = round((ctx_s + row["batched_s"]) / (ctx_s + row["packed_s"]), 2)
            print(row, flush=True)
            rows.append(row)
    summary = {}
    for q in args.questions:
        rs = [x for x in rows if x["questions"] == q]
        summary[str(q)] = {k: round(statistics.median(x[k] for x in rs), 3) for k in
                           ("context_forward_s", "batched_s", "packed_s", "requests_speedup", "step_speedup", "alora_step_s",
                            "lora_step_s", "lora_over_alora_step")}
    write_result(args.out, provenance() | {"rows": rows, "median_by_questions": summary})


if __name__ == "__main__":
    main()
