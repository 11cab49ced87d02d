"""The real server on loopback, driven by the official openai client (SmolLM2 + shipped variants)."""

import os
import subprocess
import sys
import time

import httpx
import pytest

from droidspeak.quality import token_f1

pytestmark = pytest.mark.smollm

CONTEXT = "Staff registry of the Vellmar district.\n" + "\n".join(
    f"Entry {i}: Oru Maddex{i} works as a clockmaker for Brenth Works {i % 7} and was born in {1930 + i}."
    for i in range(60))
Q_BASE = "Summarize the registry in one sentence."
# the shipped variant whose profile against the base reuses layers (0:28); the retrained QA LoRA's profile
# recomputes every layer (a profiled plan of "all" is served as the model's own prefill)
PROFILED = "smollm2-code"
Q_VARIANT = "Question about the document: Who employs Oru Maddex17?\nGive only the answer."


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    env = dict(os.environ, DROIDSPEAK_API_KEY="test-key", DROIDSPEAK_WARMUP_TOKENS="0")  # tests time nothing
    log = open(tmp_path_factory.mktemp("srv") / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "droidspeak", "serve", "--port", str(port),
                             "--models", "smollm2-135m-instruct,smollm2-qa,smollm2-code,smollm2-qa-alora",
                             "--store", "memory:1GB"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail("server exited: " + log.read()[-3000:])
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key="test-key", timeout=300)


def _chat(client, model, question, **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": CONTEXT}, {"role": "user", "content": question}],
        temperature=0, max_tokens=kw.pop("max_tokens", 12), **kw)


def test_models_list_parents(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"smollm2-135m-instruct", "smollm2-qa", "smollm2-code", "smollm2-qa-alora"}
    assert models["smollm2-qa-alora"].model_extra["droidspeak"]["kind"] == "alora"
    assert models["smollm2-qa"].model_extra["parent"] == "smollm2-135m-instruct"
    assert models["smollm2-135m-instruct"].model_extra["parent"] is None


def test_variant_reuses_what_the_base_prefilled(client, server):
    first = _chat(client, "smollm2-135m-instruct", Q_BASE)
    assert first.choices[0].message.content and first.usage.prompt_tokens > 900
    assert first.model_extra["droidspeak"]["kind"] == "miss"
    r = _chat(client, PROFILED, Q_VARIANT)
    ds = r.model_extra["droidspeak"]
    assert r.usage.prompt_tokens_details.cached_tokens > 800
    assert ds["kind"] == "cross-model" and ds["from_model"] == "smollm2-135m-instruct"
    assert 0 < len(ds["recomputed_layers"]) <= 30
    # within the profile's budget (1%) of the variant's own full-prefill answer
    from droidspeak.core.decode import greedy, stop_ids
    from droidspeak.core.prefill import full_prefill
    from droidspeak.models import load_model

    rv = load_model(PROFILED)
    ids = rv.tokenizer.apply_chat_template([{"role": "user", "content": CONTEXT}, {"role": "user", "content": Q_VARIANT}],
                                           tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    full = full_prefill(rv, ids)
    want = rv.tokenizer.decode(greedy(rv, full, 12, stop_ids(rv.tokenizer)), skip_special_tokens=True)
    assert token_f1(r.choices[0].message.content, want) >= 0.99, (r.choices[0].message.content, want)
    # streaming gives the same text, and usage at the end
    stream = _chat(client, PROFILED, Q_VARIANT, stream=True, stream_options={"include_usage": True})
    parts, usage = [], None
    for ev in stream:
        if ev.choices and ev.choices[0].delta.content:
            parts.append(ev.choices[0].delta.content)
        if ev.usage:
            usage = ev.usage
    assert "".join(parts) == r.choices[0].message.content and usage.completion_tokens >= 1
    metrics = httpx.get(server + "/metrics").text
    hit = [ln for ln in metrics.splitlines()
           if ln.startswith("droidspeak:prefix_cache_hits_total") and 'kind="cross_model"' in ln and PROFILED in ln]
    assert hit and float(hit[0].split()[-1]) > 800
    assert "droidspeak:time_to_first_token_seconds_bucket" in metrics and "droidspeak:store_bytes" in metrics


def test_activated_variant_is_an_exact_hit(client, server):
    """The base read the context (previous test or here); the activated variant reuses every layer of
    it, recomputes nothing, and answers exactly as its own full prefill does."""
    from droidspeak.core.decode import greedy, stop_ids
    from droidspeak.core.prefill import full_prefill
    from droidspeak.core.prompt import layout
    from droidspeak.models import load_model

    _chat(client, "smollm2-135m-instruct", Q_BASE)
    r = _chat(client, "smollm2-qa-alora", Q_VARIANT)
    ds = r.model_extra["droidspeak"]
    assert ds["kind"] == "exact-cross-model" and ds["plan"] == "none" and ds["recomputed_layers"] == []
    assert ds["from_model"] == "smollm2-135m-instruct" and r.usage.prompt_tokens_details.cached_tokens > 800
    a = load_model("smollm2-qa-alora")
    full = full_prefill(a, layout(a.tokenizer, CONTEXT, Q_VARIANT).ids, room=12)
    assert r.choices[0].message.content == a.tokenizer.decode(greedy(a, full, 12, stop_ids(a.tokenizer)),
                                                               skip_special_tokens=True)
    metrics = httpx.get(server + "/metrics").text
    assert any(ln.startswith("droidspeak:prefix_cache_hits_total") and 'kind="exact_cross_model"' in ln
               and "smollm2-qa-alora" in ln for ln in metrics.splitlines())
    pairs = httpx.get(server + "/v1/droidspeak/pairs", headers={"Authorization": "Bearer test-key"}).json()["data"]
    kinds = {(p["sender"], p["receiver"]): p["kind"] for p in pairs}
    assert kinds[("smollm2-135m-instruct", "smollm2-qa-alora")] == "exact"
    assert kinds[("smollm2-135m-instruct", "smollm2-qa")] == "profiled"


def test_completions_and_concurrency(client):
    import concurrent.futures as cf

    def one(i):
        return client.completions.create(model=["smollm2-qa", "smollm2-code", "smollm2-135m-instruct"][i % 3],
                                         prompt=f"def add_{i}(a, b):\n    return", max_tokens=6, temperature=0)

    with cf.ThreadPoolExecutor(6) as ex:
        outs = list(ex.map(one, range(6)))
    assert all(o.choices[0].finish_reason in ("stop", "length") for o in outs)
    assert all(o.usage.completion_tokens >= 1 for o in outs)


def test_bad_requests_get_clear_4xx(server, client):
    import openai

    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="smollm2-qa", prompt="word " * 9000, max_tokens=5)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="smollm2-qa", prompt="hi", max_tokens=10**9)
    r = httpx.post(server + "/v1/completions", json={"model": "smollm2-qa", "prompt": "hi"},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(server + "/v1/completions", content=b"{not json", headers={"Authorization": "Bearer test-key",
                                                                              "Content-Type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_two_nodes_share_through_redis(tmp_path, redis_server):
    """Node A hosts only the base, node B only a variant; they share nothing but a Redis server, which
    asks for a password, and a store secret; neither ever shows either."""
    import redis
    from conftest import ServerProc

    password, secret = "redis-pw-" + "7" * 20, "store-secret-" + "9" * 20
    redis.Redis.from_url(redis_server.url).config_set("requirepass", password)
    url = redis_server.url.replace("redis://", f"redis://:{password}@")
    store = ["--store", f"memory:256MB,{url}", "--namespace", "two-nodes"]
    env = {"DROIDSPEAK_STORE_SECRET": secret}
    a = ServerProc("--models", "smollm2-135m-instruct", *store, log_dir=tmp_path, env=env)
    b = ServerProc("--models", PROFILED + ",smollm2-qa-alora", *store, log_dir=tmp_path, env=env)
    try:
        a.wait(), b.wait()
        msgs = [{"role": "user", "content": CONTEXT}, {"role": "user", "content": Q_BASE}]
        r = httpx.post(a.url + "/v1/chat/completions", timeout=300,
                       json={"model": "smollm2-135m-instruct", "messages": msgs, "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["droidspeak"]["kind"] == "miss"
        deadline = time.time() + 60  # node A writes behind its answer: wait until its context is in Redis
        while not redis.Redis.from_url(url).keys("ds1:two-nodes:*:manifest") and time.time() < deadline:
            time.sleep(0.2)
        msgs[1]["content"] = Q_VARIANT
        r = httpx.post(b.url + "/v1/chat/completions", timeout=300,
                       json={"model": PROFILED, "messages": msgs, "max_tokens": 4, "temperature": 0})
        body = r.json()
        assert body["droidspeak"]["kind"] == "cross-model", body["droidspeak"]
        assert body["droidspeak"]["from_model"].startswith("identity:")  # a model this node does not host
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 800
        # the activated variant on node B reuses node A's prefill exactly, through Redis
        r = httpx.post(b.url + "/v1/chat/completions", timeout=300,
                       json={"model": "smollm2-qa-alora", "messages": msgs, "max_tokens": 4, "temperature": 0})
        body = r.json()
        assert body["droidspeak"]["kind"] == "exact-cross-model" and body["droidspeak"]["recomputed_layers"] == []
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 800
        stored = redis.Redis.from_url(url).keys("ds1:two-nodes:*:kv:*")
        assert stored and all(redis.Redis.from_url(url).get(k)[:4] == b"DSM1" for k in stored[:5])  # sealed
        redis_server.stop()  # the store goes away: requests still answer, and the logged errors name no password
        msgs[1]["content"] = Q_BASE + " Answer briefly."
        r = httpx.post(b.url + "/v1/chat/completions", timeout=300,
                       json={"model": "smollm2-qa-alora", "messages": msgs, "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200
        metrics = httpx.get(a.url + "/metrics").text + httpx.get(b.url + "/metrics").text
        logs = a.logs() + b.logs()
        assert ":***@127.0.0.1" in logs  # the failing store was named in the log, its password masked
        for text in (metrics, logs):
            assert password not in text and secret not in text
    finally:
        a.stop()
        b.stop()
