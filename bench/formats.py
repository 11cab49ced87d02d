"""Quality effect of the store's transfer formats (native fp32, fp16, bf16, int8) on the receiver.

The base stores calibration contexts in each format; the receiver answers through the store with
its profiled plan; first-token KL and answer agreement are taken against the same plan over
native fp32 entries, and bytes per token are reported.

    .venv/bin/python bench/formats.py --out bench/results/formats.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402

from droidspeak import RecomputePlan, capture, layout  # noqa: E402
from droidspeak.core.decode import greedy_text  # noqa: E402
from droidspeak.models import BASE_NAME, load_model  # noqa: E402
from droidspeak.quality import agreement, kl_divergence  # noqa: E402
from droidspeak.sharing import ProfileIndex  # noqa: E402
from droidspeak.sharing.from_store import prefill_from_store  # noqa: E402
from droidspeak.store import FORMATS, CacheStore, MemoryBackend  # noqa: E402
from droidspeak.tasks import generate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sender", default=BASE_NAME)
    ap.add_argument("--receiver", default="smollm2-qa")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--out", default="bench/results/formats.json")
    args = ap.parse_args()
    sender, receiver = load_model(args.sender), load_model(args.receiver)
    prof = ProfileIndex().find(receiver.family.digest, sender.capture_weights.identity, receiver.identity)
    plan = prof.plan(receiver.num_layers) if prof else RecomputePlan.none(receiver.num_layers)
    rows = generate(receiver.spec.task or "qa", "calib", args.n, receiver.tokenizer, seed=11, lengths=(1500, 2500))
    acc = {f: {"kl": [], "agree": [], "bytes_per_token": []} for f in FORMATS}
    for row in rows:
        prompt = layout(receiver.tokenizer, row.context, row.prompt)
        cap = capture(sender, list(prompt.prefix), e_layers=plan.transition_layers)
        ref = None
        for fmt in FORMATS:
            backend = MemoryBackend(None)
            store = CacheStore(backend, fmt=fmt)
            store.put(cap)
            hit = store.lookup(receiver.family, prompt.prefix)[0]
            res = prefill_from_store(receiver, store, hit, plan, prompt)
            ans = greedy_text(receiver, res, 16)
            if ref is None:
                ref = (res.logits, ans)
            acc[fmt]["kl"].append(kl_divergence(ref[0], res.logits))
            acc[fmt]["agree"].append(agreement(ans, ref[1]))
            acc[fmt]["bytes_per_token"].append(backend.nbytes() / hit.tokens)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = provenance() | {"sender": sender.name, "receiver": receiver.name, "plan": str(plan), "rows": len(rows),
                          "formats": {f: {k: mean(v) for k, v in d.items()} for f, d in acc.items()}}
    for f, d in out["formats"].items():
        print(f"{f:>6}: {d['bytes_per_token']:.0f} B/token, first-token KL vs native {d['kl']:.2e}, "
              f"answer agreement {d['agree']:.3f}")
    write_result(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
