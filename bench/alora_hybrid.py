"""Issue 23's untried recipe: an activated LoRA on the lower layers plus a standard LoRA on the top ones.

The activated part (PEFT aLoRA, layers ``0..K-1``) acts only from the request's turn on, so the context's
K/V on those layers is the base's; the top part (a LoRA on layers ``K..L-1``) acts on every token, so the
context's top layers are recomputed from the base's E entering layer K: plan ``K:L`` over the base's
capture, exact. It costs the recomputed top layers' prefill, and buys the top layers reading the context
as the fine-tune would. Does it close the gap to the standard LoRA that the activated recipe leaves?

This trains the hybrid with QA's recipe (the same rows, contexts, requests per context, steps, learning
rate and seed as the shipped activated and standard LoRAs; the activated part at the activated rank, the
top part at the LoRA rank) and scores it on the held-out rows of an earlier ``variants eval`` result, so
the comparison with that result's columns is paired, row by row. It also checks, on the first rows, that
the hybrid's context cache below layer K is bit-identical to the base's (what makes plan K:L exact).
Not a shipped kind: the server does not load two adapters per model (see the closing note of issue 23).

    python bench/alora_hybrid.py --first-layer 20 --against bench/results/variants_smollm2-qa-1k.json \\
        --out bench/results/alora_hybrid.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, write_result  # noqa: E402

from droidspeak import tasks  # noqa: E402
from droidspeak.core.decode import stop_ids  # noqa: E402
from droidspeak.core.prompt import layout  # noqa: E402
from droidspeak.models import load_model  # noqa: E402
from droidspeak.quality import score  # noqa: E402
from droidspeak.stats import mean_ci, paired_diff_ci, paired_ratio_ci  # noqa: E402
from droidspeak.training.adapters import AdapterKind, invocation_tokens, lora_config, run_steps  # noqa: E402
from droidspeak.training.variants import recipe, training_groups  # noqa: E402

NOWHERE = [0]  # alora_offsets: the activated part acts on no token of this forward


def build(base, k: int, r, invocation: list[int]):
    """The two parts as the shipped kinds configure them (``lora_config``): the activated part restricted to
    layers 0..K-1, the top part is the ``top:K`` kind's."""
    import dataclasses

    from peft import get_peft_model

    L = base.num_layers
    low = dataclasses.replace(lora_config(AdapterKind("alora"), r.ranks["alora"], 2 * r.ranks["alora"], L, invocation),
                              layers_to_transform=list(range(k)), layers_pattern="layers")
    top = lora_config(AdapterKind("top", k), r.ranks["lora"], 2 * r.ranks["lora"], L, None)
    model = get_peft_model(base.model, low, adapter_name="activated")
    model.add_adapter("top", top)
    model.base_model.set_adapter(["activated", "top"])  # both act (each where it may) and both train
    return model


def train(model, groups, r) -> tuple[list[float], float]:
    low = [p for n, p in model.named_parameters() if p.requires_grad and ".activated." in n]

    def context(m, prefix):
        # the context with the top part acting (gradients flow through the top layers only: nothing below K
        # trains on the context), the activated part nowhere; not even an empty product of the activated part may
        # pull the layers below K into the graph
        for p in low:
            p.requires_grad_(False)
        cache = m(input_ids=torch.tensor([prefix]), use_cache=True, logits_to_keep=1, alora_offsets=NOWHERE).cache
        for p in low:
            p.requires_grad_(True)
        return cache

    torch.manual_seed(r.seed)
    return run_steps(model, groups, r.lr, r.warmup, context, alora=True, desc="train hybrid")  # both act on requests


@torch.inference_mode()
def answer(model, tok, context: str, request: str, max_new: int, base_cache_check: int | None = None) -> str:
    """Greedy over the hybrid's own full prefill: the context (the activated part acting nowhere), then the request
    turn and every generated token (both parts acting), as PEFT's generate would place the activation."""
    p = layout(tok, context, request)
    cache = model(input_ids=torch.tensor([list(p.prefix)]), use_cache=True, logits_to_keep=1,
                  alora_offsets=NOWHERE).cache
    if base_cache_check is not None:
        with model.disable_adapter():
            own = model(input_ids=torch.tensor([list(p.prefix)]), use_cache=True, logits_to_keep=1).cache
        same = [torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) for a, b in zip(cache.layers, own.layers)]
        assert all(same[:base_cache_check]), f"layers below {base_cache_check} differ from the base's: {same}"
        assert not all(same[base_cache_check:]), "the top part changed no context layer"
    suffix = list(p.suffix)
    logits = model(input_ids=torch.tensor([suffix]), cache=cache, use_cache=True, logits_to_keep=1,
                   alora_offsets=[len(suffix)]).logits
    stops, out = stop_ids(tok), []
    for _ in range(max_new):
        t = int(logits[0, -1].argmax())
        if t in stops:
            break
        out.append(t)
        logits = model(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True, alora_offsets=[1]).logits
    return tok.decode(out, skip_special_tokens=True)


def _d(interval):
    return interval.to_dict() if interval is not None else None  # None: a ratio over a zero column


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="smollm2-qa")
    ap.add_argument("--first-layer", type=int, default=20, help="K: the top part trains layers K..L-1")
    ap.add_argument("--steps", type=int, help="default: the recipe's")
    ap.add_argument("--against", required=True, help="a `variants eval` result of the same task: its rows, paired")
    ap.add_argument("--limit", type=int, help="score only the first N of those rows (a quick check)")
    ap.add_argument("--save", help="also keep the two adapters in this folder")
    ap.add_argument("--out", default="bench/results/alora_hybrid.json")
    args = ap.parse_args()
    r = recipe(args.recipe)
    earlier = json.loads(Path(args.against).read_text())
    assert earlier["task"] == r.task and earlier["base"] == r.parent, "that evaluation is of another task or base"
    base = load_model(r.parent)
    tok = base.tokenizer
    cmd = earlier["command"].split(";")[0].split()  # its --n and token range give its rows
    flag = lambda f, d: int(cmd[cmd.index(f) + 1]) if f in cmd else d  # noqa: E731
    n, lo, hi = flag("--n", 30), flag("--min-tokens", 1024), flag("--max-tokens", 4096)
    rows = tasks.generate(r.task, "heldout", n, tok, seed=earlier.get("seed", 0), lengths=(lo, hi))
    keys = [(len(layout(tok, x.context, x.prompt).ids), x.reference) for x in rows]
    assert keys == [(x["tokens"], x["reference"]) for x in earlier["per_row"]], "not that evaluation's rows"
    if args.limit:
        rows, keys, earlier["per_row"] = rows[:args.limit], keys[:args.limit], earlier["per_row"][:args.limit]
    steps = args.steps or r.steps
    model = build(base, args.first_layer, r, invocation_tokens(tok))
    losses, wall = train(model, training_groups(r, tok, steps), r)
    if args.save:
        model.save_pretrained(args.save, safe_serialization=True)
    metric = tasks.METRIC_OF_TASK[r.task]
    name = f"{args.recipe}-alora-top{args.first_layer}"
    scores, answers, t0 = [], [], time.time()
    for i, row in enumerate(rows):
        a = answer(model, tok, row.context, row.prompt, r.max_new_tokens, args.first_layer if i < 3 else None)
        answers.append(a)
        scores.append(score(metric, a, row.reference or ""))
        print(f"row {i + 1}/{len(rows)} {metric} {sum(scores) / len(scores):.3f}", file=sys.stderr, flush=True)
    col = lambda k: [x[k] for x in earlier["per_row"]]  # noqa: E731
    lora = f"{args.recipe}-lora" if f"{args.recipe}-lora" in earlier["variants"] else args.recipe  # trained alike
    alora = f"{args.recipe}-alora"
    L = base.num_layers
    write_result(args.out, provenance() | {
        "recipe": args.recipe, "variant": name, "first_layer": args.first_layer, "layers": L, "steps": steps,
        "ranks": {"activated": r.ranks["alora"], "top": r.ranks["lora"]}, "questions": r.questions, "lr": r.lr,
        "seed": r.seed, "train_lengths": list(r.train_lengths), "train_wall_s": round(wall, 1), "loss_curve": losses,
        "recomputed_fraction": round((L - args.first_layer) / L, 3), "metric": metric, "rows": len(rows),
        "against": args.against, "tokens": [min(k for k, _ in keys), max(k for k, _ in keys)],
        "score": mean_ci(scores).to_dict(), "eval_wall_s": round(time.time() - t0, 1),
        "columns": {k: mean_ci(col(k)).to_dict() for k in ("base", lora, alora)},
        "over_lora": _d(paired_ratio_ci(scores, col(lora))),
        "over_alora": _d(paired_ratio_ci(scores, col(alora))),
        "minus_alora": _d(paired_diff_ci(scores, col(alora))),
        "context_below_k_is_the_base": "checked bit for bit on the first 3 rows",
        "per_row": [{"score": s, "answer": a} for s, a in zip(scores, answers)],
    })


if __name__ == "__main__":
    main()
