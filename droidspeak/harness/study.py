"""The layer-sensitivity study (the paper's Fig. 7): reuse one sender layer, recompute the rest.

For each layer ``l`` the receiver recomputes every layer but ``l`` (plan ``0:l,l+1:L``) and the
answer is scored. Quality is measured two ways on every row: against the gold reference when the
row has one (the task's metric), and label-free against the receiver's own full-prefill answer
(token F1 agreement and first-token KL). A layer is *critical* when reusing it alone costs more
than 10% of the receiver's quality (relative), as in the paper.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..core.capture import capture
from ..core.decode import greedy, stop_ids
from ..core.plan import RecomputePlan
from ..core.prefill import full_prefill, partial_prefill
from ..core.prompt import layout
from ..models.family import require_compatible
from ..models.loaded import LoadedModel
from ..quality import agreement, kl_divergence, score
from ..sharing.profile import Profile
from ..tasks import Example

CRITICAL_DROP = 0.10
KL_NOISE = 1e-6


def _answer(model: LoadedModel, result, max_new_tokens: int) -> str:
    return model.detokenize(greedy(model, result, max_new_tokens, stop_ids(model.tokenizer)))


@torch.inference_mode()
def sensitivity(sender: LoadedModel, receiver: LoadedModel, rows: list[Example], metric: str | None,
                max_new_tokens: int = 24, progress: bool = True) -> dict[str, Any]:
    """Per-layer quality when only that layer is reused; plus full prefill and full reuse."""
    from tqdm import tqdm

    require_compatible(sender.family, receiver.family, sender.name, receiver.name)
    L = receiver.num_layers
    plans = {"full_reuse": RecomputePlan.none(L)}
    plans.update({str(l): RecomputePlan.from_groups([(0, l), (l + 1, L)], L, drop_empty=True) for l in range(L)})
    labelled = metric is not None and all(r.reference is not None for r in rows)
    acc: dict[str, dict[str, list[float]]] = {k: {"agree": [], "kl": [], "gold": []} for k in plans}
    gold_full: list[float] = []
    t0 = time.time()
    bar = tqdm(total=len(rows) * len(plans), desc="sensitivity", disable=not progress, file=sys.stderr)
    for row in rows:
        prompt = layout(receiver.tokenizer, row.context, row.prompt)
        cap = capture(sender, list(prompt.prefix), e_layers="all")
        full = full_prefill(receiver, prompt.ids, room=max_new_tokens)
        full_answer = _answer(receiver, full, max_new_tokens)
        if labelled:
            gold_full.append(score(metric, full_answer, row.reference))
        for key, plan in plans.items():
            part = partial_prefill(receiver, cap, plan, prompt.suffix, room=max_new_tokens)
            kl = kl_divergence(full.logits, part.logits)
            answer = _answer(receiver, part, max_new_tokens)
            acc[key]["kl"].append(kl)
            acc[key]["agree"].append(agreement(answer, full_answer))
            if labelled:
                acc[key]["gold"].append(score(metric, answer, row.reference))
            bar.update(1)
    bar.close()
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    q_full = mean(gold_full) if labelled else 1.0
    layers = []
    for l in range(L):
        a = acc[str(l)]
        quality = mean(a["gold"]) if labelled else mean(a["agree"])
        drop = (q_full - quality) / q_full if q_full else 0.0
        layers.append({"layer": l, "quality": quality, "agreement_f1": mean(a["agree"]),
                       "first_token_kl": mean(a["kl"]), "relative_drop": drop, "critical": drop > CRITICAL_DROP})
    fr = acc["full_reuse"]
    full_reuse_q = mean(fr["gold"]) if labelled else mean(fr["agree"])
    return {
        "sender": sender.name, "receiver": receiver.name,
        "sender_identity": sender.capture_weights.identity, "receiver_identity": receiver.identity,
        "family": receiver.family.digest, "rows": len(rows),
        "quality_metric": metric if labelled else "agreement_f1_vs_full_prefill",
        "quality_full_prefill": q_full,
        "full_reuse": {"quality": full_reuse_q, "agreement_f1": mean(fr["agree"]), "first_token_kl": mean(fr["kl"]),
                       "relative_drop": (q_full - full_reuse_q) / q_full if q_full else 0.0},
        "layers": layers,
        "sliding_layers": [i for i, k in enumerate(receiver.surface.layer_kinds) if k == "sliding_attention"],
        "critical_layers": [x["layer"] for x in layers if x["critical"]],
        "critical_fraction": sum(x["critical"] for x in layers) / L,
        "wall_s": round(time.time() - t0, 1),
    }


def plot_study(result: dict[str, Any], path: Path) -> None:
    """Two panels: quality per reused layer (gold metric and agreement), and first-token KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [x["layer"] for x in result["layers"]]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 5.6), sharex=True)
    colors = ["tab:red" if x["critical"] else "tab:blue" for x in result["layers"]]
    ax.bar(layers, [x["quality"] for x in result["layers"]], color=colors, alpha=0.8,
           label=f"{result['quality_metric']} (red: critical)")
    if result["quality_metric"] != "agreement_f1_vs_full_prefill":
        ax.plot(layers, [x["agreement_f1"] for x in result["layers"]], "o-", color="tab:green", ms=3, lw=1,
                label="agreement F1 with receiver's full-prefill answer")
    ax.axhline(result["quality_full_prefill"], color="k", ls="--", lw=1, label="receiver full prefill")
    ax.axhline(result["full_reuse"]["quality"], color="tab:gray", ls="-.", lw=1, label="full reuse")
    ax.set_ylabel("quality")
    ax.set_title(f"Layer sensitivity: {result['sender']} -> {result['receiver']} ({result['rows']} rows)")
    ax.legend(fontsize=7, loc="lower left")
    ax2.bar(layers, [x["first_token_kl"] for x in result["layers"]], color="tab:purple")
    ax2.axhline(result["full_reuse"]["first_token_kl"], color="tab:gray", ls="-.", lw=1, label="full reuse")
    ax2.set_ylabel("first-token KL (nats)")
    ax2.set_xlabel("layer reused from the sender (all others recomputed)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, png = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    js.write_text(json.dumps(result, indent=1))
    plot_study(result, png)
    return js, png


def critical_block(result: dict[str, Any], kl_share: float = 0.5) -> str:
    """One contiguous block spanning the critical layers (the paper's rule of thumb).

    Where no layer is critical by the quality metric (too few rows, or a metric too coarse to
    move), the block spans the layers whose reuse alone costs at least ``kl_share`` of the largest
    single-layer first-token KL: the label-free signal of the same study.
    """
    crit = result["critical_layers"]
    if not crit:
        kls = [x["first_token_kl"] for x in result["layers"]]
        top = max(kls)
        if top > KL_NOISE:  # below this the two caches agree to float rounding
            crit = [x["layer"] for x in result["layers"] if x["first_token_kl"] >= kl_share * top]
    if not crit:
        return "none"
    return f"{min(crit)}:{max(crit) + 1}"


def provisional_profile(result: dict[str, Any], study_file: str) -> Profile:
    """A profile whose plan is :func:`critical_block` (until ``droidspeak profile`` writes a real one)."""
    return Profile(result["sender"], result["receiver"], result["sender_identity"], result["receiver_identity"],
                   result["family"], critical_block(result), rows=result["rows"], data={"study": study_file},
                   notes=("critical-layer block from the sensitivity study (provisional, until `droidspeak profile`)",
                          f"quality metric of the study: {result['quality_metric']}"))
