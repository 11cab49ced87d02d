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
    assert not eng.thread.is_alive()


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
