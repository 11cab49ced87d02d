"""``make demo``: a fleet of variants over one document, on the embedded default.

The base model reads one long document once; its prefill goes to an in-process store (K/V of every
layer, E where its peers' plans need it). Then every shipped variant answers its own request about
that document twice: through the store, by the one sharing path the server uses, and with its own
full prefill. Cache-compatible variants (activated adapters, frozen-bottom LoRAs) reuse the base's
cache exactly, proven from their weights; standard LoRAs go through their profiled DroidSpeak
plan. A table shows both answers, both TTFTs, how each shared and whether the answers agree.
"""

from __future__ import annotations

import argparse
import json
import time

from .. import tasks
from ..core.decode import greedy_text
from ..core.prefill import full_prefill
from ..core.prompt import layout
from ..models import BASE_NAME, load_model, shipped_variants
from ..quality import agreement, kl_divergence, score
from ..sharing import ShareOptions, serve_prefill
from ..store import BlockTier, CacheStore
from ..training.variants import answer_length
from .reuse import warm_up

BASE_REQUEST = "In one sentence, what kinds of records does this document contain?"
WAYS = """Three ways two models share a context here:
  same model      an exact prefix hit: every layer reused
  proven exact    a variant built to be cache-compatible with its base (an activated adapter, or a
                  LoRA on the top layers only), recognised from its weights: reused at full-reuse
                  speed (or with only its own top layers recomputed), answers unchanged
  profiled        any other fine-tune: DroidSpeak's plan, recomputing the layers its profile found
                  critical, quality measured offline within a budget"""


def build_document(tokenizer, tokens: int, seed: int = 77) -> tuple[str, dict[str, tasks.Example]]:
    """One long document with a registry, an order log and (last) a Python file; a request per task."""
    qa = tasks.generate("qa", "heldout", 1, tokenizer, seed=seed, lengths=(int(tokens * .3),) * 2)[0]
    tc = tasks.generate("toolcall", "heldout", 1, tokenizer, seed=seed, lengths=(int(tokens * .3),) * 2)[0]
    code = tasks.generate("code", "heldout", 1, tokenizer, seed=seed, lengths=(int(tokens * .35),) * 2)[0]
    doc = ("Project binder\n\nPart 1. Staff registry\n" + qa.context + "\n\nPart 2. Order log\n" + tc.context
           + "\n\nPart 3. Source file under review\n" + code.context)
    return doc, {"qa": qa, "toolcall": tc, "code": code}


def run_demo(args: argparse.Namespace) -> int:
    t_start = time.time()
    print("loading the base and the shipped variants ...", flush=True)
    base = load_model(BASE_NAME)
    variants = [load_model(v.name) for v in shipped_variants() if v.parent == BASE_NAME]
    doc, requests = build_document(base.tokenizer, args.tokens)
    warm_up(base, *variants)
    print(WAYS)

    # 1. the base reads the document once and answers its own request; its caches go to the store
    store = CacheStore(blocks=BlockTier(2 << 30))
    prompt = layout(base.tokenizer, doc, BASE_REQUEST)
    max_base = args.max_new_tokens or 48
    t0 = time.perf_counter()
    own = serve_prefill(base, store, prompt, ShareOptions(room=max_base))
    t_read = time.perf_counter() - t0
    base_answer = greedy_text(base, own, max_base)
    print(f"\nbase {BASE_NAME} read a {len(prompt.prefix)}-token document in {t_read:.2f}s and stored "
          f"{own.info.stored_tokens} tokens of it ({store.blocks.nbytes() / 2**20:.1f} MiB in the in-process tier)")
    print(f"base answers '{BASE_REQUEST}'\n  -> {base_answer.strip()!r}\n")

    # 2. every variant answers its own request: through the store (the server's path), and alone
    rows = []
    for v in variants:
        ex = requests.get(v.spec.task or "qa")
        p = layout(v.tokenizer, doc, ex.prompt)
        max_new = args.max_new_tokens or answer_length(v.name, 48)
        shared = serve_prefill(v, store, p, ShareOptions(policy="profile", store_on_miss=False, room=max_new))
        alone = full_prefill(v, p.ids, room=max_new)
        a_shared, a_own = greedy_text(v, shared, max_new), greedy_text(v, alone, max_new)
        metric = tasks.METRIC_OF_TASK.get(v.spec.task or "qa") or "f1"
        rows.append({
            "variant": v.name, "adapter": v.kind.value, "request": ex.prompt.splitlines()[0][:70],
            "reference": ex.reference, "answer_shared": a_shared.strip(), "answer_own": a_own.strip(),
            "same_answer": a_shared == a_own, "agreement": agreement(a_shared, a_own),
            "score_shared": score(metric, a_shared, ex.reference or ""),
            "score_own": score(metric, a_own, ex.reference or ""), "metric": metric,
            "ttft_shared_s": shared.timings.prefill_s, "ttft_own_s": alone.timings.prefill_s,
            "kind": shared.info.kind.value, "plan": shared.info.plan, "reused_tokens": shared.info.reused_tokens,
            "reason": shared.info.reason, "recomputed": len(shared.recomputed_layers),
            "first_token_kl": kl_divergence(alone.logits, shared.logits),
        })
    for r in rows:
        print(f"== {r['variant']} ({r['adapter']})  {r['kind']}: {r['reused_tokens']} tokens reused, plan {r['plan']}, "
              f"{r['recomputed']}/{base.num_layers} layers recomputed")
        print(f"   request : {r['request']}")
        print(f"   shared  : {r['answer_shared'][:110]!r}   [{r['metric']} {r['score_shared']:.2f}]")
        print(f"   own     : {r['answer_own'][:110]!r}   [{r['metric']} {r['score_own']:.2f}]")
        print(f"   gold    : {str(r['reference'])[:110]!r}")
    print(f"\n{'variant':<24} {'shared as':<18} {'TTFT shared':>11} {'TTFT own':>9} {'speedup':>8} "
          f"{'recomputed':>10} {'same answer':>11} {'first-token KL':>14}")
    for r in sorted(rows, key=lambda r: (r["kind"] != "exact-cross-model", r["variant"])):
        print(f"{r['variant']:<24} {r['kind']:<18} {r['ttft_shared_s']:>10.3f}s {r['ttft_own_s']:>8.3f}s "
              f"{r['ttft_own_s'] / r['ttft_shared_s']:>7.2f}x {r['recomputed']:>7}/{base.num_layers} "
              f"{'yes' if r['same_answer'] else 'no':>11} {r['first_token_kl']:>14.2e}")
    print(f"\n(demo wall time {time.time() - t_start:.0f}s; TTFTs measured side by side in this run, "
          f"on this machine's CPU)")
    if getattr(args, "json", False):
        print(json.dumps({"document_tokens": len(prompt.prefix), "base_answer": base_answer, "rows": rows}, indent=1))
    return 0
