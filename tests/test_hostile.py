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


KEYS = ["type", "properties", "items", "required", "enum", "const", "$ref", "anyOf", "oneOf", "pattern", "format",
        "minimum", "maxLength", "additionalProperties", "$defs", "x"]


def test_fuzz_tools_formats_and_parts(small_server):
    """Hostile tool schemas, response formats and content parts (hypothesis): a 200 or a one-line 400,
    never a 5xx (the server's log is checked for tracebacks at the end)."""
    from hypothesis import given
    from hypothesis import strategies as st

    leaf = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=12)
    value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.sampled_from(KEYS) | st.text(max_size=6), c, max_size=4), max_leaves=16)
    schema = value | st.fixed_dictionaries({"type": st.sampled_from(["object", "array", "string", "integer", "nope"])},
                                           optional={"properties": st.dictionaries(st.text(max_size=6), value, max_size=3),
                                                     "required": st.lists(st.text(max_size=6), max_size=3)})
    part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", "x"])},
                                 optional={"text": leaf, "image_url": value})
    body = st.fixed_dictionaries({}, optional={
        "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["f", "g_1", "bad name", ""])}, optional={"parameters": schema})}), max_size=3),
        "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]),
        "response_format": st.fixed_dictionaries({"type": st.sampled_from(["json_object", "json_schema", "text"])},
                                                 optional={"json_schema": st.fixed_dictionaries(
                                                     {"name": st.just("s")}, optional={"schema": schema})}),
        "content": st.lists(part, max_size=3) | st.text(max_size=20),
    })

    @given(b=body)
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(b):
        content = b.pop("content", "hi")
        r = httpx.post(small_server.url + "/v1/chat/completions", timeout=60, json={
            "model": "smollm2-135m-instruct", "max_tokens": 2, "messages": [{"role": "user", "content": content}], **b})
        assert r.status_code in (200, 400), (b, r.status_code, r.text)
        if r.status_code == 400:
            assert "\n" not in r.json()["error"]["message"]

    run()


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
