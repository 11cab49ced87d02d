"""Exact sharing by construction, on tiny models: the contract from the weights, activated adapters
(aLoRA) and frozen-bottom LoRAs reusing their base's context, the per-request activation check,
and the same through the store and the engine."""

import threading

import pytest
import torch

from droidspeak import RecomputePlan, capture, full_prefill, partial_prefill
from droidspeak.core.decode import greedy
from droidspeak.core.prompt import PromptTokens
from droidspeak.kinds import ExactKind, ShareKind
from droidspeak.models.exact import WeightSummary, activation_point, exact_after, exactness
from droidspeak.sharing import ShareOptions, decide, serve_prefill
from droidspeak.store import CacheStore, MemoryBackend
from droidspeak.testing.tiny import tiny_adapter

ATOL = 1e-4
INVOKE = (5, 6, 7)


def _ids(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, 256, (n,), generator=g).tolist()  # 10+: never the invocation tokens


@pytest.fixture(scope="module")
def fleet(tiny):
    return {"alora": tiny_adapter(tiny, "alora", INVOKE, seed=1), "alora2": tiny_adapter(tiny, "alora", INVOKE, seed=2),
            "top": tiny_adapter(tiny, "top", first_layer=3, seed=3), "lora": tiny_adapter(tiny, "lora", seed=4)}


def _generate(model, ids, n):
    """Hugging Face / PEFT generate: PEFT finds an activated adapter's invocation itself."""
    out = model.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


# ------------------------------------------------------------------ the contract, as a pure function
def test_exactness_cases():
    base = WeightSummary("B", "e", ("l0", "l1", "l2", "l3"))
    assert exactness(base, base).kind == ExactKind.IDENTICAL and exactness(base, base).plan == "none"
    alora = WeightSummary("A", "e", ("x0", "x1", "x2", "x3"), context_identity="B", activation=(5, 6))
    ex = exactness(base, alora)
    assert ex.kind == ExactKind.ACTIVATED and ex.plan == "none" and ex.needs_activation_after_context
    top = WeightSummary("T", "e", ("l0", "l1", "y2", "y3"))
    ex = exactness(base, top)
    assert ex.kind == ExactKind.FROZEN_BOTTOM and ex.exact_layers == 2 and ex.plan == "2:4"
    assert exactness(top, base).plan == "2:4"  # symmetric: the base's layers 0-1 are the top variant's too
    other = WeightSummary("O", "e", ("z0", "l1", "l2", "l3"))
    assert exactness(base, other).kind == ExactKind.NONE and exactness(base, other).plan is None
    emb = WeightSummary("E", "e2", ("l0", "l1", "l2", "l3"))
    assert exactness(base, emb).plan is None and "embedding" in exactness(base, emb).reason
    same_layers = WeightSummary("H", "e", ("l0", "l1", "l2", "l3"))  # e.g. another lm_head only
    assert exactness(base, same_layers).plan == "none"
    # an activated adapter of *another* base shares nothing exactly
    assert exactness(WeightSummary("C", "e", ("l0", "l1", "l2", "l3")), alora).plan is None


def test_activation_point_is_the_last_occurrence():
    assert activation_point([1, 5, 6, 7, 9, 5, 6, 7, 2], (5, 6, 7)) == 5
    assert activation_point([1, 5, 6, 9], (5, 6, 7)) is None
    assert activation_point([1, 2, 3], None) is None
    assert exact_after(None, 100) and exact_after(64, 64) and not exact_after(63, 64)


def test_summaries_from_the_weights(tiny, fleet):
    assert fleet["alora"].context_identity == tiny.identity != fleet["alora"].identity
    assert fleet["alora"].activation == INVOKE and fleet["lora"].activation is None
    assert fleet["top"].weights.layers[:3] == tiny.weights.layers[:3] != fleet["top"].weights.layers[3:]
    assert all(a != b for a, b in zip(fleet["lora"].weights.layers, tiny.weights.layers))
    assert exactness(tiny.capture_weights, fleet["alora"].weights).kind == ExactKind.ACTIVATED
    assert exactness(fleet["alora2"].capture_weights, fleet["alora"].weights).kind == ExactKind.ACTIVATED
    assert exactness(tiny.capture_weights, fleet["top"].weights).plan == "3:6"
    assert exactness(tiny.capture_weights, fleet["lora"].weights).plan is None


# ------------------------------------------------------------------ activated adapters
def test_alora_own_prefill_and_decoding_equal_peft_generate(fleet):
    a = fleet["alora"]
    ids = _ids(60, 1) + list(INVOKE) + _ids(6, 2)
    res = full_prefill(a, ids)
    assert greedy(a, res, 10) == _generate(a, ids, 10)
    # and it is not the base: the adapter acts after the invocation
    assert not torch.allclose(res.logits, full_prefill(fleet["alora2"], ids).logits, atol=1e-3)


@pytest.mark.parametrize("producer", ["base", "alora2"])
def test_alora_reuses_its_base_context_exactly(tiny, fleet, producer):
    """The base (or another activated adapter of it) prefills the context; the adapter reuses every
    layer, recomputes nothing, and answers as its own prefill does."""
    a = fleet["alora"]
    ctx, req = _ids(64, 3), list(INVOKE) + _ids(5, 4)
    sender = tiny if producer == "base" else fleet["alora2"]
    cap = capture(sender, ctx)
    assert cap.sender_identity == tiny.identity  # an activated adapter's capture is its base's cache
    part = partial_prefill(a, cap, RecomputePlan.none(6), req, kind=ShareKind.EXACT)
    own = full_prefill(a, ctx + req)
    assert torch.max(torch.abs(part.logits - own.logits)) <= ATOL
    assert greedy(a, part, 10) == greedy(a, own, 10) == _generate(a, ctx + req, 10)


def test_frozen_bottom_plan_is_exact(tiny, fleet):
    top = fleet["top"]
    ctx, req = _ids(64, 5), _ids(5, 6)
    cap = capture(tiny, ctx, e_layers=[3, 4])
    part = partial_prefill(top, cap, RecomputePlan.parse("3:6", 6), req)
    own = full_prefill(top, ctx + req)
    assert torch.max(torch.abs(part.logits - own.logits)) <= ATOL
    cheaper = partial_prefill(top, cap, RecomputePlan.parse("4:6", 6), req)  # one layer short: not exact
    assert torch.max(torch.abs(cheaper.logits - own.logits)) > 1e-3


# ------------------------------------------------------------------ the sharing decision
def _store_with(sender, ctx, hosted=()):
    store = CacheStore(MemoryBackend(1 << 28))
    res = serve_prefill(sender, store, PromptTokens(tuple(ctx), (11, 12)), hosted=hosted)
    assert res.info.kind == ShareKind.MISS and res.info.stored_tokens == 64
    return store


def test_decide_exact_for_activated_and_frozen_bottom(tiny, fleet):
    ctx = _ids(64, 7)
    store = _store_with(tiny, ctx, hosted=[m.weights for m in fleet.values()])
    d = decide(fleet["alora"], store, PromptTokens(tuple(ctx), tuple(INVOKE) + (20, 21)))
    assert d.kind == ShareKind.EXACT and str(d.plan) == "none" and d.hit.tokens == 64
    d = decide(fleet["top"], store, PromptTokens(tuple(ctx), (20, 21)))
    assert d.kind == ShareKind.EXACT and str(d.plan) == "3:6"  # the base stored E at 3 for its frozen-bottom peer
    d = decide(fleet["lora"], store, PromptTokens(tuple(ctx), (20, 21)))
    assert d.kind == ShareKind.MISS  # no profile, not exact: never reused
    d = decide(tiny, store, PromptTokens(tuple(ctx), (20, 21)))
    assert d.kind == ShareKind.SAME_MODEL


def test_activation_inside_the_context_falls_back(tiny, fleet):
    """The adapter's invocation lies inside the stored prefix (and nowhere after): its own cache of the
    context differs from the base's there, so the base's cache is not used."""
    a = fleet["alora"]
    ctx = _ids(30, 8) + list(INVOKE) + _ids(31, 9)  # invocation at 30, inside the 64 stored tokens
    store = _store_with(tiny, ctx)
    prompt = PromptTokens(tuple(ctx), (20, 21, 22))
    assert activation_point(prompt.ids, a.activation) == 30
    d = decide(a, store, prompt)
    assert d.kind == ShareKind.MISS and d.hit is None
    res = serve_prefill(a, store, prompt, ShareOptions(store_on_miss=False))
    own = full_prefill(a, prompt.ids)
    assert res.info.kind == ShareKind.MISS and torch.max(torch.abs(res.logits - own.logits)) <= ATOL
    assert greedy(a, res, 8) == _generate(a, prompt.ids, 8)
    # with the invocation after the context again, the same store entry is an exact hit
    ok = PromptTokens(tuple(ctx), tuple(INVOKE) + (20, 21))
    assert decide(a, store, ok).kind == ShareKind.EXACT


def test_alora_miss_stores_only_what_precedes_its_activation(tiny, fleet):
    a = fleet["alora"]
    ctx = _ids(80, 10)
    store = CacheStore(MemoryBackend(1 << 28))
    prompt = PromptTokens(tuple(ctx), tuple(INVOKE) + tuple(_ids(40, 11)))  # activation at 80
    res = serve_prefill(a, store, prompt)
    assert res.info.kind == ShareKind.MISS and res.info.stored_tokens == 80  # not past the activation point
    assert [h.sender for h in store.lookup(tiny.family, prompt.ids)] == [tiny.identity]  # stored as the base's
    # the base finds it as its own, the other activated adapter as exact
    assert decide(tiny, store, PromptTokens(tuple(ctx), (30, 31))).kind == ShareKind.SAME_MODEL
    other = decide(fleet["alora2"], store, PromptTokens(tuple(ctx), tuple(INVOKE) + (30,)))
    assert other.kind == ShareKind.EXACT


# ------------------------------------------------------------------ the engine
def test_engine_serves_the_fleet_from_one_prefill(tiny, fleet):
    from droidspeak.serving.config import Settings
    from droidspeak.serving.engine import Engine, Hosted, ModelHost, Request

    host = ModelHost.of([Hosted("base", tiny.kind, None, tiny),
                         Hosted("alora", fleet["alora"].kind, "base", fleet["alora"]),
                         Hosted("alora2", fleet["alora2"].kind, "base", fleet["alora2"]),
                         Hosted("top", fleet["top"].kind, "base", fleet["top"])])
    eng = Engine(host, CacheStore(MemoryBackend(1 << 28)), Settings(max_batch=4, prefill_chunk=32)).start()
    try:
        ctx = _ids(96, 12)

        def run(model, suffix, n=8):
            done = threading.Event()
            r = Request(model, PromptTokens(tuple(ctx), tuple(suffix)), n,
                        on_event=lambda k, d: done.set() if k == "done" else None)
            eng.submit(r)
            assert done.wait(60)
            return r

        first = run("base", [40, 41])
        assert first.reuse.kind == ShareKind.MISS
        for name in ("alora", "alora2"):
            suffix = list(INVOKE) + _ids(4, 13)
            r = run(name, suffix)
            assert r.reuse.kind == ShareKind.EXACT and r.cached_tokens == 96 and r.recomputed_layers == []
            assert r.out == _generate(fleet[name], ctx + suffix, 8)
        r = run("top", [50, 51])
        assert r.reuse.kind == ShareKind.EXACT and r.reuse.plan == "3:6"
        assert r.out == _generate(fleet["top"], ctx + [50, 51], 8)
        text = eng.metrics.registry.get_sample_value(
            "droidspeak:prefix_cache_hits_total", {"model_name": "alora", "kind": "exact_cross_model"})
        assert text == 96
    finally:
        eng.stop()


def test_a_stored_prefix_past_the_activation_point_is_cut_back_to_it(tiny, fleet):
    """The base stored its whole prompt, request tokens included; the adapter's prompt shares them up to
    (and past) its invocation: only what precedes its activation point is reused, exactly: the blocks before
    it, and the context's partial last block where it ends there (the in-process tier keeps it), else not."""
    a = fleet["alora"]
    ctx, common = _ids(70, 14), list(INVOKE) + _ids(12, 15)  # both requests start alike
    store = CacheStore(MemoryBackend(1 << 28))
    serve_prefill(tiny, store, PromptTokens(tuple(ctx), tuple(common + _ids(20, 16))))  # the base stores 96 tokens
    prompt = PromptTokens(tuple(ctx), tuple(common + _ids(6, 17)))  # activation at 70; 85 tokens shared with it
    assert store.lookup(tiny.family, prompt.ids[:-1])[0].tokens == 80  # the stored prefix runs past 70
    d = decide(a, store, prompt)
    assert d.kind == ShareKind.EXACT and d.hit.tokens == 64  # the last block boundary before 70
    res = serve_prefill(a, store, prompt, ShareOptions(store_on_miss=False))
    assert res.info.kind == ShareKind.EXACT and res.info.reused_tokens == 64
    assert torch.max(torch.abs(res.logits - full_prefill(a, prompt.ids).logits)) <= ATOL
    from droidspeak.store import open_store

    store = open_store("memory")  # the in-process tier: the context's last 6 tokens too, up to the activation point
    serve_prefill(tiny, store, PromptTokens(tuple(ctx), tuple(common + _ids(20, 16))))
    assert store.lookup(tiny.family, prompt.ids[:-1])[0].tokens == 80
    res = serve_prefill(a, store, prompt, ShareOptions(store_on_miss=False))
    assert res.info.kind == ShareKind.EXACT and res.info.reused_tokens == 70
    assert torch.max(torch.abs(res.logits - full_prefill(a, prompt.ids).logits)) <= ATOL
    other = PromptTokens(tuple(ctx[:-1] + [ctx[-1] % 200 + 11]), tuple(common + _ids(6, 17)))  # its last token differs
    res = serve_prefill(a, store, other, ShareOptions(store_on_miss=False))
    assert res.info.kind == ShareKind.EXACT and res.info.reused_tokens == 64  # no stored partial block begins it
    assert torch.max(torch.abs(res.logits - full_prefill(a, other.ids).logits)) <= ATOL


def test_an_exact_hit_extends_the_stored_prefix(tiny, fleet):
    """A conversation's next turn: an activated adapter reuses the base's context and, computing its own
    turn before its invocation with the base's very weights, stores that turn for whoever comes next
    (another activated adapter, a frozen-bottom peer with its E), each answering as its own prefill."""
    from droidspeak.sharing import ShareOptions
    from droidspeak.store import open_store

    store = open_store("memory")
    peers = [m.weights for m in fleet.values()]
    ctx, turn = _ids(48, 21), _ids(40, 22)
    serve_prefill(tiny, store, PromptTokens(tuple(ctx), (11, 12)), hosted=peers)
    first = PromptTokens(tuple(ctx), tuple(turn) + INVOKE + (20, 21))
    r1 = serve_prefill(fleet["alora"], store, first, ShareOptions(store_on_miss=False), hosted=peers)
    assert r1.info.kind == ShareKind.EXACT and r1.info.reused_tokens == 48
    nxt = PromptTokens(tuple(ctx + turn) + INVOKE + (20, 21) + tuple(_ids(10, 23)), INVOKE + (30, 31))
    r2 = serve_prefill(fleet["alora2"], store, nxt, ShareOptions(store_on_miss=False), hosted=peers)
    assert r2.info.kind == ShareKind.EXACT and r2.info.reused_tokens == 80  # the context and the first turn
    assert torch.max(torch.abs(r2.logits - full_prefill(fleet["alora2"], nxt.ids).logits)) <= ATOL
    top = PromptTokens(tuple(ctx + turn), (40, 41))
    r3 = serve_prefill(fleet["top"], store, top, ShareOptions(store_on_miss=False), hosted=peers)
    assert r3.info.kind == ShareKind.EXACT and r3.info.reused_tokens == 80 and r3.info.plan == "3:6"
    assert torch.max(torch.abs(r3.logits - full_prefill(fleet["top"], top.ids).logits)) <= ATOL


def test_a_context_ending_inside_a_block_is_reused_to_its_last_token(tiny, fleet):
    """The in-process tier keeps a context's partial last block: the next request on the same context (the base's
    own next question, an activated adapter's) reuses every token of it and answers as its own prefill; a context
    that differs only in those last tokens reuses the whole blocks alone. An activated adapter's own turn before
    its invocation extends the stored context from inside that block (its E included, which a frozen-bottom
    peer's plan reads)."""
    from droidspeak.store import open_store

    store = open_store("memory")
    peers = [m.weights for m in fleet.values()]
    ctx, turn = _ids(70, 31), _ids(20, 32)  # the context: 4 whole blocks and 6 tokens
    r0 = serve_prefill(tiny, store, PromptTokens(tuple(ctx), (11, 12, 13)), hosted=peers)
    assert r0.info.kind == ShareKind.MISS and r0.info.stored_tokens == 70
    asked = [(tiny, PromptTokens(tuple(ctx), (21, 22)), ShareKind.SAME_MODEL, 70),
             (fleet["alora"], PromptTokens(tuple(ctx), INVOKE + (20, 21)), ShareKind.EXACT, 70),
             (tiny, PromptTokens(tuple(ctx[:-1] + [ctx[-1] % 200 + 11]), (21, 22)), ShareKind.SAME_MODEL, 64),
             (fleet["alora2"], PromptTokens(tuple(ctx), tuple(turn) + INVOKE + (20, 21)), ShareKind.EXACT, 70),
             (fleet["top"], PromptTokens(tuple(ctx + turn), (40, 41)), ShareKind.EXACT, 80)]  # what alora2 stored
    for model, prompt, kind, reused in asked:
        r = serve_prefill(model, store, prompt, ShareOptions(store_on_miss=False), hosted=peers)
        assert r.info.kind == kind and r.info.reused_tokens == reused
        assert torch.max(torch.abs(r.logits - full_prefill(model, prompt.ids).logits)) <= ATOL
        assert greedy(model, r, 6) == greedy(model, full_prefill(model, prompt.ids), 6)
