"""What an agent framework sends, against the real server on loopback: tools and tool calls (whole and
streamed), structured output, logprobs, n, content parts, fields refused by name; driven by the
official openai SDK and by langchain-openai (an agent whose tool is called, its result fed back,
and a final answer, with the variants sharing the conversation's cache)."""

import json
import threading

import httpx
import pytest
from conftest import ServerProc

from droidspeak.tasks import toolcall

pytestmark = pytest.mark.smollm

BASE = "smollm2-135m-instruct"
CALLER = "smollm2-toolcall-alora"
ROW = toolcall.generate("heldout", 1, lengths=(500, 600), seed=3)[0]
GOLD = json.loads(ROW.reference)
PARAMS = {"type": "object", "properties": {"order_id": {"type": "string"}, "product": {"type": "string"},
                                           "quantity": {"type": "integer"}, "city": {"type": "string"}},
          "required": ["order_id", "product", "quantity", "city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": n, "description": f"{v} an order", "parameters": PARAMS}}
         for n, v in toolcall.ACTIONS.items()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProc("--models", f"{BASE},{CALLER},smollm2-qa-alora", "--store", "memory:1GB",
                     log_dir=tmp_path_factory.mktemp("agents")).wait()
    yield srv
    logs = srv.logs()
    srv.stop()
    assert "Traceback" not in logs


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="none", timeout=300)


def _messages():
    return [{"role": "user", "content": ROW.context}, {"role": "user", "content": ROW.prompt}]


def _valid_call(call, names):
    args = json.loads(call.function.arguments)
    assert call.type == "function" and call.id and call.function.name in names
    assert set(args) == set(PARAMS["properties"]) and isinstance(args["quantity"], int)
    return args


def test_named_tool_call_is_decoded_to_the_schema(client):
    fn = GOLD["name"]
    r = client.chat.completions.create(model=CALLER, messages=_messages(), tools=TOOLS, temperature=0, max_tokens=96,
                                       tool_choice={"type": "function", "function": {"name": fn}})
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    _valid_call(c.message.tool_calls[0], {fn})  # how often its arguments are right: bench/tool_calls.py


def test_auto_tool_call_from_the_trained_variant_and_text_stays_text(client):
    r = client.chat.completions.create(model=CALLER, messages=_messages(), tools=TOOLS, temperature=0, max_tokens=96)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c.message.content
    _valid_call(c.message.tool_calls[0], set(toolcall.ACTIONS))
    plain = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "Say hello in one word."}],
                                           tools=TOOLS, temperature=0, max_tokens=8)
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].message.content
    assert plain.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_call(client):
    stream = client.chat.completions.create(model=CALLER, messages=_messages(), tools=TOOLS, temperature=0, max_tokens=96,
                                            tool_choice="required", stream=True)
    calls, finish, content = {}, None, ""
    for ch in stream:
        d = ch.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
            slot["name"] += tc.function.name or ""
            slot["arguments"] += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == "" and len(calls) == 1
    call = calls[0]
    assert call["id"] and call["name"] in toolcall.ACTIONS and set(json.loads(call["arguments"])) == set(PARAMS["properties"])


def test_structured_output_follows_the_schema_and_batches_with_free_text(client):
    schema = {"type": "object", "properties": {"customer": {"type": "string"}, "quantity": {"type": "integer"},
                                               "urgent": {"type": "boolean"}},
              "required": ["customer", "quantity", "urgent"], "additionalProperties": False}
    free = {"model": BASE, "messages": _messages(), "temperature": 0, "max_tokens": 24}
    alone = client.chat.completions.create(**free).choices[0].message.content
    out = {}

    def constrained():
        out["json"] = client.chat.completions.create(
            model=BASE, messages=_messages(), temperature=0, max_tokens=64,
            response_format={"type": "json_schema", "json_schema": {"name": "order", "schema": schema, "strict": True}})

    def unconstrained():
        out["free"] = client.chat.completions.create(**free)

    threads = [threading.Thread(target=constrained), threading.Thread(target=unconstrained)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    obj = json.loads(out["json"].choices[0].message.content)
    assert set(obj) == {"customer", "quantity", "urgent"} and isinstance(obj["quantity"], int)
    assert isinstance(obj["urgent"], bool) and out["json"].choices[0].finish_reason == "stop"
    assert out["free"].choices[0].message.content == alone  # batching with a constrained row changes nothing
    anything = client.chat.completions.create(model=CALLER, messages=_messages(), temperature=0, max_tokens=64,
                                              response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


def test_logprobs_chat_completions_and_stream(client):
    r = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "Name a colour."}],
                                       temperature=0, max_tokens=6, logprobs=True, top_logprobs=2)
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens and "".join(t.token for t in lp) == r.choices[0].message.content
    for t in lp:  # greedy: the chosen token is the most likely one
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token and t.logprob <= 0
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
    c = client.completions.create(model=BASE, prompt="def add(a, b):\n    return", temperature=0, max_tokens=5, logprobs=2)
    clp = c.choices[0].logprobs
    assert "".join(clp.tokens) == c.choices[0].text and len(clp.token_logprobs) == 5 and len(clp.top_logprobs[0]) == 2
    streamed = []
    for ch in client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "Name a colour."}],
                                             temperature=0, max_tokens=6, logprobs=True, top_logprobs=2, stream=True):
        if ch.choices and ch.choices[0].logprobs:
            streamed += ch.choices[0].logprobs.content
    assert [t.token for t in streamed] == [t.token for t in lp]
    # the streamed request is served from the store (a same-model hit), its logits by another path than the first's:
    # the same tokens, logprobs equal up to float rounding (rounding both to 4 places split -2.00484 from -2.00486)
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in lp], abs=1e-3)


def test_n_choices_share_the_prompt_and_seed_repeats(client):
    kw = {"model": BASE, "messages": _messages(), "max_tokens": 8, "temperature": 1.0, "seed": 11, "n": 3}
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1  # each choice its own sample
    assert b.usage.prompt_tokens_details.cached_tokens > 0  # the second request's prompt was cached by the first
    streamed = {}
    for ch in client.chat.completions.create(**kw, stream=True):
        for c in ch.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert [streamed[i] for i in range(3)] == [c.message.content for c in a.choices]


def test_content_parts_and_refused_fields(server, client):
    parts = [{"type": "text", "text": "Name a colour."}, {"type": "text", "text": "One word."}]
    a = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": parts}], temperature=0, max_tokens=5)
    b = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "Name a colour.\nOne word."}],
                                       temperature=0, max_tokens=5)
    assert a.choices[0].message.content == b.choices[0].message.content
    u = server.url + "/v1/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
         "image_url part"),
        ({"messages": msgs, "logit_bias": {"5": 10}, "reasoning_effort": "low"},
         "unsupported fields: logit_bias, reasoning_effort"),
        ({"messages": msgs, "presence_penalty": 0.5}, "presence_penalty"),
        ({"messages": msgs, "top_logprobs": 2}, "needs logprobs"),
        ({"messages": msgs, "tool_choice": "required"}, "offers no tools"),
        ({"messages": msgs, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "not among the tools"),
        ({"messages": msgs, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        ({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema"),
        ({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}}, "cannot be compiled"),
        ({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "description": "y" * 70_000}}}}, "at most 65536"),
        ({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}],
          "tool_choice": "required"}, "cannot be compiled"),
    ]
    for body, says in cases:
        r = httpx.post(u, json={"model": BASE, "max_tokens": 2, **body}, timeout=60)
        assert r.status_code == 400 and says in r.json()["error"]["message"], (body, r.text)
        assert "\n" not in r.json()["error"]["message"]
    ok = httpx.post(u, json={"model": BASE, "max_tokens": 2, "messages": msgs, "user": "u1", "metadata": {"a": "b"},
                             "parallel_tool_calls": False, "store": False}, timeout=60)
    assert ok.status_code == 200, ok.text
    # an earlier call whose arguments are not JSON, and its result: accepted as the conversation it was
    history = msgs + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "refund_order", "arguments": "{not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "refused"}]
    r = httpx.post(u, json={"model": BASE, "max_tokens": 2, "messages": history, "tools": TOOLS}, timeout=60)
    assert r.status_code == 200, r.text


def test_langchain_agent_round_trip_shares_the_conversation(server):
    """A langchain-openai agent: the tool-call variant calls the tool, its result goes back, the base
    answers; every later turn reuses the conversation's cache (a different model's included)."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    orders = {GOLD["arguments"]["order_id"]: "refund issued: 42.00 EUR"}

    @tool
    def refund_order(order_id: str, product: str, quantity: int, city: str) -> str:
        """Refund an order."""
        return orders.get(order_id, "no such order")

    def llm(model):
        return ChatOpenAI(model=model, base_url=server.url + "/v1", api_key="none", temperature=0, max_tokens=96,
                          max_retries=0, timeout=300)

    caller = llm(CALLER).bind_tools([refund_order], tool_choice="refund_order")
    history = [HumanMessage(ROW.context), HumanMessage(ROW.prompt)]
    first = caller.invoke(history)
    assert first.tool_calls and first.tool_calls[0]["name"] == "refund_order"
    result = refund_order.invoke(first.tool_calls[0]["args"])
    history += [first, ToolMessage(result, tool_call_id=first.tool_calls[0]["id"])]
    final = llm(BASE).bind_tools([refund_order], tool_choice="none").invoke(history)
    assert final.content and not final.tool_calls
    # the base reused the variant's cache up to its activation point (the last user turn, where the
    # activated adapter starts acting): the context turn, whole blocks of it
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from droidspeak.models import load_model
    from droidspeak.serving import tools as calls
    from droidspeak.serving.intake import prompt_of
    from droidspeak.serving.schemas import ChatRequest, Tool

    tok = load_model(BASE).tokenizer
    ctx = len(prompt_of(ChatRequest(model=BASE, messages=[{"role": "user", "content": ROW.context},
                                                          {"role": "user", "content": "?"}]), tok).prefix)
    assert ctx // 16 * 16 <= _cached(final) < first.usage_metadata["input_tokens"], (ctx, final.usage_metadata)
    # the next turn of the variant reuses the base's whole turn (its own tokens up to its activation)
    history += [final, HumanMessage("Thanks. Anything else to do for this order?")]
    again = llm(CALLER).bind_tools([refund_order]).invoke(history)
    assert again.content is not None
    # ... all of it but the base's tools block and its prompt for an answer (the block moved to the new turn)
    block = len(tok(calls.tools_block([Tool.model_validate(convert_to_openai_tool(refund_order))]))["input_ids"])
    kept = final.usage_metadata["input_tokens"] - block - len(tok("<|im_end|>\n<|im_start|>assistant\n")["input_ids"])
    assert _cached(again) >= kept // 16 * 16, (_cached(again), kept, again.usage_metadata)


def _cached(msg):
    return msg.usage_metadata["input_token_details"]["cache_read"]
