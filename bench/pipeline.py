"""Pipelined (E-first) vs sequential loading, and the bandwidth-aware plan, at several link speeds.

A sender (the base) stores a ~4K-token context in an in-process store; the receiver fetches through
a throttled connector (``ThrottledBackend``: each read takes len/bandwidth seconds) and runs its
partial prefill in three orders: load every layer's K/V and the E, then compute
(``all-then-compute``); load only what the plan needs, then compute (``reused-then-compute``); E
first, recomputing while the reused K/V stream in (``e-first``). Full prefill (nothing fetched) is
measured beside them. Then, per bandwidth, the bandwidth-aware plan (lowest predicted TTFT among
the profile's plans within budget) is run against always using the profile's cheapest plan.

    .venv/bin/python bench/pipeline.py --out bench/results/pipeline.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402

from droidspeak import RecomputePlan, capture, full_prefill, layout  # noqa: E402
from droidspeak.harness.reuse import warm_up  # noqa: E402
from droidspeak.models import BASE_NAME, load_model  # noqa: E402
from droidspeak.sharing import Profile, ProfileIndex  # noqa: E402
from droidspeak.sharing.from_store import ORDERS, prefill_from_store  # noqa: E402
from droidspeak.store import CacheStore, MemoryBackend, ThrottledBackend  # noqa: E402
from droidspeak.tasks import generate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sender", default=BASE_NAME)
    ap.add_argument("--receiver", default="smollm2-qa")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--bandwidths-mbs", type=float, nargs="+", default=[10, 30, 100, 1000])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--plan", help="plan for the order comparison (default: the profile's chosen plan)")
    ap.add_argument("--profile", help="profile JSON to take plans from (default: the pair's in profiles/)")
    ap.add_argument("--out", default="bench/results/pipeline.json")
    args = ap.parse_args()

    sender, receiver = load_model(args.sender), load_model(args.receiver)
    warm_up(sender, receiver)
    prof = (Profile.load(args.profile) if args.profile
            else ProfileIndex().find(receiver.family.digest, sender.capture_weights.identity, receiver.identity))
    if prof is None:
        print("no profile for this pair in profiles/", file=sys.stderr)
        return 2
    L = receiver.num_layers
    plan = prof.plan(L)
    order_plan = RecomputePlan.parse(args.plan, L) if args.plan else plan
    row = generate("qa", "heldout", 1, receiver.tokenizer, seed=7, lengths=(args.tokens, args.tokens))[0]
    prompt = layout(receiver.tokenizer, row.context, row.prompt)
    inner = MemoryBackend(None)
    e_all = sorted(prof.transition_layers(L) | set(order_plan.transition_layers))
    CacheStore(inner).put(capture(sender, list(prompt.prefix), e_layers=e_all))
    full = statistics.median(full_prefill(receiver, prompt.ids).timings.prefill_s for _ in range(args.repeats))
    results = []
    for mbs in args.bandwidths_mbs:
        bw = mbs * 1e6
        store = CacheStore(ThrottledBackend(inner, bw))
        hit = store.lookup(receiver.family, prompt.prefix)[0]
        entry = {"bandwidth_mb_s": mbs, "full_prefill_s": full, "order_plan": str(order_plan), "orders": {}}
        for order in ORDERS:
            ts = [prefill_from_store(receiver, store, hit, order_plan, prompt, order).timings.prefill_s
                  for _ in range(args.repeats)]
            entry["orders"][order] = statistics.median(ts)
        t_small = statistics.median(prefill_from_store(receiver, store, hit, plan, prompt).timings.prefill_s
                                    for _ in range(args.repeats))
        aware = prof.fastest(L, hit.tokens, bw, hit.e_layers)
        pred = prof.predicted(aware, hit.tokens, bw)
        if aware.groups == ((0, L),):
            t_aware = full  # recomputing everything: a full prefill, nothing fetched
        else:
            t_aware = statistics.median(prefill_from_store(receiver, store, hit, aware, prompt).timings.prefill_s
                                        for _ in range(args.repeats))
        entry.update({"aware_plan": str(aware), "aware_predicted_s": pred, "aware_s": t_aware,
                      "smallest_plan_s": t_small,
                      "smallest_predicted_s": prof.predicted(plan, hit.tokens, bw)})
        print(f"{mbs:>7g} MB/s  full {full:.2f}s  " + "  ".join(f"{o} {t:.2f}s" for o, t in entry["orders"].items())
              + f"  | aware {aware} {t_aware:.2f}s vs smallest {plan} {t_small:.2f}s", flush=True)
        results.append(entry)
    write_result(args.out, provenance() | {"sender": sender.name, "receiver": receiver.name,
                                           "context_tokens": len(prompt.prefix), "profile_plan": str(plan),
                                           "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
