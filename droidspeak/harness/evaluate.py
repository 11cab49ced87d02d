"""Held-out evaluation of a plan: the receiver with its own full prefill, with the plan, with full reuse.

Every row is answered three ways by the receiver over the sender's capture of the row's context:
its own full prefill (the reference), the plan, and full reuse (nothing recomputed, the naive
sharing every engine refuses). Quality is the gold metric where the rows carry references and a
metric is given, else label-free: the answer's token-F1 agreement with the full-prefill answer.
TTFT is the receiver's prefill time (the sender's work is not counted: it was done for the sender).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..core.capture import capture
from ..core.decode import greedy, stop_ids
from ..core.plan import RecomputePlan
from ..core.prefill import full_prefill, partial_prefill
from ..core.prompt import PromptTokens
from ..errors import DroidspeakError
from ..models.family import require_compatible
from ..models.loaded import LoadedModel
from ..quality import agreement, kl_divergence, score
from ..stats import mean_ci, paired_diff_ci, relative_drop_ci
from ..tasks import Example
from .reuse import prompt_for, warm_up


@torch.inference_mode()
def evaluate_plan(sender: LoadedModel, receiver: LoadedModel, plan: RecomputePlan, rows: list[Example],
                  metric: str | None = None, max_new_tokens: int = 24, progress: bool = True,
                  prompts: list[PromptTokens] | None = None) -> dict[str, Any]:
    """Evaluate ``plan`` on ``rows`` (laid out by the receiver's tokenizer, or given as ``prompts``)."""
    from tqdm import tqdm

    require_compatible(sender.family, receiver.family, sender.name, receiver.name)
    if not rows:
        raise DroidspeakError("no rows to evaluate")
    labelled = metric is not None and all(r.reference is not None for r in rows)
    if metric is not None and not labelled:
        raise DroidspeakError(f"metric '{metric}' needs a reference on every row")
    stops = stop_ids(receiver.tokenizer)
    none = RecomputePlan.none(receiver.num_layers)
    max_pos = getattr(receiver.config, "max_position_embeddings", None)
    warm_up(sender, receiver)

    def answer(res) -> str:
        return receiver.detokenize(greedy(receiver, res, max_new_tokens, stops))

    per_row = []
    for i, row in enumerate(tqdm(rows, desc=f"eval {plan}", disable=not progress, file=sys.stderr)):
        prompt = prompts[i] if prompts is not None else prompt_for(sender, receiver, row.context, row.prompt)
        if max_pos and len(prompt.ids) + max_new_tokens > max_pos:
            raise DroidspeakError(f"a row of {len(prompt.ids)} tokens exceeds the receiver's context of {max_pos}")
        cap = capture(sender, list(prompt.prefix), e_layers=plan.transition_layers)
        full = full_prefill(receiver, prompt.ids, room=max_new_tokens)
        a_full = answer(full)
        part = partial_prefill(receiver, cap, plan, prompt.suffix, room=max_new_tokens)
        a_plan = answer(part)
        reuse = partial_prefill(receiver, cap, none, prompt.suffix, room=max_new_tokens)
        a_reuse = answer(reuse)
        q = (lambda a: score(metric, a, row.reference or "")) if labelled else (lambda a: agreement(a, a_full))
        per_row.append({
            "context_tokens": len(prompt.prefix),
            "ttft_full_s": full.timings.prefill_s, "ttft_plan_s": part.timings.prefill_s,
            "ttft_full_reuse_s": reuse.timings.prefill_s,
            "quality_full": q(a_full), "quality_plan": q(a_plan), "quality_full_reuse": q(a_reuse),
            "agreement_plan": agreement(a_plan, a_full), "agreement_full_reuse": agreement(a_reuse, a_full),
            "first_token_kl_plan": kl_divergence(full.logits, part.logits),
            "first_token_kl_full_reuse": kl_divergence(full.logits, reuse.logits),
            "answer_full": a_full, "answer_plan": a_plan, "answer_full_reuse": a_reuse,
            "reference": row.reference,
        })
    mean = lambda k: sum(r[k] for r in per_row) / len(per_row)  # noqa: E731
    q_full, q_plan, q_reuse = mean("quality_full"), mean("quality_plan"), mean("quality_full_reuse")
    drop = lambda q: (q_full - q) / q_full if q_full else 0.0  # noqa: E731
    t_full, t_plan, t_reuse = (sum(r[k] for r in per_row) for k in ("ttft_full_s", "ttft_plan_s", "ttft_full_reuse_s"))
    tokens = [r["context_tokens"] for r in per_row]
    return {
        "sender": sender.name, "receiver": receiver.name, "plan": str(plan),
        "recomputed_layers": len(plan.recomputed_layers), "num_layers": receiver.num_layers,
        "metric": metric if labelled else "agreement_f1_vs_full_prefill", "rows": len(per_row),
        "context_tokens": {"min": min(tokens), "max": max(tokens), "mean": round(sum(tokens) / len(tokens))},
        "quality_full": q_full, "quality_plan": q_plan, "quality_full_reuse": q_reuse,
        "relative_drop": drop(q_plan), "relative_drop_full_reuse": drop(q_reuse),
        "agreement_plan": mean("agreement_plan"), "agreement_full_reuse": mean("agreement_full_reuse"),
        "first_token_kl_plan": mean("first_token_kl_plan"), "first_token_kl_full_reuse": mean("first_token_kl_full_reuse"),
        "ttft_speedup": t_full / t_plan, "ttft_speedup_full_reuse": t_full / t_reuse,
        "ttft_full_s_mean": t_full / len(per_row), "ttft_plan_s_mean": t_plan / len(per_row),
        "intervals": _intervals(per_row),
        "per_row": per_row,
    }


def _intervals(per_row: list[dict]) -> dict:
    """95% bootstrap intervals over the rows: each quality, and each drop paired on the same rows."""
    col = lambda k: [r[k] for r in per_row]  # noqa: E731
    out = {k: mean_ci(col(k)).to_dict() for k in ("quality_full", "quality_plan", "quality_full_reuse")}
    for suffix, k in (("", "quality_plan"), ("_full_reuse", "quality_full_reuse")):
        d = relative_drop_ci(col("quality_full"), col(k))
        out["relative_drop" + suffix] = d.to_dict() if d else None  # None: the full prefill scores 0
        out["minus_full" + suffix] = paired_diff_ci(col(k), col("quality_full")).to_dict()
    return out
