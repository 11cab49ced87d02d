"""The engine on tiny models: batched decoding equals one-by-one greedy decoding; sharing; queue limits."""

import threading

import pytest
import torch

from droidspeak.core.prompt import PromptTokens
from droidspeak.serving.config import Settings
from droidspeak.serving.engine import Engine, Hosted, ModelHost, QueueFull, Request
from droidspeak.store import CacheStore, MemoryBackend


def _generate(m, ids, n):
    out = m.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.fixture()
def engine(tiny, tiny_recv):
    host = ModelHost.of([Hosted("a", "full", None, tiny), Hosted("b", "full", None, tiny_recv)])
    eng = Engine(host, CacheStore(MemoryBackend(1 << 28)), Settings(max_batch=3, prefill_chunk=24, max_waiting=8))
    eng.start()
    yield eng
    eng.stop()


def _submit(eng, model, ids, n, **kw):
    done = threading.Event()
    r = Request(model, PromptTokens(tuple(ids), ()), n, on_event=lambda k, d: done.set() if k == "done" else None, **kw)
    eng.submit(r)
    return r, done


def test_batched_decode_equals_greedy(engine, tiny, tiny_recv):
    g = torch.Generator().manual_seed(1)
    jobs = []
    for i in range(7):  # more than max_batch, two models, different lengths: joins and leaves mid-flight
        ids = torch.randint(3, 256, (10 + 13 * i,), generator=g).tolist()
        model = "a" if i % 2 == 0 else "b"
        jobs.append((model, ids, 5 + i) + _submit(engine, model, ids, 5 + i))
    for model, ids, n, r, done in jobs:
        assert done.wait(60), "request did not finish"
        want = _generate(tiny if model == "a" else tiny_recv, ids, n)
        assert r.out == want and r.finish_reason == "length"


def test_same_model_prefix_hit_is_exact(engine, tiny):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 256, (70,), generator=g).tolist()
    r1, d1 = _submit(engine, "a", ids, 6)
    assert d1.wait(60) and r1.reuse.kind.value == "miss"
    r2, d2 = _submit(engine, "a", ids + [5, 6, 7], 6)
    assert d2.wait(60) and r2.reuse.kind.value == "same-model" and r2.reuse.reused_tokens == 64
    assert r2.out == _generate(tiny, ids + [5, 6, 7], 6)


def test_cross_model_without_profile_is_a_full_prefill(engine, tiny_recv):
    """No profile binds the tiny pair: the other model's cache is never used."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 256, (70,), generator=g).tolist()
    r1, d1 = _submit(engine, "a", ids, 3)
    assert d1.wait(60)
    r2, d2 = _submit(engine, "b", ids + [9], 6)
    assert d2.wait(60) and r2.reuse.kind.value == "miss"
    assert r2.out == _generate(tiny_recv, ids + [9], 6)


def test_cancel_and_queue_limit(tiny):
    host = ModelHost.of([Hosted("a", "full", None, tiny)])
    eng = Engine(host, None, Settings(max_waiting=2))  # not started: requests stay queued
    ids = list(range(3, 40))
    _submit(eng, "a", ids, 3)
    _submit(eng, "a", ids, 3)
    with pytest.raises(QueueFull):
        _submit(eng, "a", ids, 3)
    eng.start()
    r, done = _submit(eng, "a", ids, 1000)
    eng.cancel(r)
    assert done.wait(60) and r.finish_reason == "abort"
    eng.stop()
    assert not eng.running


def test_sampling_is_seeded(engine):
    ids = list(range(3, 60))
    r1, d1 = _submit(engine, "a", ids, 8, temperature=1.0, seed=7)
    r2, d2 = _submit(engine, "a", ids, 8, temperature=1.0, seed=7)
    assert d1.wait(60) and d2.wait(60) and r1.out == r2.out


def test_a_request_moves_only_forward_and_the_scheduler_moves_it():
    from droidspeak.serving.request import Status
    from droidspeak.serving.scheduler import Scheduler

    r = Request("m", PromptTokens((1, 2, 3), ()), 4)
    with pytest.raises(RuntimeError, match="not a transition"):
        r.move_to(Status.DECODING)  # a queued request has not been prefilled
    sched = Scheduler(max_waiting=4)
    cancelled = Request("m", PromptTokens((1, 2), ()), 4, cancelled=True)
    sched.add(cancelled)
    sched.add(r)
    turn = sched.next_prefill()
    assert turn.request is r and turn.starting and turn.skipped == [cancelled] and r.status == Status.PREFILLING
    assert sched.next_prefill().request is r and not sched.next_prefill().starting  # still its turn
    sched.prefill_ended(r)
    assert r.status == Status.DECODING and [g.pending for g in sched.decode_groups()] == [[r]]
    r.move_to(Status.FINISHED)
    with pytest.raises(RuntimeError):
        r.move_to(Status.DECODING)
    assert sched.take_all_running() == [r] and not sched.busy()


def test_a_base_and_its_adapters_decode_in_one_batch_as_each_alone(tiny):
    """The base, two activated adapters (one request invokes, one does not), a LoRA and a top-layer LoRA
    on one shared module decode in one batch; every greedy answer equals PEFT's own generate of that
    model (its adapter set the PEFT way), and the batch really mixed them."""
    from droidspeak.serving.request import Status
    from droidspeak.testing.tiny import tiny_fleet

    base, fleet = tiny_fleet(tiny, {"al": "alora", "al2": "alora", "plain": "lora", "top": "top"})
    peft = base.model
    host = ModelHost.of([Hosted("base", base.kind, None, base, peft, None, "g")] +
                        [Hosted(n, m.kind, "base", m, peft, n, "g") for n, m in fleet.items()])
    eng = Engine(host, CacheStore(MemoryBackend(1 << 28)), Settings(max_batch=8))
    g = torch.Generator().manual_seed(11)
    ids = lambda n: torch.randint(8, 256, (n,), generator=g).tolist()  # noqa: E731
    asks = [("base", ids(40)), ("al", ids(30) + [5, 6, 7] + ids(4)), ("al2", ids(35)), ("plain", ids(33)),
            ("top", ids(38)), ("al", ids(20) + [5, 6, 7] + ids(9))]
    reqs = [Request(m, PromptTokens(tuple(p), ()), 10, temperature=0.0) for m, p in asks]
    for r in reqs:
        eng.submit(r)
    widest = 0
    while any(r.status != Status.FINISHED for r in reqs):
        eng.step()
        widest = max([widest] + [len(gr.reqs) for gr in eng.scheduler.decode_groups()])
    assert widest >= 4  # several models in one decode step
    for r, (model, prompt) in zip(reqs, asks):
        if model == "base":
            with peft.disable_adapter():
                want = peft.generate(input_ids=torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)
        else:
            peft.set_adapter(model)
            want = peft.generate(input_ids=torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
        assert r.out == want[0, len(prompt):].tolist(), model


def test_layer_runs_on_a_shared_module_apply_their_own_adapter(tiny):
    """Recomputing layers for a plan (the assembler's layer runs, not a whole forward) on a module shared
    by several adapters applies the receiver's own adapter: every layer recomputed equals PEFT's own
    forward of that adapter."""
    from droidspeak import RecomputePlan, capture, partial_prefill
    from droidspeak.testing.tiny import tiny_fleet

    base, fleet = tiny_fleet(tiny, {"al": "alora", "plain": "lora", "top": "top"})
    g = torch.Generator().manual_seed(5)
    ctx, req = torch.randint(8, 256, (48,), generator=g).tolist(), [11, 12, 13]
    cap = capture(base, ctx)
    for name in ("plain", "top"):
        got = partial_prefill(fleet[name], cap, RecomputePlan.all(6), req, assemble_all=True).logits
        base.model.set_adapter(name)
        with torch.inference_mode():
            want = base.model(input_ids=torch.tensor([ctx + req])).logits[0, -1]
        assert torch.max(torch.abs(got - want)) <= 1e-4, name


def test_warm_up_runs_before_serving_through_a_throwaway_store(tiny, tiny_recv):
    """At start each model prefills a throwaway prompt as a miss does, before the loop serves: /health says
    503 "starting" meanwhile and "ok" after; the node's own store holds nothing of it; answers stay exact."""
    from fastapi.testclient import TestClient

    from droidspeak.serving.api import create_app

    host = ModelHost.of([Hosted("a", "full", None, tiny), Hosted("b", "full", None, tiny_recv)])
    store = CacheStore(MemoryBackend(1 << 28))
    eng = Engine(host, store, Settings(warmup_tokens=300, prefill_chunk=64))
    release, calls = threading.Event(), []
    real = eng.runner.warm_up

    def gated(tokens):
        calls.append(tokens)
        assert release.wait(30)
        real(tokens)

    eng.runner.warm_up = gated
    eng.external = True  # the loop runs on a thread of this test, as `serve` runs it on its main thread
    threading.Thread(target=eng.run, daemon=True).start()
    try:
        with TestClient(create_app(eng)) as client:
            while not calls:
                threading.Event().wait(0.01)
            r = client.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "starting"
            release.set()
            while not eng.running:
                threading.Event().wait(0.01)
            assert client.get("/health").json()["status"] == "ok"
            assert calls == [300] and all(t["bytes"] == 0 for t in store.tier_stats())
            g = torch.Generator().manual_seed(5)
            ids = torch.randint(3, 256, (90,), generator=g).tolist()
            r, done = _submit(eng, "b", ids, 6)
            assert done.wait(60) and r.out == _generate(tiny_recv, ids, 6)
    finally:
        release.set()
        eng.stop()


def test_warm_up_prefills_each_group_once_within_the_model_length(tiny, tiny_recv, monkeypatch):
    """The warm-up's prompt is clamped to the model's positions (the tiny models have 1024), once per decode
    group (two full models: two groups)."""
    import droidspeak.sharing.path as path

    seen, orig = [], path.serve_prefill
    monkeypatch.setattr(path, "serve_prefill", lambda m, store, prompt, opts, **kw: seen.append((m.name, len(prompt.ids)))
                        or orig(m, store, prompt, opts, **kw))
    host = ModelHost.of([Hosted("a", "full", None, tiny), Hosted("b", "full", None, tiny_recv)])
    Engine(host, None, Settings(warmup_tokens=5000)).runner.warm_up(5000)
    assert seen == [(tiny.name, 1022), (tiny_recv.name, 1022)]
