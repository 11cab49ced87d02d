"""Receiver TTFT against context length: droidspeak's paths and the peers a CPU user would pick.

Per context length, all measured side by side in one process (interleaved, median of repeats):

* ``full_prefill``: the receiver's own prefill (droidspeak's path, fp32);
* ``full_reuse``: the sender's whole cache, nothing recomputed;
* ``plan``: the pair's profiled plan (``profiles/SENDER__RECEIVER.json``), with its physical limit
  (recomputed fraction x full prefill);
* ``same_model_hit``: the receiver's own stored prefix (the upper bound of any reuse);
* ``hf_generate``: Hugging Face transformers ``generate(max_new_tokens=1)`` on the same fp32 model;
* ``llamacpp``: llama.cpp (llama-cpp-python) on the same SmolLM2 GGUF (Q4_1), prompt processing
  plus one token, cache reset every time. It runs the base weights: a LoRA variant has the same
  architecture and so the same prefill cost.

    .venv/bin/python bench/ttft_peers.py --lengths 1024 2048 4096 8000 --out bench/results/ttft_peers.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402

from droidspeak import RecomputePlan, capture, full_prefill, layout, partial_prefill  # noqa: E402
from droidspeak.harness.reuse import warm_up  # noqa: E402
from droidspeak.models import BASE_NAME, BASES, load_model  # noqa: E402
from droidspeak.tasks import generate  # noqa: E402
from droidspeak.training.variants import profile_path  # noqa: E402


def _llama(n_ctx: int, threads: int):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    return Llama(model_path=str(BASES[BASE_NAME].locate()), n_ctx=n_ctx, n_threads=threads, n_batch=512, verbose=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sender", default=BASE_NAME)
    ap.add_argument("--receiver", default="smollm2-code")  # the summary's headline pair (bench/run.py HEADLINE)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/ttft_peers.json")
    args = ap.parse_args()

    sender, receiver = load_model(args.sender), load_model(args.receiver)
    prof_file = profile_path(args.sender, args.receiver)
    prof = json.loads(prof_file.read_text())
    L = receiver.num_layers
    plan = RecomputePlan.parse(prof["chosen_plan"], L)
    warm_up(sender, receiver)
    threads = torch.get_num_threads()
    llm = _llama(max(args.lengths) + 256, threads)
    if llm is None:
        print("llama-cpp-python is not installed: llama.cpp column skipped (make bench installs it)", file=sys.stderr)
    results = []
    for n in args.lengths:
        row = generate("qa", "heldout", 1, receiver.tokenizer, seed=n, lengths=(n, n))[0]
        p = layout(receiver.tokenizer, row.context, row.prompt)
        cap = capture(sender, list(p.prefix), e_layers=plan.transition_layers)
        own = capture(receiver, list(p.prefix))
        ids = torch.tensor([p.ids])
        times: dict[str, list[float]] = {k: [] for k in ("full_prefill", "full_reuse", "plan", "same_model_hit",
                                                          "hf_generate", "llamacpp")}
        for _ in range(args.repeats):
            times["full_prefill"].append(full_prefill(receiver, p.ids).timings.prefill_s)
            times["full_reuse"].append(partial_prefill(receiver, cap, RecomputePlan.none(L), p.suffix).timings.prefill_s)
            times["plan"].append(partial_prefill(receiver, cap, plan, p.suffix).timings.prefill_s)
            times["same_model_hit"].append(partial_prefill(receiver, own, RecomputePlan.none(L), p.suffix).timings.prefill_s)
            t0 = time.perf_counter()
            with torch.inference_mode():
                receiver.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                                        pad_token_id=receiver.tokenizer.eos_token_id)
            times["hf_generate"].append(time.perf_counter() - t0)
            if llm is not None:
                llm.reset()
                t0 = time.perf_counter()
                llm.create_completion(p.ids, max_tokens=1, temperature=0.0)
                times["llamacpp"].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items() if v}
        full = med["full_prefill"]
        limit = plan.recomputed_fraction * full
        entry = {"context_tokens": len(p.prefix), "prompt_tokens": len(p.ids), "plan": str(plan),
                 "recomputed_layers": len(plan.recomputed_layers), "limit_s": limit, "ttft_s": med,
                 "speedup_vs_full": {k: full / v for k, v in med.items()},
                 "plan_over_limit": med["plan"] / limit if limit else None,
                 "plan_over_llamacpp": med["plan"] / med["llamacpp"] if "llamacpp" in med else None, "samples": times}
        print(f"{len(p.prefix):>5} tok: " + "  ".join(f"{k} {v:.3f}s" for k, v in med.items())
              + f"  | plan {plan} {full / med['plan']:.2f}x, {entry['plan_over_limit'] or 0:.2f}x limit", flush=True)
        results.append(entry)
    write_result(args.out, provenance(dtype="float32", llamacpp=llm is not None) | {
        "sender": args.sender, "receiver": args.receiver, "plan": str(plan),
        "profile": str(prof_file.relative_to(prof_file.parent.parent)), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
