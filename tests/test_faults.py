"""Faults against the real server and a real Redis: damaged entries in every tier, Redis killed and
restarted, an adapter reloaded with new weights under the same name, a client that disconnects
mid-stream. Every answer is checked against the model's own full prefill."""

import json
import random
import shutil

import httpx
import pytest
import torch
from conftest import ServerProc

pytestmark = pytest.mark.smollm

CONTEXT = "Inventory of the Drossel warehouse.\n" + "\n".join(
    f"Shelf {i}: {i * 3 % 17} boxes of teapots from Kelvar Works {i % 5}, checked by Ami Tovek{i}." for i in range(45))
Q = "Question about the document: who checked shelf 12?\nGive only the answer."
# the shipped variant whose profile against the base reuses layers (plan 0:28); the retrained QA LoRA's
# profile recomputes every layer, so it would never show a profiled hit
VARIANT = "smollm2-code"


def _msgs(context, q):
    return [{"role": "user", "content": context}, {"role": "user", "content": q}]


def _chat(url, model, context, q, n=10):
    r = httpx.post(url + "/v1/chat/completions", timeout=300,
                   json={"model": model, "messages": _msgs(context, q), "max_tokens": n, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def _full_answer(model, context, q, n=10):
    from droidspeak.core.decode import greedy, stop_ids
    from droidspeak.core.prefill import full_prefill

    ids = model.tokenizer.apply_chat_template(_msgs(context, q), tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    res = full_prefill(model, ids)
    return model.tokenizer.decode(greedy(model, res, n, stop_ids(model.tokenizer)),
                                  skip_special_tokens=True)


def _metric(url, name, **labels):
    total = 0.0
    for ln in httpx.get(url + "/metrics").text.splitlines():
        if ln.startswith(name) and all(f'{k}="{v}"' in ln for k, v in labels.items()):
            total += float(ln.split()[-1])
    return total


def _written(r, disk_dir, timeout=60.0):
    """Wait for the background writer: the context indexed in Redis (its index goes last) and nothing
    more arriving in either tier for a moment."""
    import time

    seen, t0 = None, time.time()
    while time.time() - t0 < timeout:
        now = (len(list(r.scan_iter("ds1:*"))), len(list(disk_dir.glob("*/*.st"))))
        if now == seen and any(b":idx:" in k for k in r.scan_iter("ds1:*")):
            return
        seen = now
        time.sleep(0.5)
    raise AssertionError(f"the writer did not finish in {timeout}s: {seen}")


def _damage_all(redis_url, disk_dir, seed=0):
    """Truncate, bit-flip or swap every K/V and E entry in Redis and on disk (manifests stay), once the
    writer has put them there."""
    import redis

    rng = random.Random(seed)
    r = redis.Redis.from_url(redis_url)
    _written(r, disk_dir)
    keys = [k for k in r.scan_iter("ds1:*") if b":kv:" in k or b":e:" in k]
    vals = {k: r.get(k) for k in keys}
    for i, k in enumerate(keys):
        v = vals[k]
        how = i % 3
        if how == 0:
            r.set(k, v[: len(v) // 2])
        elif how == 1:
            b = bytearray(v)
            b[rng.randrange(100, len(b))] ^= 0xFF
            r.set(k, bytes(b))
        else:  # a valid entry of another layer: must be refused by its key
            r.set(k, vals[keys[(i + 1) % len(keys)]])
    files = sorted(disk_dir.glob("*/*.st"))
    big = [f for f in files if f.stat().st_size > 4096]  # entries (manifests and index values are small)
    for i, f in enumerate(big):
        data = f.read_bytes()
        if i % 2:
            f.write_bytes(data[: len(data) // 3])
        else:
            b = bytearray(data)
            b[len(b) // 2] ^= 0x5A
            f.write_bytes(bytes(b))
    return len(keys), len(big)


@pytest.fixture(scope="module")
def qa_model():
    from droidspeak.models import load_model

    return load_model(VARIANT)


def test_damaged_tiers_and_redis_restart(tmp_path, redis_server, qa_model):
    disk = tmp_path / "disk"
    srv = ServerProc("--models", "smollm2-135m-instruct," + VARIANT, "--store", f"disk:{disk},{redis_server.url}",
                     log_dir=tmp_path).wait()
    try:
        first = _chat(srv.url, "smollm2-135m-instruct", CONTEXT, "Summarize the inventory.")
        assert first["droidspeak"]["kind"] == "miss"
        n_redis, n_disk = _damage_all(redis_server.url, disk)
        assert n_redis >= 30 and n_disk >= 30  # every layer's K/V at least (and the E its peers need)
        r = _chat(srv.url, VARIANT, CONTEXT, Q)
        ds = r["droidspeak"]
        assert ds["kind"] == "cross-model" and ds["fallback"] is True
        assert len(ds["recomputed_layers"]) == 30  # every damaged layer was recomputed, none was used
        assert r["choices"][0]["message"]["content"] == _full_answer(qa_model, CONTEXT, Q)
        assert _metric(srv.url, "droidspeak:store_fallbacks_total", model_name=VARIANT) >= 1
        # Redis killed: requests still succeed (disk tier, or a full prefill), then it comes back empty
        redis_server.stop()
        other = CONTEXT.replace("Drossel", "Mirren")
        r = _chat(srv.url, VARIANT, other, Q)
        assert r["choices"][0]["message"]["content"] == _full_answer(qa_model, other, Q)
        assert _metric(srv.url, "droidspeak:store_errors", tier="redis") > 0
        redis_server.start()
        third = CONTEXT.replace("Drossel", "Ostra")
        _chat(srv.url, "smollm2-135m-instruct", third, "Summarize the inventory.")
        r = _chat(srv.url, VARIANT, third, Q)
        assert r["droidspeak"]["kind"] == "cross-model" and not r["droidspeak"]["fallback"]
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
        logs = srv.logs()
        assert "refused" in logs and "recomputing" in logs  # the log line that says so
        assert "Traceback" not in logs
    finally:
        srv.stop()


def test_disconnect_mid_stream_and_reloaded_adapter(tmp_path, redis_server, qa_model):
    from safetensors.torch import load_file, save_file

    from droidspeak.models import load_model
    from droidspeak.paths import adapters_dir

    srv = ServerProc("--models", "smollm2-135m-instruct," + VARIANT, "--store", redis_server.url,
                     log_dir=tmp_path).wait()
    try:
        # the client goes away after two events; the server aborts the request and keeps serving
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=300,
                          json={"model": VARIANT, "messages": _msgs(CONTEXT, "Tell me everything."),
                                "max_tokens": 400, "temperature": 0, "stream": True}) as resp:
            got = 0
            for line in resp.iter_lines():
                if line.startswith("data:"):
                    got += 1
                if got >= 3:
                    break
        for _ in range(100):
            if _metric(srv.url, "droidspeak:request_success_total", finished_reason="abort") >= 1:
                break
            import time

            time.sleep(0.2)
        assert _metric(srv.url, "droidspeak:request_success_total", finished_reason="abort") >= 1
        r = _chat(srv.url, VARIANT, CONTEXT, Q)  # stores the variant's own cache for this context
        assert r["choices"][0]["message"]["content"] == _full_answer(qa_model, CONTEXT, Q)
    finally:
        srv.stop()
    # the adapter is retrained: same name, new weights; the old entries and the old profile must not be used
    new_dir = tmp_path / "adapters"
    shutil.copytree(adapters_dir(), new_dir)
    w = new_dir / VARIANT / "adapter_model.safetensors"
    t = load_file(str(w))
    g = torch.Generator().manual_seed(0)
    save_file({k: v + 0.02 * torch.randn(v.shape, generator=g) * (v.std() + 1e-3) if "lora_B" in k else v
               for k, v in t.items()}, str(w))
    srv2 = ServerProc("--models", "smollm2-135m-instruct," + VARIANT, "--store", redis_server.url,
                      env={"DROIDSPEAK_ADAPTERS": str(new_dir)}, log_dir=tmp_path).wait()
    try:
        r = _chat(srv2.url, VARIANT, CONTEXT, Q)
        assert r["droidspeak"]["kind"] == "miss", r["droidspeak"]  # neither its old self nor the base via a stale profile
        new_model = load_model(str(new_dir / VARIANT))
        assert new_model.identity != qa_model.identity
        assert r["choices"][0]["message"]["content"] == _full_answer(new_model, CONTEXT, Q)
        ids = json.loads(httpx.get(srv2.url + "/v1/models").text)["data"]
        assert {m["id"]: m["droidspeak"]["identity"] for m in ids}[VARIANT] == new_model.identity
    finally:
        srv2.stop()
