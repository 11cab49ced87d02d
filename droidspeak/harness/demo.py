"""``make demo``: a fleet of variants over shared documents, on the embedded default.

The base model reads each task's document once (a staff registry, an order log, a Python file: one
held-out row per task, at the length where the shipped variants were measured competent, see
BENCHMARKS.md's variants table); its prefill goes to an in-process store (K/V of every layer, E where
its peers' plans need it). Then one shipped variant of each of the task's adapter kinds (see
:func:`demo_variants`) answers the task's request twice:
through the store, by the one sharing path the server uses, and with its own full prefill.
Cache-compatible variants (activated adapters, frozen-bottom LoRAs) reuse the base's cache exactly,
proven from their weights; standard LoRAs go through their profiled DroidSpeak plan. Each answer is
printed with its score against the reference, beside the base's own answer and score; a table shows
both TTFTs, how each shared and whether the answers agree.
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
from ..models.registry import ModelSpec, adapter_meta
from ..quality import agreement, kl_divergence, score
from ..sharing import ShareOptions, serve_prefill
from ..store import BlockTier, CacheStore
from ..training.variants import answer_length, record_of
from .reuse import warm_up

WAYS = """Three ways two models share a context here:
  same model      an exact prefix hit: every layer reused
  proven exact    a variant built to be cache-compatible with its base (an activated adapter, or a
                  LoRA on the top layers only), recognised from its weights: reused at full-reuse
                  speed (or with only its own top layers recomputed), answers unchanged
  profiled        any other fine-tune: DroidSpeak's plan, recomputing the layers its profile found
                  critical, quality measured offline within a budget"""


QUESTIONS = {"qa": 3, "toolcall": 2, "code": 1}  # requests per document (the code task has one per file)


def build_documents(tokenizer, tokens: int, seed: int = 77) -> dict[str, list[tasks.Example]]:
    """Per task, one held-out document of about ``tokens`` context tokens and its requests."""
    return {t: tasks.generate(t, "heldout", 1, tokenizer, seed=seed, lengths=(tokens, tokens), questions=q)
            for t, q in QUESTIONS.items()}


def demo_variants() -> list[ModelSpec]:
    """The shipped SmolLM2 variants, one of each task and adapter kind: the one trained on the most requests
    (steps x requests per context; a tie goes to the first by name). So QA's LoRA is ``smollm2-qa-q16``, the
    one competent at its task, and code's is ``smollm2-code``, the receiver of the profiled path."""
    best: dict[tuple[str | None, str], tuple[int, ModelSpec]] = {}
    for v in shipped_variants():
        meta = adapter_meta(v.path) if v.parent == BASE_NAME else None
        if not meta:
            continue
        t = record_of(meta)
        budget = (t["steps"] or 0) * (t["questions"] or 1)
        key = (v.task, t["adapter"])
        if key not in best or budget > best[key][0]:
            best[key] = (budget, v)
    return [v for _, v in best.values()]


def run_demo(args: argparse.Namespace) -> int:
    t_start = time.time()
    print("loading the base and the shipped variants ...", flush=True)
    base = load_model(BASE_NAME)
    variants = [load_model(v.name) for v in demo_variants()]
    docs = build_documents(base.tokenizer, args.tokens)
    warm_up(base, *variants)
    print(WAYS)
    store = CacheStore(blocks=BlockTier(2 << 30))
    rows, reads = [], []
    for task, exs in docs.items():
        mine = [v for v in variants if (v.spec.task or "qa") == task]
        if not mine:
            continue
        metric = tasks.METRIC_OF_TASK.get(task) or "f1"
        max_new = args.max_new_tokens or answer_length(mine[0].name, 48)
        for ex in exs:
            # 1. the base answers the request: it reads the document once (its caches go to the store), then
            #    each further request about it is a same-model hit
            prompt = layout(base.tokenizer, ex.context, ex.prompt)
            t0 = time.perf_counter()
            own = serve_prefill(base, store, prompt, ShareOptions(room=max_new))
            t_read = time.perf_counter() - t0
            base_answer = greedy_text(base, own, max_new).strip()
            base_score = score(metric, base_answer, ex.reference or "")
            if ex is exs[0]:
                reads.append({"task": task, "document_tokens": len(prompt.prefix), "read_s": t_read,
                              "stored_tokens": own.info.stored_tokens, "requests": len(exs)})
                print(f"\n[{task}] base {BASE_NAME} read a {len(prompt.prefix)}-token document in {t_read:.2f}s and "
                      f"stored {own.info.stored_tokens} tokens of it ({store.blocks.nbytes() / 2**20:.1f} MiB in the "
                      f"in-process tier); {len(exs)} request(s) about it")
            # 2. every variant of the task answers the same request: through the store (the server's path), and alone
            for v in mine:
                p = layout(v.tokenizer, ex.context, ex.prompt)
                shared = serve_prefill(v, store, p, ShareOptions(policy="profile", store_on_miss=False, room=max_new))
                alone = full_prefill(v, p.ids, room=max_new)
                a_shared, a_own = greedy_text(v, shared, max_new), greedy_text(v, alone, max_new)
                rows.append({
                    "task": task, "variant": v.name, "adapter": v.kind.value, "request": ex.prompt.splitlines()[0][:70],
                    "reference": ex.reference, "answer_shared": a_shared.strip(), "answer_own": a_own.strip(),
                    "same_answer": a_shared == a_own, "agreement": agreement(a_shared, a_own),
                    "score_shared": score(metric, a_shared, ex.reference or ""),
                    "score_own": score(metric, a_own, ex.reference or ""), "metric": metric,
                    "answer_base": base_answer, "score_base": base_score,
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
        print(f"   base    : {r['answer_base'][:110]!r}   [{r['metric']} {r['score_base']:.2f}]")
        print(f"   gold    : {str(r['reference'])[:110]!r}")
    w = max([24] + [len(r["variant"]) + 1 for r in rows])  # the names' column
    print(f"\n{'variant':<{w}} {'requests':>8} {'mean score shared':>17} {'own':>6} {'base':>6}")
    for name in dict.fromkeys(r["variant"] for r in rows):
        its = [r for r in rows if r["variant"] == name]
        mean = lambda k: sum(r[k] for r in its) / len(its)  # noqa: E731
        print(f"{name:<{w}} {len(its):>8} {mean('score_shared'):>17.2f} {mean('score_own'):>6.2f} "
              f"{mean('score_base'):>6.2f}   ({its[0]['metric']})")
    print("(one document per task is one draw: BENCHMARKS.md's variants table scores each variant on up to 100 "
          "held-out rows of this length, with intervals)")
    print(f"\n{'variant':<{w}} {'shared as':<18} {'TTFT shared':>11} {'TTFT own':>9} {'speedup':>8} "
          f"{'recomputed':>10} {'same answer':>11} {'first-token KL':>14}")
    for r in sorted(rows, key=lambda r: (r["kind"] != "exact-cross-model", r["variant"])):
        print(f"{r['variant']:<{w}} {r['kind']:<18} {r['ttft_shared_s']:>10.3f}s {r['ttft_own_s']:>8.3f}s "
              f"{r['ttft_own_s'] / r['ttft_shared_s']:>7.2f}x {r['recomputed']:>7}/{base.num_layers} "
              f"{'yes' if r['same_answer'] else 'no':>11} {r['first_token_kl']:>14.2e}")
    print(f"\n(demo wall time {time.time() - t_start:.0f}s; TTFTs measured side by side in this run, "
          f"on this machine's CPU)")
    if getattr(args, "json", False):
        print(json.dumps({"documents": reads, "rows": rows}, indent=1))
    return 0
