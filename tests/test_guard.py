"""The online quality guard on tiny models: an honest pair is never widened; a receiver changed behind
its profile's back (same identity, other weights) is caught by shadow checks and widened; shadow
work never runs while a request waits or prefills; checked prompts feed `profile --from-traffic`."""

import copy
import threading

import pytest
import torch

from droidspeak.core.prompt import PromptTokens
from droidspeak.kinds import ShareKind
from droidspeak.profiling import Profiler, write_profile
from droidspeak.serving.config import Settings
from droidspeak.serving.engine import Engine, Hosted, ModelHost, Request
from droidspeak.serving.traffic import TrafficLog
from droidspeak.store import CacheStore, DiskBackend, MemoryBackend, TieredBackend
from droidspeak.testing.tiny import tiny_variant


def _ids(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 256, (n,), generator=g).tolist()


@pytest.fixture(scope="module")
def late(tiny):
    """A fine-tune that changed layers 3-5 much and layers 0-2 a little: not exact from the weights
    (every layer differs), but a profile finds a cheap plan that keeps its answers."""
    return tiny_variant(tiny_variant(tiny, seed=5, layers=[3, 4, 5]), seed=6, scale=0.001, layers=[0, 1, 2])


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory, tiny, late):
    prompts = [PromptTokens(tuple(_ids(48, 100 + i)), tuple(_ids(5, 200 + i))) for i in range(3)]
    prof = Profiler(tiny, late, prompts, budget=0.01, granularity=1, max_new_tokens=8, progress=False).run()
    assert prof.chosen_plan not in ("all", "none")  # a cheap plan, not exact, within budget
    d = tmp_path_factory.mktemp("profiles")
    write_profile(prof, d / "tiny__late.json", plots=False)
    d.joinpath("chosen").write_text(prof.chosen_plan)
    return d


def _tampered(late):
    """The same identity and summary as ``late`` (so its profile applies), other weights in layers 0-2:
    a receiver retrained behind the profile's back."""
    m = copy.deepcopy(late.model)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".layers." in name and int(name.split(".layers.")[1].split(".")[0]) < 3 and p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.8)
    return late.running(m)


def _engine(tiny, receiver, store, **kw):
    host = ModelHost.of([Hosted("a", tiny.kind, None, tiny), Hosted("b", receiver.kind, None, receiver)])
    s = Settings(policy="profile", shadow_fraction=1.0, shadow_tokens=8, guard_window=4, guard_min_samples=3,
                 guard_tolerance=0.05, prefill_chunk=16, **kw)
    return Engine(host, store, s)


def _ask(eng, model, ids, suffix, n=8):
    done = threading.Event()
    r = Request(model, PromptTokens(tuple(ids), tuple(suffix)), n, on_event=lambda k, d: done.set() if k == "done" else None)
    eng.submit(r)
    assert done.wait(60)
    return r


def _drain(eng):
    import time

    for _ in range(400):  # let the idle engine finish its shadow checks
        if not eng.guard.pending() and eng._shadow is None:
            return
        time.sleep(0.02)


def _round(eng, i):
    ctx = _ids(64, 300 + i)
    _ask(eng, "a", ctx, [11, 12])  # the base prefills and stores
    r = _ask(eng, "b", ctx, _ids(4, 400 + i))  # the variant reuses it through the profile
    _drain(eng)
    return r


def test_honest_pair_is_never_widened(tiny, late, profile_dir, monkeypatch):
    monkeypatch.setenv("DROIDSPEAK_PROFILES", str(profile_dir))
    chosen = (profile_dir / "chosen").read_text()
    eng = _engine(tiny, late, CacheStore(MemoryBackend(1 << 28))).start()
    try:
        for i in range(6):
            r = _round(eng, i)
            assert r.reuse.kind == ShareKind.PROFILED and r.reuse.plan == chosen
        (st,) = eng.guard.pairs.values()
        assert st.checks == 6 and st.live() >= st.verified - 0.05 and not st.widened and str(st.plan) == chosen
    finally:
        eng.stop()


def test_receiver_changed_behind_its_profile_is_widened(tiny, late, profile_dir, monkeypatch, caplog):
    monkeypatch.setenv("DROIDSPEAK_PROFILES", str(profile_dir))
    chosen = (profile_dir / "chosen").read_text()
    eng = _engine(tiny, _tampered(late), CacheStore(MemoryBackend(1 << 28))).start()
    try:
        plans = []
        for i in range(8):
            r = _round(eng, i)
            plans.append((r.reuse.kind, r.reuse.plan, len(r.recomputed_layers)))
        (st,) = eng.guard.pairs.values()
        assert st.widened, list(st.window)
        w = st.widened[0]
        assert w["from"] == chosen and w["live_agreement"] < w["verified"] - 0.05 and w["checks"] >= 3
        assert plans[0][:2] == (ShareKind.PROFILED, chosen)
        # after widening the pair is served by a plan that recomputes more (a full prefill past the frontier)
        assert plans[-1][2] > plans[0][2]
        assert f"plan widened {chosen} ->" in caplog.text
        reg = eng.metrics.registry
        assert reg.get_sample_value("droidspeak:plan_widened_total", {"model_name": "b", "from_model": "a"}) == len(st.widened)
        # while the live agreement stays low it keeps widening, each step recomputing a superset
        for a, b in zip(st.widened, st.widened[1:]):
            assert a["to"] == b["from"]
        assert reg.get_sample_value("droidspeak:shadow_checks_total", {"model_name": "b", "from_model": "a"}) >= 3
    finally:
        eng.stop()


def test_shadow_work_never_runs_while_requests_wait(tiny, late, profile_dir, monkeypatch):
    monkeypatch.setenv("DROIDSPEAK_PROFILES", str(profile_dir))
    eng = _engine(tiny, late, CacheStore(MemoryBackend(1 << 28)))
    seen = []
    real = eng.guard.check_steps

    def spy(job, receiver, chunk):
        for _ in real(job, receiver, chunk):
            seen.append((len(eng.scheduler.waiting), eng.scheduler.prefilling is not None))
            yield
        seen.append((len(eng.scheduler.waiting), eng.scheduler.prefilling is not None))

    eng.guard.check_steps = spy
    eng.start()
    try:
        _round(eng, 0)
        # a burst: shadow checks queue up behind real requests
        done = []
        for i in range(5):
            ctx = _ids(64, 500 + i)
            ev = threading.Event()
            eng.submit(Request("a", PromptTokens(tuple(ctx), (11,)), 4,
                               on_event=lambda k, d, ev=ev: ev.set() if k == "done" else None))
            done.append(ev)
            ev2 = threading.Event()
            eng.submit(Request("b", PromptTokens(tuple(ctx), (12, 13)), 4,
                               on_event=lambda k, d, ev2=ev2: ev2.set() if k == "done" else None))
            done.append(ev2)
        assert all(ev.wait(60) for ev in done)
        _drain(eng)
        assert len(seen) >= 2 and all(w == 0 and not p for w, p in seen), seen
    finally:
        eng.stop()


def test_checked_prompts_are_kept_for_reprofiling(tiny, late, profile_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("DROIDSPEAK_PROFILES", str(profile_dir))
    store = CacheStore(TieredBackend([MemoryBackend(1 << 28), DiskBackend(tmp_path / "disk")]), namespace="prod")
    eng = _engine(tiny, late, store, traffic_per_pair=3).start()
    try:
        asked = [_round(eng, i).prompt for i in range(4)]
    finally:
        eng.stop()
    log = TrafficLog(DiskBackend(tmp_path / "disk"), "prod", per_pair=3)  # the disk tier, as the CLI reads it
    rows = log.rows(tiny.identity, late.identity)
    assert len(rows) == 3 and set(rows) <= set(asked)  # bounded: a ring of the last checks
    assert TrafficLog(DiskBackend(tmp_path / "disk"), "other").rows(tiny.identity, late.identity) == []
    prof = Profiler(tiny, late, rows, budget=0.01, granularity=2, max_new_tokens=6, progress=False).run()
    assert prof.rows == 3
