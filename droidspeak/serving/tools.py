"""Tool calls and structured output in the prompt and in the answer.

What a request asks of its answer (the tools it may call, a JSON format) is a block appended to the
last turn it answers (a user's or a tool result), never put before the conversation: the document and
the turns before it stay the prefix every model shares, so a tool list or a response format never
changes what a request shares, and each call of a conversation reuses all of the one before but its
block (the SmolLM2 and Gemma 3 chat templates take no tool list of their own; this block is the
convention the tool-call variants answer to).

A call is a JSON object ``{"name": ..., "arguments": {...}}`` (the format the tool-call variants are
trained to write); :func:`parse_call` finds one naming an offered tool in an answer, else the answer
stays text. With ``tool_choice`` ``required`` or a named function, decoding is constrained to such a
call (:func:`call_schema`).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..quality import first_json_object
from .schemas import ApiError, ChatRequest, Tool

INSTRUCTION = 'To call a tool, answer with only its JSON call {"name": ..., "arguments": {...}}.'


def offered(body: ChatRequest) -> list[Tool]:
    """The tools the answer may call (none with ``tool_choice`` ``none``; only the named one when named)."""
    tools = body.tools or []
    choice = body.tool_choice
    if not tools and choice not in (None, "none", "auto"):
        raise ApiError(400, "tool_choice asks for a tool call but the request offers no tools")
    if choice == "none" or not tools:
        return []
    if choice is not None and not isinstance(choice, str):
        named = [t for t in tools if t.function.name == choice.function.name]
        if not named:
            raise ApiError(400, f"tool_choice names '{choice.function.name}', which is not among the tools")
        return named
    return tools


def tools_block(tools: list[Tool]) -> str:
    """The tools as signatures, one a line (``name(arg: type, ...): description``), the way the tool-call
    variants' training requests name a function; a parameter whose schema is more than a type is
    written as its JSON schema."""
    lines = [signature(t) for t in tools]
    return "\n\nTools:\n" + "\n".join(lines) + "\n" + INSTRUCTION


def signature(t: Tool) -> str:
    params = t.function.parameters or {}
    props = params.get("properties") if isinstance(params, dict) else None
    args = []
    for name, sch in (props.items() if isinstance(props, dict) else []):
        plain = isinstance(sch, dict) and set(sch) <= {"type", "description"} and isinstance(sch.get("type"), str)
        args.append(f"{name}: {sch['type']}" if plain else f"{name}: {json.dumps(sch)}")
    desc = f": {t.function.description}" if t.function.description else ""
    return f"- {t.function.name}({', '.join(args)}){desc}"


def format_block(body: ChatRequest) -> str:
    rf = body.response_format
    if rf is None or rf.type == "text":
        return ""
    if rf.type == "json_object":
        return "\n\nAnswer with a JSON object."
    schema = (rf.json_schema.schema_ if rf.json_schema else None) or {"type": "object"}
    return "\n\nAnswer with a JSON object that follows this JSON schema: " + json.dumps(schema)


def call_schema(tools: list[Tool]) -> dict[str, Any]:
    """The JSON schema of one call to any of ``tools``."""
    calls = [{"type": "object", "properties": {"name": {"const": t.function.name},
                                               "arguments": t.function.parameters or {"type": "object"}},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def constraint_schema(body: ChatRequest, tools: list[Tool]) -> dict[str, Any] | None:
    """The JSON schema the answer is decoded under, if any: a call (``required`` or a named tool), else
    the response format's."""
    if tools and body.tool_choice not in (None, "auto"):
        return call_schema(tools)
    rf = body.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return {"type": "object"}
    if rf.json_schema is None or rf.json_schema.schema_ is None:
        raise ApiError(400, "response_format json_schema needs json_schema.schema")
    return rf.json_schema.schema_


def parse_call(text: str, tools: list[Tool]) -> dict[str, Any] | None:
    """The tool call an answer makes (OpenAI's ``tool_calls`` item), or None: the answer stays text."""
    names = {t.function.name for t in tools}
    obj = first_json_object(text)
    if not obj or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, dict):
        return None
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(args)}}


_ROLES: dict[tuple[str, str], bool] = {}


def renders_role(tokenizer: Any, role: str) -> bool:
    """Whether the tokenizer's chat template renders a ``role`` turn after an assistant turn (SmolLM2's
    does; Gemma 3's refuses any role but user and assistant after the first). Probed once per template."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return False
    key = (template, role)
    if key not in _ROLES:
        mark = "\u2063probe\u2063"
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                                  {"role": role, "content": mark}], tokenize=False)
            _ROLES[key] = mark in text
        except Exception:  # noqa: BLE001 - jinja's TemplateError and friends: the template says no
            _ROLES[key] = False
    return _ROLES[key]


def result_text(content: str) -> str:
    """A tool's result written as a user turn (for templates without a tool role)."""
    return "Tool result:\n" + content


def call_text(name: str, arguments: str) -> str:
    """An earlier assistant turn's call, as the model writes one (so the conversation reads as it was)."""
    try:
        args: Any = json.loads(arguments)
    except json.JSONDecodeError:
        args = arguments
    return json.dumps({"name": name, "arguments": args})
