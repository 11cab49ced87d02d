"""The KV/E store: codec, backends and budgets, lookup, streamed partial prefill, faults (tiny model)."""

import errno

import pytest
import torch

from droidspeak import RecomputePlan, capture, full_prefill, partial_prefill
from droidspeak.core.prompt import PromptTokens
from droidspeak.kinds import TensorKind
from droidspeak.sharing.from_store import ORDERS, prefill_from_store
from droidspeak.store import (
    CacheStore,
    CorruptEntry,
    DiskBackend,
    MemoryBackend,
    RedisBackend,
    TieredBackend,
    chain_hashes,
    decode,
    encode,
    open_backend,
)

ATOL = 1e-4


@pytest.fixture()
def prompt(tiny_ids):
    return PromptTokens(tuple(tiny_ids), (11, 12, 13, 14, 15))


def _stored(sender, prompt, backend=None, e_layers="all", **kw):
    store = CacheStore(backend or MemoryBackend(1 << 30), **kw)
    cap = capture(sender, list(prompt.prefix), e_layers=e_layers)
    assert store.put(cap) == len(prompt.prefix) // store.block * store.block
    return store


# ------------------------------------------------------------------ codec
@pytest.mark.parametrize("fmt,tol", [("native", 0.0), ("fp16", 1e-2), ("bf16", 5e-2), ("int8", 5e-2)])
def test_codec_round_trip(fmt, tol):
    t = torch.randn(1, 3, 40, 8)
    out = decode(encode("k1", {"k": t, "v": 2 * t}, fmt), "k1")
    assert out["k"].dtype == torch.float32 and out["k"].shape == t.shape
    assert torch.max(torch.abs(out["v"] - 2 * t)) <= tol * 2 * t.abs().max() + 1e-7


def test_codec_refuses_bad_values():
    data = encode("key-a", {"e": torch.randn(1, 4, 8)})
    with pytest.raises(CorruptEntry, match="another key"):
        decode(data, "key-b")
    with pytest.raises(CorruptEntry):
        decode(data[: len(data) // 2], "key-a")  # truncated
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    with pytest.raises(CorruptEntry, match="checksum"):
        decode(bytes(flipped), "key-a")
    with pytest.raises(CorruptEntry):
        decode(b"\x05", "key-a")
    import pickle

    with pytest.raises(CorruptEntry):  # a pickle is never loaded
        decode(pickle.dumps({"e": 1}), "key-a")


# ------------------------------------------------------------------ backends
def test_memory_lru_keeps_budget():
    m = MemoryBackend(budget_bytes=1000)
    for i in range(10):
        assert m.put(f"k{i}", bytes(300))
        assert m.nbytes() <= 1000
    assert m.get("k0") is None and m.get("k9") is not None and m.evictions >= 7
    assert not m.put("huge", bytes(2000)) and m.nbytes() <= 1000


def test_disk_budget_atomic_and_restart(tmp_path):
    d = DiskBackend(tmp_path, budget_bytes=1000)
    for i in range(6):
        assert d.put(f"k{i}", bytes([i]) * 300)
    assert d.nbytes() <= 1000 and d.get("k5") == bytes([5]) * 300
    (tmp_path / "ab").mkdir(exist_ok=True)
    (tmp_path / "ab" / "x.st.tmp123").write_bytes(b"partial")  # a crash mid-write
    d2 = DiskBackend(tmp_path, budget_bytes=1000)
    assert d2.nbytes() == d.nbytes() and not list(tmp_path.glob("*/*.tmp*")) and d2.get("k5") is not None


def test_disk_full_is_a_failed_put_not_a_crash(tmp_path, monkeypatch):
    d = DiskBackend(tmp_path, budget_bytes=None)
    assert d.put("old", b"kept")
    import builtins

    real_open = builtins.open

    def full(path, mode="r", *a, **k):
        if "w" in mode and ".tmp" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full)
    assert d.put("new", b"x" * 100) is False and d.errors == 1
    monkeypatch.setattr(builtins, "open", real_open)
    assert d.get("old") == b"kept" and d.get("new") is None and not list(tmp_path.glob("*/*.tmp*"))


def test_tiered_promotes(tmp_path):
    mem, disk = MemoryBackend(1 << 20), DiskBackend(tmp_path)
    t = TieredBackend([mem, disk])
    disk.put("k", b"v")
    assert mem.get("k") is None and t.get("k") == b"v" and mem.get("k") == b"v"
    assert open_backend(f"memory:1MB,disk:{tmp_path}").tiers[0].budget == 1 << 20


# ------------------------------------------------------------------ keys and lookup
def test_chain_hashes_are_prefix_stable():
    a, b = chain_hashes(list(range(64))), chain_hashes(list(range(40)) + [999] * 24)
    assert len(a) == 4 and a[:2] == b[:2] and a[2] != b[2]
    assert chain_hashes(list(range(15))) == []


def test_lookup_longest_prefix_per_sender(tiny, tiny_recv, prompt):
    store = _stored(tiny, prompt)
    hits = store.lookup(tiny.family, prompt.prefix)
    assert [(h.sender, h.tokens) for h in hits] == [(tiny.identity, 64)]
    other = PromptTokens(prompt.prefix[:40] + (7,) * 30, ())
    assert store.lookup(tiny.family, other.prefix)[0].tokens == 32  # shares 2 full blocks
    assert store.lookup(tiny.family, (9,) * 64) == []


# ------------------------------------------------------------------ streamed partial prefill
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("plan", ["all", "2:4", "1:3,4:6", "none"])
def test_store_path_equals_in_process_path(tiny, tiny_recv, prompt, order, plan):
    store = _stored(tiny, prompt)
    hit = store.lookup(tiny.family, prompt.prefix)[0]
    p = RecomputePlan.parse(plan, 6)
    got = prefill_from_store(tiny_recv, store, hit, p, prompt, order)
    cap = capture(tiny, list(prompt.prefix), e_layers=p.transition_layers)
    want = partial_prefill(tiny_recv, cap, p, prompt.suffix)
    assert torch.max(torch.abs(got.logits - want.logits)) <= ATOL and not got.info.missing


def test_same_model_hit_equals_full_prefill(tiny, prompt):
    store = _stored(tiny, prompt, e_layers=())
    hit = store.lookup(tiny.family, prompt.prefix)[0]
    got = prefill_from_store(tiny, store, hit, RecomputePlan.none(6), prompt)
    assert torch.max(torch.abs(got.logits - full_prefill(tiny, prompt.ids).logits)) <= ATOL


def test_partial_hit_runs_the_rest_of_the_prefix(tiny, prompt):
    store = _stored(tiny, prompt, e_layers=())
    longer = PromptTokens(prompt.prefix + (21, 22, 23), prompt.suffix)  # 67 tokens: 64 stored
    hit = store.lookup(tiny.family, longer.prefix)[0]
    got = prefill_from_store(tiny, store, hit, RecomputePlan.none(6), longer)
    assert hit.tokens == 64 and torch.max(torch.abs(got.logits - full_prefill(tiny, longer.ids).logits)) <= ATOL


@pytest.mark.parametrize("chunk", [None, 24])
def test_a_miss_stores_what_a_capture_would(tiny, tiny_recv, prompt, chunk, monkeypatch):
    """A miss prefills the whole prompt on its own cache, in chunks whose last one straddles the end of the
    stored part (64 of 69 tokens), answers as a full prefill, and stores the first 64 tokens' K/V and E: a
    profiled hit from them equals one from a capture of those tokens."""
    import droidspeak.sharing.path as path
    from droidspeak.kinds import ShareKind
    from droidspeak.sharing.options import ShareOptions

    monkeypatch.setattr(path, "needed_e_layers", lambda *a, **k: list(range(6)))  # as if a peer needed every E
    store = CacheStore(MemoryBackend(1 << 30))
    res = path.serve_prefill(tiny, store, prompt, ShareOptions(chunk=chunk))
    assert res.info.kind == ShareKind.MISS and res.info.stored_tokens == 64
    assert torch.max(torch.abs(res.logits - full_prefill(tiny, prompt.ids).logits)) <= ATOL
    hit = store.lookup(tiny.family, prompt.prefix)[0]
    for plan in ("2:4", "1:3,4:6"):
        p = RecomputePlan.parse(plan, 6)
        got = prefill_from_store(tiny_recv, store, hit, p, prompt)
        want = partial_prefill(tiny_recv, capture(tiny, list(prompt.prefix), e_layers=p.transition_layers), p,
                               prompt.suffix)
        assert torch.max(torch.abs(got.logits - want.logits)) <= ATOL and not got.info.missing, plan


def _damage(store, tiny, hit, kind, layer, how):
    key = store.keys.entry(tiny.family.digest, hit.sender, hit.chain, layer, TensorKind(kind))
    raw = store.backend.get(key)
    if how == "missing":
        store.backend.delete(key)
    elif how == "corrupt":
        b = bytearray(raw)
        b[-5] ^= 0x55
        store.backend.put(key, bytes(b))
    elif how == "truncated":
        store.backend.put(key, raw[: len(raw) // 3])
    elif how == "foreign":  # a valid entry of another key (another family/sender/layer) planted here
        other = store.keys.entry("f" * 16, hit.sender, hit.chain, layer, TensorKind(kind))
        store.backend.put(key, encode(other, decode(raw, key)))
    elif how == "wrong-shape":
        t = decode(raw, key)
        store.backend.put(key, encode(key, {n: x[..., :4] for n, x in t.items()}))


@pytest.mark.parametrize("how", ["missing", "corrupt", "truncated", "foreign", "wrong-shape"])
@pytest.mark.parametrize("kind,layer,fallback_plan", [("kv", 4, "0:5"), ("e", 2, "0:4")])
def test_faulty_entry_is_recomputed_never_used(tiny, tiny_recv, prompt, how, kind, layer, fallback_plan):
    store = _stored(tiny, prompt)
    hit = store.lookup(tiny.family, prompt.prefix)[0]
    plan = RecomputePlan.parse("2:4", 6)
    _damage(store, tiny, hit, kind, layer, how)
    got = prefill_from_store(tiny_recv, store, hit, plan, prompt)
    assert list(got.info.missing) == [f"{kind}[{layer}]"]
    # exactly the plan widened to recompute from the bottom past the bad layer
    cap = capture(tiny, list(prompt.prefix), e_layers=[])
    want = partial_prefill(tiny_recv, cap, RecomputePlan.parse(fallback_plan, 6), prompt.suffix)
    assert torch.max(torch.abs(got.logits - want.logits)) <= ATOL
    assert store.stats.counts["missing"] + store.stats.counts["corrupt"] >= 1


# ------------------------------------------------------------------ redis
def test_redis_backend_budget_and_namespaces(redis_server):
    a = RedisBackend(redis_server.url, namespace="dep-a", budget_bytes=2000)
    b = RedisBackend(redis_server.url, namespace="dep-b", budget_bytes=2000)
    for i in range(8):
        assert a.put(f"ds1:dep-a:k{i}", bytes(500))
        assert a.nbytes() <= 2000
    assert a.get("ds1:dep-a:k7") is not None and a.get("ds1:dep-a:k0") is None
    assert b.nbytes() == 0 and a.get_many(["ds1:dep-a:k7", "nope"])[1] is None


def test_redis_killed_mid_load_falls_back(tiny, tiny_recv, prompt, redis_server):
    store = _stored(tiny, prompt, backend=RedisBackend(redis_server.url))
    hit = store.lookup(tiny.family, prompt.prefix)[0]
    redis_server.stop()  # the store disappears between lookup and fetch
    got = prefill_from_store(tiny_recv, store, hit, RecomputePlan.parse("2:4", 6), prompt)
    want = full_prefill(tiny_recv, prompt.ids)
    assert torch.max(torch.abs(got.logits - want.logits)) <= ATOL and got.info.missing
    assert store.lookup(tiny.family, prompt.prefix) == [] and store.backend.errors > 0
    redis_server.start()  # restarted empty: a miss, then stored again
    assert store.lookup(tiny.family, prompt.prefix) == []
    cap = capture(tiny, list(prompt.prefix), e_layers="all")
    assert store.put(cap) == 64 and store.lookup(tiny.family, prompt.prefix)


def test_a_server_without_root_or_path(tmp_path):
    """With no redis-server on PATH, the server droidspeak finds is the bundled valkey-server, a real
    Redis-protocol server: it starts, stores and survives a client reconnect."""
    from conftest import RedisServer

    from droidspeak.store.server import find_server

    assert find_server(path="").name == "valkey-server"
    srv = RedisServer(path="").start()
    try:
        b = RedisBackend(srv.url, namespace="nopath")
        assert b.put("ds1:nopath:k", b"v" * 100) and b.get("ds1:nopath:k") == b"v" * 100
        assert srv.cmd[0].endswith("valkey-server")
    finally:
        srv.stop()
