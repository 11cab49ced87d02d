"""The in-process tier of tensor blocks and the background writer (tiny model): the same answers as the
byte tiers, budgets and LRU by block, eviction under a reader, a writer that falls behind or fails."""

import threading
import time

import pytest
import torch

from droidspeak import RecomputePlan, capture, full_prefill, partial_prefill
from droidspeak.core.prompt import PromptTokens
from droidspeak.sharing.from_store import prefill_from_store
from droidspeak.store import BlockTier, CacheStore, MemoryBackend, RedisBackend, open_store
from droidspeak.store.backends import Backend

ATOL = 1e-4


@pytest.fixture()
def prompt(tiny_ids):
    return PromptTokens(tuple(tiny_ids), (11, 12, 13, 14, 15))


@pytest.mark.parametrize("plan", ["none", "2:4", "all"])
def test_a_block_hit_equals_a_redis_hit_and_the_in_memory_path(tiny, tiny_recv, prompt, plan, redis_server):
    cap = capture(tiny, list(prompt.prefix), e_layers="all")
    blocks = CacheStore(blocks=BlockTier(1 << 28))
    shared = CacheStore(RedisBackend(redis_server.url))
    assert blocks.put(cap) == shared.put(cap) == 64
    p = RecomputePlan.parse(plan, 6)
    got = {}
    for name, store in (("blocks", blocks), ("redis", shared)):
        (hit,) = store.lookup(tiny.family, prompt.prefix)
        assert hit.tier == ("memory" if name == "blocks" else "shared")
        got[name] = prefill_from_store(tiny_recv, store, hit, p, prompt)
        assert not got[name].info.missing
    want = partial_prefill(tiny_recv, cap, p, prompt.suffix).logits
    assert torch.max(torch.abs(got["blocks"].logits - want)) <= ATOL
    assert torch.max(torch.abs(got["blocks"].logits - got["redis"].logits)) <= ATOL
    own = prefill_from_store(tiny, blocks, blocks.lookup(tiny.family, prompt.prefix)[0], RecomputePlan.none(6), prompt)
    assert torch.max(torch.abs(own.logits - full_prefill(tiny, prompt.ids).logits)) <= ATOL  # the same model


def test_blocks_are_shared_by_prefix_budgeted_and_evicted_oldest_first(tiny, tiny_ids):
    one_block = 6 * 2 * 2 * 16 * 16 * 4  # layers x (K, V) x kv heads x block x head dim x fp32
    store = CacheStore(blocks=BlockTier(10 * one_block))
    a = tiny_ids
    b = tiny_ids[:32] + [7] * 32  # shares its first two blocks with a
    assert store.put(capture(tiny, a)) == 64
    assert store.put(capture(tiny, b)) == 64
    assert store.blocks.stats()["blocks"] == 6 and store.blocks.nbytes() == 6 * one_block  # the prefix once
    store.put(capture(tiny, [9] * 80))  # five more blocks: over budget, the oldest go
    assert store.blocks.nbytes() <= 10 * one_block and store.blocks.evictions == 1
    assert store.lookup(tiny.family, a)[0].tokens < 64  # a lost a block (its tail)...
    assert store.lookup(tiny.family, [9] * 80)[0].tokens == 80  # ... the newest is whole


def test_eviction_never_frees_a_block_a_reader_holds(tiny, tiny_recv, prompt):
    store = CacheStore(blocks=BlockTier(1 << 28))
    store.put(capture(tiny, list(prompt.prefix), e_layers="all"))
    hit = store.lookup(tiny.family, prompt.prefix)[0]
    source = store.source(hit, [], tiny.family, torch.float32)
    store.blocks.budget = 0
    store.blocks._evict()  # everything goes from the tier while the request still reads
    assert store.blocks.nbytes() == 0 and store.lookup(tiny.family, prompt.prefix) == []
    from droidspeak.core.assemble import assemble
    from droidspeak.core.prefill import finish_prefill

    asm = assemble(tiny_recv.surface, prompt.prefix, RecomputePlan.parse("2:4", 6), source)
    _, logits, _ = finish_prefill(tiny_recv, asm, prompt.ids)
    cap = capture(tiny, list(prompt.prefix), e_layers=[2])
    want = partial_prefill(tiny_recv, cap, RecomputePlan.parse("2:4", 6), prompt.suffix).logits
    assert torch.max(torch.abs(logits - want)) <= ATOL


class _Slow(Backend):
    """A byte tier that takes its time, or fails every write."""

    name = "slow"

    def __init__(self, delay: float = 0.0, fail: bool = False):
        super().__init__(None)
        self.inner, self.delay, self.fail = MemoryBackend(None), delay, fail
        self.gate = threading.Event()
        self.gate.set()

    def get(self, key):
        return self.inner.get(key)

    def put(self, key, value):
        self.gate.wait()
        time.sleep(self.delay)
        return False if self.fail else self.inner.put(key, value)

    def delete(self, key):
        self.inner.delete(key)

    def exists_many(self, keys):
        return self.inner.exists_many(keys)

    def nbytes(self):
        return self.inner.nbytes()


def test_a_full_writer_drops_writes_never_requests(tiny, tiny_recv, tiny_ids):
    from droidspeak.sharing import serve_prefill

    slow = _Slow()
    slow.gate.clear()  # the shared tier hangs: the writer's queue fills
    store = CacheStore(slow, blocks=BlockTier(1 << 28), write_behind=1)
    g = torch.Generator().manual_seed(3)
    contexts = [torch.randint(3, 256, (72,), generator=g).tolist() for _ in range(4)]  # nothing in common
    for ctx in contexts:  # every request is answered at once, from its own prefill
        r = serve_prefill(tiny, store, PromptTokens(tuple(ctx), (3, 4)))
        assert torch.max(torch.abs(r.logits - full_prefill(tiny, ctx + [3, 4]).logits)) <= ATOL
        assert r.info.stored_tokens == 72  # in the in-process tier: 4 blocks and the context's last 8 tokens
    assert store.stats.counts["writes_dropped"] >= 2 and store.writer.dropped >= 2
    slow.gate.set()
    store.flush(30)
    # what was written is whole and found; what was dropped is simply not there
    shared_only = CacheStore(slow.inner)
    found = [bool(shared_only.lookup(tiny.family, ctx)) for ctx in contexts]
    assert 1 <= sum(found) <= 2
    for ctx, ok in zip(contexts, found):
        if ok:
            hit = shared_only.lookup(tiny.family, ctx)[0]
            got = prefill_from_store(tiny, shared_only, hit, RecomputePlan.none(6), PromptTokens(tuple(ctx), (3, 4)))
            assert not got.info.missing


def test_a_node_without_an_in_process_tier_finds_what_it_just_queued(tiny, tiny_ids):
    """Only byte tiers, written behind: a lookup right after a put waits for that context's write (and
    only for a context starting with the same block), so the node never misses its own fresh prefill."""
    slow = _Slow(delay=0.005)
    store = CacheStore(slow, write_behind=4)
    store.put(capture(tiny, tiny_ids, e_layers="all"))
    other = [t + 1 for t in tiny_ids]
    t0 = time.time()
    assert store.lookup(tiny.family, other) == [] and time.time() - t0 < 0.05  # another context: no wait
    hit = store.lookup(tiny.family, tiny_ids)
    assert hit and hit[0].tokens == 64 and store.writer.written == 1


def test_a_failing_writer_indexes_nothing(tiny, tiny_ids):
    from droidspeak.sharing import serve_prefill

    slow = _Slow(fail=True)
    store = CacheStore(slow, blocks=BlockTier(1 << 28), write_behind=4)
    r = serve_prefill(tiny, store, PromptTokens(tuple(tiny_ids), (3, 4)))
    store.flush(30)
    assert r.info.stored_tokens == 64 and store.writer.failed == 1
    assert CacheStore(slow.inner).lookup(tiny.family, tiny_ids) == []  # nothing half-written can be found
    assert store.lookup(tiny.family, tiny_ids)[0].tier == "memory"  # the node's own tier still serves it


def test_open_store_makes_the_memory_tier_the_block_tier(tmp_path):
    store = open_store(f"memory:64MB,disk:{tmp_path}")
    assert store.blocks.budget == 64 << 20 and store.backend.name == "disk"
    assert [t["name"] for t in store.tier_stats()] == ["memory", "disk"]
    assert open_store("memory").backend is None
