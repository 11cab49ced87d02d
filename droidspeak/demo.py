"""``make demo``: the compound workflow on the embedded default.

The base model reads one long document once; its prefill goes to an in-process store (K/V of
every layer, E where its pairs' plans need it). Then every shipped variant answers its own
request about that document twice: through the store (the longest stored prefix, the pair's
profiled plan, refused if the profile does not match the weights), and with its own full prefill.
A table shows both answers, both TTFTs and the layers recomputed.
"""

from __future__ import annotations

import argparse
import json
import time

from . import tasks
from .decode import greedy, stop_ids
from .metrics import kl_divergence, score
from .models import BASE_NAME, load_model, shipped_variants
from .partial import full_prefill
from .prompt import layout
from .reuse import warm_up
from .sharing import serve_prefill
from .store import CacheStore, MemoryBackend
from .variants import answer_length

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

    # 1. the base reads the document once and answers its own request; its caches go to the store
    store = CacheStore(MemoryBackend(2 << 30))
    t0 = time.perf_counter()
    own = serve_prefill(base, store, prefix)  # a miss: prefilled once, K/V + the E its pairs need stored
    t_capture = time.perf_counter() - t0
    stops = stop_ids(base.tokenizer)
    base_answer = base.tokenizer.decode(greedy(base.model, own.cache, own.logits, args.max_new_tokens or 48, stops),
                                        skip_special_tokens=True)
    print(f"\nbase {BASE_NAME} read a {len(prefix.prefix)}-token document in {t_capture:.2f}s and stored "
          f"{own.info.get('stored_tokens', 0)} tokens of it ({store.backend.nbytes() / 2**20:.1f} MiB in the in-process store)")
    print(f"base answers '{BASE_REQUEST}'\n  -> {base_answer.strip()!r}\n")

    # 2. every variant answers its own request, reusing the base's cache through its profile
    rows = []
    for v in variants:
        ex = requests.get(v.spec.task or "qa")
        p = layout(v.tokenizer, doc, ex.prompt)
        max_new = args.max_new_tokens or answer_length(v.name, 48)
        shared = serve_prefill(v, store, p, store_on_miss=False, policy="profile")
        full = full_prefill(v, p.ids)
        vstops = stop_ids(v.tokenizer)
        dec = lambda res: v.tokenizer.decode(greedy(v.model, res.cache, res.logits, max_new, vstops),  # noqa: E731
                                             skip_special_tokens=True)
        a_shared, a_own = dec(shared), dec(full)
        metric = tasks.METRIC_OF_TASK.get(v.spec.task or "qa") or "f1"
        rows.append({
            "variant": v.name, "request": ex.prompt.splitlines()[0][:70], "reference": ex.reference,
            "answer_shared": a_shared.strip(), "answer_own": a_own.strip(),
            "score_shared": score(metric, a_shared, ex.reference or ""),
            "score_own": score(metric, a_own, ex.reference or ""), "metric": metric,
            "ttft_shared_s": shared.timings["prefill_s"], "ttft_own_s": full.timings["prefill_s"],
            "plan": shared.info.get("plan"), "kind": shared.info.get("kind"), "reused_tokens": shared.info.get("reused_tokens"),
            "recomputed": len(shared.recomputed_layers), "first_token_kl": kl_divergence(full.logits, shared.logits),
        })
    for r in rows:
        print(f"== {r['variant']}  ({r['kind']}: {r['reused_tokens']} tokens reused, plan {r['plan']}, "
              f"{r['recomputed']}/30 layers recomputed)")
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
