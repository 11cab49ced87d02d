"""Receiver TTFT: full prefill vs partial prefill at several context lengths and plan sizes.

Each point is the median of --repeats runs, all measured side by side in one process (order
interleaved), so ratios are meaningful on a shared, noisy machine. The physical limit of a plan is
its recomputed fraction x the full-prefill time: what partial prefill would cost if reusing layers
were free and the suffix took no time. Two more columns say where the rest goes: plan ``none`` is
the request's own tokens over the reused cache (the fixed cost every plan pays), and a one-token
forward is what merely reading every weight once costs on this machine (the floor of that fixed
cost); ``(TTFT - none) / limit`` is how close the recomputation itself comes to its limit.

    .venv/bin/python bench/ttft_partial.py --lengths 1024 2048 4096 --out bench/results/ttft_partial.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402

from droidspeak import RecomputePlan, capture, full_prefill, layout, partial_prefill  # noqa: E402
from droidspeak.harness.reuse import warm_up  # noqa: E402
from droidspeak.models import BASE_NAME, load_model  # noqa: E402
from droidspeak.tasks import generate  # noqa: E402

PLANS = ["none", "12:15", "10:16", "15:24", "8:18", "5:20", "all"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sender", default=BASE_NAME)
    ap.add_argument("--receiver", default="smollm2-qa")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--plans", nargs="+", default=PLANS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/ttft_partial.json")
    args = ap.parse_args()

    sender, receiver = load_model(args.sender), load_model(args.receiver)
    warm_up(sender, receiver)
    results = []
    for n in args.lengths:
        row = generate("qa", "heldout", 1, receiver.tokenizer, seed=n, lengths=(n, n))[0]
        p = layout(receiver.tokenizer, row.context, row.prompt)
        plans = [RecomputePlan.parse(s, receiver.num_layers) for s in args.plans]
        cap = capture(sender, list(p.prefix), e_layers=sorted({l for pl in plans for l in pl.transition_layers}))
        times: dict[str, list[float]] = {"full_prefill": [], "one_token": []} | {str(pl): [] for pl in plans}
        for _ in range(args.repeats):
            times["full_prefill"].append(full_prefill(receiver, p.ids).timings.prefill_s)
            times["one_token"].append(full_prefill(receiver, p.ids[:1], room=1).timings.prefill_s)
            for pl in plans:
                times[str(pl)].append(partial_prefill(receiver, cap, pl, p.suffix).timings.prefill_s)
        full = statistics.median(times["full_prefill"])
        none_s = statistics.median(times["none"]) if "none" in times else None
        entry = {"context_tokens": len(p.prefix), "suffix_tokens": len(p.suffix), "full_prefill_s": full,
                 "one_token_s": statistics.median(times["one_token"]), "none_s": none_s, "plans": []}
        for pl in plans:
            t = statistics.median(times[str(pl)])
            limit = pl.recomputed_fraction * full
            entry["plans"].append({
                "plan": str(pl), "recomputed_layers": len(pl.recomputed_layers), "ttft_s": t,
                "speedup": full / t, "limit_s": limit, "ratio_to_limit": (t / limit) if limit else None,
                "recompute_over_limit": ((t - none_s) / limit) if limit and none_s is not None else None,
                "samples": times[str(pl)],
            })
            print(f"{len(p.prefix):>5} tok  plan {str(pl):<6} {len(pl.recomputed_layers):>2}/30  "
                  f"{t:.3f}s vs full {full:.3f}s = {full / t:5.2f}x" + (f", {t / limit:.2f}x the limit" if limit else ""),
                  flush=True)
        results.append(entry)
    write_result(args.out, provenance(dtype="float32") | {"sender": args.sender, "receiver": args.receiver,
                                                         "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
