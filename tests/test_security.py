"""The shared tier lets no one in: sealed entries, secrets per namespace, an authenticated store server.

The attack these tests replay: someone who can write to the shared Redis re-encodes every stored
entry with the project's own public codec (so its unkeyed checksum is valid again) after changing
the tensors, and forges the manifests. Without a store secret a node serves those entries as an
exact hit (checked below, so the defence is shown to matter); with one, every forged value is
refused and the receiver's answer is its own full prefill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from droidspeak import full_prefill
from droidspeak.core.prompt import PromptTokens
from droidspeak.errors import DroidspeakError
from droidspeak.kinds import ShareKind
from droidspeak.sharing import ShareOptions, serve_prefill
from droidspeak.store import CacheStore, DiskBackend, MemoryBackend, Refused, Sealer, decode, encode, open_store
from droidspeak.store.codec import header
from droidspeak.testing.tiny import tiny_adapter

SECRET = "s" * 32
INVOKE = (5, 6, 7)
ATOL = 1e-4


# ------------------------------------------------------------------ the seal itself
def test_seal_opens_only_for_the_same_secret_namespace_and_key():
    for encrypt in (False, True):
        s = Sealer(SECRET, "prod", encrypt)
        value = os.urandom(5000)
        sealed = s.seal("ds1:prod:k", value)
        assert s.open("ds1:prod:k", sealed) == value
        assert (value in sealed) != encrypt  # encrypted values do not show their bytes
        for other, key in ((Sealer("t" * 32, "prod", encrypt), "ds1:prod:k"),  # another secret
                           (Sealer(SECRET, "dev", encrypt), "ds1:prod:k"),  # another namespace's key
                           (s, "ds1:prod:other")):  # moved to another key
            with pytest.raises(Refused):
                other.open(key, sealed)
        flipped = bytearray(sealed)
        flipped[len(flipped) // 2] ^= 1
        with pytest.raises(Refused):
            s.open("ds1:prod:k", bytes(flipped))
        with pytest.raises(Refused):
            s.open("ds1:prod:k", sealed[:20])
        with pytest.raises(Refused, match="not sealed"):
            s.open("ds1:prod:k", value)
    with pytest.raises(Refused, match="encrypted"):  # a node that only authenticates cannot read encrypted values
        Sealer(SECRET, "prod").open("k", Sealer(SECRET, "prod", True).seal("k", b"x" * 100))
    with pytest.raises(DroidspeakError, match="at least 16 bytes"):
        Sealer("short", "prod")
    assert SECRET not in repr(Sealer(SECRET, "prod"))


# ------------------------------------------------------------------ forged entries
@pytest.fixture(scope="module")
def alora(tiny):
    return tiny_adapter(tiny, "alora", INVOKE, seed=1)


def _prompt(tiny_ids):
    return PromptTokens(tuple(tiny_ids), INVOKE + (20, 21))


def _forge(backend, secret: str | None = None, namespace: str = "default") -> int:
    """What an attacker with write access does: every value re-encoded with the public codec after
    negating its tensors (a valid unkeyed checksum again), and every manifest's producer rewritten;
    sealed with a guessed secret, or left unsealed. Returns the number of values forged."""
    raw = backend.inner if hasattr(backend, "inner") else backend
    keys = [k.decode() for k in raw.client.keys(f"ds1:{namespace}:*")]
    sealer = Sealer(secret, namespace) if secret else None
    n = 0
    for k in keys:
        v = raw.client.get(k)
        body = v[4:-32] if v[:4] == b"DSM1" else v  # the attacker knows the layout, not the secret
        if k.endswith(":manifest"):
            man = json.loads(body)
            man["e_layers"] = list(range(6))
            body = json.dumps(man).encode()
        elif not (k.endswith(":senders") or ":idx:" in k):
            meta = header(body)["__metadata__"]
            tensors = decode(body, k)
            body = encode(k, {name: -t for name, t in tensors.items()}, meta["fmt"])
        raw.client.set(k, sealer.seal(k, body) if sealer else body)
        n += 1
    return n


def test_forged_entries_are_served_without_a_secret(tiny, alora, tiny_ids, redis_server):
    """The attack works against an unauthenticated tier: the reason for everything below."""
    prompt = _prompt(tiny_ids)
    writer = open_store(f"{redis_server.url}")
    serve_prefill(tiny, writer, prompt)
    assert _forge(writer.backend) > 6
    got = serve_prefill(alora, open_store(redis_server.url), prompt, ShareOptions(store_on_miss=False))
    own = full_prefill(alora, prompt.ids)
    assert got.info.kind == ShareKind.EXACT and not got.info.fallback
    assert torch.max(torch.abs(got.logits - own.logits)) > 1e-2  # served another answer, as an exact hit


@pytest.mark.parametrize("attacker_secret", [None, "a" * 32])
def test_forged_entries_are_refused_with_a_secret(tiny, alora, tiny_ids, redis_server, attacker_secret):
    prompt = _prompt(tiny_ids)
    writer = open_store(redis_server.url, secret=SECRET)
    serve_prefill(tiny, writer, prompt)
    honest = serve_prefill(alora, open_store(redis_server.url, secret=SECRET), prompt,
                           ShareOptions(store_on_miss=False))
    assert honest.info.kind == ShareKind.EXACT  # the right secret shares as before
    assert _forge(writer.backend, attacker_secret) > 6
    reader = open_store(redis_server.url, secret=SECRET)
    got = serve_prefill(alora, reader, prompt, ShareOptions(store_on_miss=False))
    own = full_prefill(alora, prompt.ids)
    assert got.info.kind == ShareKind.MISS and got.info.fallback and "not authenticated" in got.info.reason
    assert torch.max(torch.abs(got.logits - own.logits)) <= ATOL
    assert reader.stats.counts["refused"] >= 1


def test_forged_kv_behind_an_honest_manifest_is_recomputed(tiny, alora, tiny_ids, redis_server):
    """Entries forged after the receiver found the (honest) manifest: each refused at fetch, recomputed."""
    prompt = _prompt(tiny_ids)
    writer = open_store(redis_server.url, secret=SECRET)
    serve_prefill(tiny, writer, prompt)
    reader = open_store(redis_server.url, secret=SECRET)
    hit = reader.lookup(tiny.family, prompt.prefix)[0]
    raw = writer.backend.inner
    for k in [k.decode() for k in raw.client.keys("ds1:default:*:kv:*")]:
        body = raw.client.get(k)[4:-32]
        raw.client.set(k, b"DSM1" + encode(k, {n: -t for n, t in decode(body, k).items()}) + bytes(32))
    from droidspeak.core.plan import RecomputePlan
    from droidspeak.sharing.from_store import prefill_from_store

    got = prefill_from_store(alora, reader, hit, RecomputePlan.none(6), prompt)
    own = full_prefill(alora, prompt.ids)
    assert torch.max(torch.abs(got.logits - own.logits)) <= ATOL and len(got.info.missing) == 6
    assert reader.stats.counts["refused"] == 6 and raw.client.keys("ds1:default:*:kv:*") == []  # refused: deleted


def test_a_node_with_another_secret_reads_nothing_and_the_right_one_shares(tiny, alora, tiny_ids, redis_server):
    prompt = _prompt(tiny_ids)
    serve_prefill(tiny, open_store(redis_server.url, secret=SECRET), prompt)
    wrong = open_store(redis_server.url, secret="w" * 32)
    assert wrong.lookup(tiny.family, prompt.prefix) == []
    unsealed = open_store(redis_server.url)  # no secret at all: sealed values cannot be checked, so refused
    assert unsealed.lookup(tiny.family, prompt.prefix) == []
    other_ns = open_store(redis_server.url, namespace="tenant-b", secret=SECRET)
    assert other_ns.lookup(tiny.family, prompt.prefix) == []
    right = open_store(redis_server.url, secret=SECRET)
    assert right.lookup(tiny.family, prompt.prefix)[0].tokens == 64


def test_disk_tier_is_sealed_memory_tier_is_not(tiny, alora, tiny_ids, tmp_path):
    prompt = _prompt(tiny_ids)
    store = open_store(f"memory:64MB,disk:{tmp_path}", secret=SECRET, encrypt=True)
    serve_prefill(tiny, store, prompt)
    assert store.blocks.nbytes() > 0 and store.backend.sealer.encrypt  # the node's own memory holds tensors
    files = list(tmp_path.glob("*/*.st"))
    assert files and all(f.read_bytes()[:4] == b"DSE1" for f in files)
    fresh = open_store(f"memory:64MB,disk:{tmp_path}", secret=SECRET, encrypt=True)  # a restarted node
    got = serve_prefill(alora, fresh, prompt, ShareOptions(store_on_miss=False))
    assert got.info.kind == ShareKind.EXACT
    assert torch.max(torch.abs(got.logits - full_prefill(alora, prompt.ids).logits)) <= ATOL
    plain = CacheStore(DiskBackend(tmp_path))  # a reader without the secret sees no usable value
    assert plain.lookup(tiny.family, prompt.prefix) == []
    assert CacheStore(MemoryBackend()).lookup(tiny.family, prompt.prefix) == []


# ------------------------------------------------------------------ who may use which tier
def test_a_remote_tier_without_a_secret_is_refused_in_one_line():
    with pytest.raises(DroidspeakError, match="no store secret is set") as e:
        open_store("memory,redis://:hunter2hunter2@10.255.255.1:6379")
    assert "\n" not in str(e.value) and "hunter2" not in str(e.value) and "***" in str(e.value)
    open_store("redis://10.255.255.1:6379", insecure=True)  # said explicitly: accepted (nothing connects yet)
    open_store("rediss://10.255.255.1:6379", secret=SECRET)
    with pytest.raises(DroidspeakError, match="needs a store secret"):
        open_store("memory", encrypt=True)


def test_cli_and_server_refuse_a_remote_tier_without_a_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DROIDSPEAK_STORE_SECRET"}
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("hello")
    for args in (["answer", "--model", "base", "--context", str(ctx), "--prompt", "hi", "--store",
                  "redis://:pw-pw-pw-pw@192.0.2.1:6379"],
                 ["serve", "--store", "redis://:pw-pw-pw-pw@192.0.2.1:6379", "--port", "0"]):
        r = subprocess.run([sys.executable, "-m", "droidspeak", *args], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "no store secret is set" in r.stderr and "pw-pw" not in r.stderr


def test_store_server_on_a_network_address_requires_a_password(tmp_path):
    import redis
    from conftest import _free_port

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "droidspeak", "store-server", "--bind", "0.0.0.0", "--port",
                             str(port), "--dir", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        password = line.split("mode 0600): ", 1)[1].split(";", 1)[0].strip()
        pw_file = tmp_path / f"store-server-{port}.password"
        assert pw_file.read_text().strip() == password and (pw_file.stat().st_mode & 0o777) == 0o600
        deadline = time.time() + 30
        while True:
            try:
                redis.Redis(port=port, password=password).ping()
                break
            except redis.ConnectionError:
                assert time.time() < deadline
                time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):  # no password: refused, even from loopback
            redis.Redis(port=port).set("k", "v")
        from pathlib import Path

        cmdlines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
        assert any(str(port).encode() in c and b"store-server" not in c for c in cmdlines)  # the server runs
        assert not any(password.encode() in c for c in cmdlines)  # and the password is on no command line
        store = open_store(f"redis://:{password}@127.0.0.1:{port}", secret=SECRET)
        assert store.backend.inner.put("ds1:default:x", b"1") and password not in store.backend.inner.url
    finally:
        proc.terminate()
        proc.wait(30)


def test_redis_acl_confines_a_tenant_to_its_namespace(redis_server):
    """The ACL the README gives a tenant's nodes: its own namespace's keys, nothing else."""
    import redis

    admin = redis.Redis.from_url(redis_server.url)
    admin.execute_command("ACL", "SETUSER", "tenant-a", "on", ">tenant-a-password", "resetkeys", "~ds1:tenant-a:*",
                          "~ds:tenant-a:*", "resetchannels", "+@all", "-@admin", "-@dangerous")
    url = f"redis://tenant-a:tenant-a-password@127.0.0.1:{redis_server.port}/0"
    mine = open_store(url, namespace="tenant-a", secret=SECRET).backend.inner
    assert mine.put("ds1:tenant-a:k", b"x" * 100) and mine.get("ds1:tenant-a:k") == b"x" * 100
    theirs = open_store(url, namespace="tenant-b", secret=SECRET).backend.inner
    assert not theirs.put("ds1:tenant-b:k", b"y") and theirs.errors == 1  # another tenant's keys: NOPERM
    assert admin.get("ds1:tenant-b:k") is None
