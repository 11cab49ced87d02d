"""Hostile input against the real server: schema fuzzing, size and token limits, names that try to
escape, and store namespaces that keep deployments apart."""

import httpx
import pytest
import schemathesis
from conftest import ServerProc
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.smollm


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    srv = ServerProc("--models", "smollm2-135m-instruct,smollm2-qa", "--store", "memory:256MB",
                     env={"DROIDSPEAK_MAX_TOKENS_LIMIT": "4", "DROIDSPEAK_MAX_MODEL_LEN": "256",
                          "DROIDSPEAK_MAX_REQUEST_BYTES": "20000"},
                     log_dir=tmp_path_factory.mktemp("fuzz")).wait()
    yield srv
    logs = srv.logs()
    print("fuzz requests:", logs.count("POST /v1/"), "200:", logs.count(" 200 OK"), "5xx:", logs.count(" 500 "))
    assert "Traceback" not in logs
    srv.stop()


def test_fuzz_no_server_error(small_server):
    """Every operation of the server's own OpenAPI schema, fuzzed by schemathesis: never a 5xx."""
    from hypothesis import given

    api = schemathesis.openapi.from_url(small_server.url + "/openapi.json")
    ops = [r.ok() for r in api.get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"}
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            case.call_and_validate(base_url=small_server.url, checks=[not_a_server_error], timeout=60)

        run()


def test_limits_and_names(small_server):
    u = small_server.url
    big = httpx.post(u + "/v1/completions", json={"model": "smollm2-qa", "prompt": "x" * 50_000}, timeout=30)
    assert big.status_code == 413 and "bytes" in big.json()["error"]["message"]
    long = httpx.post(u + "/v1/completions", json={"model": "smollm2-qa", "prompt": "word " * 400, "max_tokens": 2})
    assert long.status_code == 400 and "context length" in long.json()["error"]["message"]
    for body in ({"prompt": "word " * 400, "max_tokens": None}, {"messages": [{"role": "user", "content": "word " * 400}]}):
        # no max_tokens (null, or absent in chat): the default must not go negative and let a too-long prompt through
        path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        r = httpx.post(u + path, json={"model": "smollm2-qa", **body}, timeout=60)
        assert r.status_code == 400 and "context length" in r.json()["error"]["message"], r.text
    for name in ["../../etc/passwd", "/etc/passwd", "adapters/../../smollm2-qa", "smollm2-qa/../../x", "~root"]:
        r = httpx.post(u + "/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404 and "not served here" in r.json()["error"]["message"], name
    r = httpx.post(u + "/v1/chat/completions", json={"model": "smollm2-qa", "messages": [{"role": "hacker", "content": "x"}]})
    assert r.status_code == 400
    r = httpx.post(u + "/v1/completions", json={"model": "smollm2-qa", "prompt": "hi", "max_tokens": 5})
    assert r.status_code == 400 and "limit of 4" in r.json()["error"]["message"]
    assert httpx.get(u + "/health").json()["status"] == "ok"


def test_namespaces_never_collide(tiny, redis_server, tiny_ids):
    from droidspeak import capture
    from droidspeak.store import CacheStore, RedisBackend

    a = CacheStore(RedisBackend(redis_server.url, "team-a"), namespace="team-a")
    b = CacheStore(RedisBackend(redis_server.url, "team-b"), namespace="team-b")
    a.put(capture(tiny, tiny_ids, e_layers="all"))
    assert a.lookup(tiny.family, tiny_ids) and b.lookup(tiny.family, tiny_ids) == []
    assert b.backend.nbytes() == 0
    with pytest.raises(ValueError):
        CacheStore(RedisBackend(redis_server.url, "x"), namespace="../evil")
