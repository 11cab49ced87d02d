"""``make demo``: the compound workflow on the embedded default.

The base model reads one long document once (its prefill is captured: K/V of every layer, E
where plans need it, in an in-process store). Then every shipped variant answers its own request
about that document twice: reusing the base's cache through the pair's recompute plan, and with
its own full prefill. A table shows both answers, both TTFTs and the layers recomputed.
"""

from __future__ import annotations

import argparse
import json
import time

from . import tasks
from .sender import capture
from .decode import greedy, stop_ids
from .metrics import score
from .models import BASE_NAME, load_model, shipped_variants
from .partial import full_prefill
from .plan import RecomputePlan
from .prompt import layout
from .reuse import profile_checker, run_reuse, warm_up
from .errors import DroidspeakError
from .variants import FALLBACK_PLAN, answer_length, default_plan_spec

BASE_REQUEST = "In one sentence, what kinds of records does this document contain?"


def build_document(tokenizer, tokens: int) -> tuple[str, dict[str, tasks.Example]]:
    """One long document with a registry, an order log and (last) a Python file; a request per task."""
    qa = tasks.generate("qa", "heldout", 1, tokenizer, seed=77, lengths=(int(tokens * .3),) * 2)[0]
    tc = tasks.generate("toolcall", "heldout", 1, tokenizer, seed=77, lengths=(int(tokens * .3),) * 2)[0]
    code = tasks.generate("code", "heldout", 1, tokenizer, seed=77, lengths=(int(tokens * .35),) * 2)[0]
    doc = ("Project binder\n\nPart 1. Staff registry\n" + qa.context + "\n\nPart 2. Order log\n" + tc.context
           + "\n\nPart 3. Source file under review\n" + code.context)
    return doc, {"qa": qa, "toolcall": tc, "code": code}


def run_demo(args: argparse.Namespace) -> int:
    t_start = time.time()
    print("loading the base and the shipped variants ...", flush=True)
    base = load_model(BASE_NAME)
    variants = [load_model(v.name) for v in shipped_variants()]
    doc, requests = build_document(base.tokenizer, args.tokens)
    prefix = layout(base.tokenizer, doc, BASE_REQUEST)
    warm_up(base, *variants)

    # 1. the base reads the document once and answers its own request; its caches are kept
    plans = {}
    for v in variants:
        try:
            plans[v.name] = RecomputePlan.parse(default_plan_spec(BASE_NAME, v.name), v.num_layers,
                                                profile_checker(base, v))
        except DroidspeakError as e:  # e.g. the adapter was retrained after its profile was made
            print(f"note: {v.name}: {e}; recomputing every layer instead", flush=True)
            plans[v.name] = RecomputePlan.parse(FALLBACK_PLAN, v.num_layers)
    e_layers = sorted({l for p in plans.values() for l in p.transition_layers})
    t0 = time.perf_counter()
    cap = capture(base, list(prefix.prefix), e_layers=e_layers)
    t_capture = time.perf_counter() - t0
    own = full_prefill(base, prefix.ids)
    base_answer = base.tokenizer.decode(greedy(base.model, own.cache, own.logits, args.max_new_tokens or 48,
                                               stop_ids(base.tokenizer)), skip_special_tokens=True)
    print(f"\nbase {BASE_NAME} read a {len(prefix.prefix)}-token document in {t_capture:.2f}s "
          f"(cache kept: {cap.nbytes() / 2**20:.1f} MiB of K/V for 30 layers + E at layers {e_layers})")
    print(f"base answers '{BASE_REQUEST}'\n  -> {base_answer.strip()!r}\n")

    # 2. every variant answers its own request, reusing the base's cache
    rows = []
    for v in variants:
        ex = requests.get(v.spec.task or "qa")
        p = layout(v.tokenizer, doc, ex.prompt)
        max_new = args.max_new_tokens or answer_length(v.name, 48)
        rep = run_reuse(base, v, p, plans[v.name], max_new, cap=cap)
        metric = tasks.METRIC_OF_TASK.get(v.spec.task or "qa", "f1")
        rows.append({
            "variant": v.name, "request": ex.prompt.splitlines()[0][:70], "reference": ex.reference,
            "answer_shared": rep.answer.strip(), "answer_own": rep.full_answer.strip(),
            "score_shared": score(metric, rep.answer, ex.reference or ""),
            "score_own": score(metric, rep.full_answer, ex.reference or ""), "metric": metric,
            "ttft_shared_s": rep.ttft_s, "ttft_own_s": rep.full_ttft_s, "plan": rep.plan,
            "recomputed": len(rep.recomputed_layers), "first_token_kl": rep.first_token_kl,
        })
    for r in rows:
        print(f"== {r['variant']}  (plan {r['plan']}: {r['recomputed']}/30 layers recomputed)")
        print(f"   request : {r['request']}")
        print(f"   shared  : {r['answer_shared'][:110]!r}   [{r['metric']} {r['score_shared']:.2f}]")
        print(f"   own     : {r['answer_own'][:110]!r}   [{r['metric']} {r['score_own']:.2f}]")
        print(f"   gold    : {str(r['reference'])[:110]!r}")
    print("\nvariant              TTFT shared  TTFT own  speedup  layers recomputed  first-token KL")
    for r in rows:
        print(f"{r['variant']:<20} {r['ttft_shared_s']:>10.3f}s {r['ttft_own_s']:>8.3f}s "
              f"{r['ttft_own_s'] / r['ttft_shared_s']:>7.2f}x  {r['recomputed']:>8}/30 {r['first_token_kl']:>15.4f}")
    print(f"\n(demo wall time {time.time() - t_start:.0f}s; TTFTs measured side by side in this run, "
          f"on this machine's CPU)")
    if getattr(args, "json", False):
        print(json.dumps({"document_tokens": len(prefix.prefix), "rows": rows}, indent=1))
    return 0
