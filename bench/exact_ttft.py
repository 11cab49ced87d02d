"""Exact sharing: cache-compatible variants answer over their base's cache, at ~4K context tokens.

For each cache-compatible variant (an activated LoRA: plan ``none``; a LoRA on the top layers:
plan ``K:L``) and held-out rows of its own task, the base prefills the context once (the sender,
not timed: its work was done for its own request), then the variant answers twice, side by side in
one process: with its own full prefill, and over the base's capture with the plan the weights prove
exact. Reported per variant: the TTFT ratio (sum over rows), whether every answer is identical, the
largest first-token KL, and the exactness the contract states.

    .venv/bin/python bench/exact_ttft.py --variants smollm2-qa-alora smollm2-qa-top20 --out bench/results/exact_ttft.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402

from droidspeak import capture, full_prefill, layout, partial_prefill  # noqa: E402
from droidspeak.core.decode import greedy_text  # noqa: E402
from droidspeak.harness.reuse import pair_exactness, warm_up  # noqa: E402
from droidspeak.kinds import ShareKind  # noqa: E402
from droidspeak.models import load_model  # noqa: E402
from droidspeak.quality import kl_divergence  # noqa: E402
from droidspeak.tasks import generate  # noqa: E402
from droidspeak.training.variants import answer_length, recipe_of  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--n", type=int, default=5, help="held-out rows per variant")
    ap.add_argument("--min-tokens", type=int, default=3500)
    ap.add_argument("--max-tokens", type=int, default=4500)
    ap.add_argument("--out", default="bench/results/exact_ttft.json")
    args = ap.parse_args()
    results = []
    for name in args.variants:
        r = recipe_of(name)
        if r is None:
            raise SystemExit(f"{name}: not a shipped variant with a recipe")
        base, v = load_model(r.parent), load_model(name)
        ex = pair_exactness(base, v)
        if not ex.plan:
            raise SystemExit(f"{name}: not exact with {r.parent} ({ex.reason})")
        from droidspeak import RecomputePlan

        plan = RecomputePlan.parse(ex.plan, v.num_layers)
        warm_up(base, v)
        rows = generate(r.task, "heldout", args.n, v.tokenizer, seed=0, lengths=(args.min_tokens, args.max_tokens))
        max_new = answer_length(name, 24)
        per_row = []
        for row in rows:
            p = layout(v.tokenizer, row.context, row.prompt)
            cap = capture(base, list(p.prefix), e_layers=plan.transition_layers)
            own = full_prefill(v, p.ids, room=max_new)
            shared = partial_prefill(v, cap, plan, p.suffix, room=max_new, kind=ShareKind.EXACT)
            a_own, a_shared = greedy_text(v, own, max_new), greedy_text(v, shared, max_new)
            per_row.append({"context_tokens": len(p.prefix), "ttft_own_s": own.timings.prefill_s,
                            "ttft_exact_s": shared.timings.prefill_s, "same_answer": a_own == a_shared,
                            "first_token_kl": kl_divergence(own.logits, shared.logits),
                            "answer": a_shared, "own_answer": a_own})
            print(f"{name} {len(p.prefix)} tok: own {own.timings.prefill_s:.2f}s, exact ({plan}) "
                  f"{shared.timings.prefill_s:.3f}s, same answer {a_own == a_shared}", flush=True)
        t_own = sum(x["ttft_own_s"] for x in per_row)
        t_exact = sum(x["ttft_exact_s"] for x in per_row)
        results.append({"variant": name, "base": r.parent, "task": r.task, "exactness": ex.to_dict(), "plan": str(plan),
                        "rows": len(per_row), "context_tokens": [x["context_tokens"] for x in per_row],
                        "ttft_speedup": t_own / t_exact, "ttft_own_s_mean": t_own / len(per_row),
                        "ttft_exact_s_mean": t_exact / len(per_row),
                        "answer_agreement": sum(x["same_answer"] for x in per_row) / len(per_row),
                        "max_first_token_kl": max(x["first_token_kl"] for x in per_row), "per_row": per_row})
    write_result(args.out, provenance(dtype="float32") | {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
