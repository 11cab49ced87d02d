"""Request bodies of the OpenAI-compatible API (pydantic), and the API's error.

Every field a client may send is either acted on (declared below) or accepted and ignored by design
(:data:`IGNORED`, listed in the README with why); any other field is refused with a 400 that names
it, so a client never trusts an answer that silently broke its contract.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# fields accepted and not acted on, and why (the README lists them)
IGNORED = {
    "user": "an end-user id for the client's own bookkeeping; nothing here depends on it",
    "metadata": "the client's own tags; nothing here depends on them",
    "store": "OpenAI's stored completions; nothing is kept here beyond the KV caches",
    "service_tier": "one tier here",
    "parallel_tool_calls": "an answer holds at most one tool call here, which satisfies both settings",
}
# fields of a message accepted and not acted on (any other field of a message is dropped too)
IGNORED_IN_MESSAGES = ("name", "refusal", "annotations", "audio")
IGNORED_IN_MESSAGES_WHY = ("what SDKs send back of a speaker or an earlier answer; the chat templates have no place "
                           "for them")
MAX_TOOLS = 64


def ignored_table() -> str:
    """The README's table of fields accepted and ignored by design."""
    rows = [f"| `{k}` | {why} |" for k, why in IGNORED.items()]
    msg = ", ".join(f"`{k}`" if i else f"`messages[].{k}`" for i, k in enumerate(IGNORED_IN_MESSAGES))
    return "\n".join(["| field | why it is ignored |", "|---|---|", *rows, f"| {msg} | {IGNORED_IN_MESSAGES_WHY} |"])


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Open(BaseModel):
    """A request body: unknown fields are kept so that the API can name them (and refuse them)."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(_Base):
    include_usage: bool = False


class Generation(_Open):
    """Fields every generation request shares."""

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    ignore_eos: bool = Field(default=False, description="generate max_tokens whatever the end-of-turn tokens "
                             "(vLLM's extension; for benchmarks)")
    n: int = Field(default=1, ge=1, le=8, description="choices, each its own sample (the prompt's cache is shared)")
    frequency_penalty: float = Field(default=0.0, description="only 0 (no penalty) is served here")
    presence_penalty: float = Field(default=0.0, description="only 0 (no penalty) is served here")


class CompletionRequest(Generation):
    prompt: str | list[str] = Field(description="one prompt (a list must hold exactly one)")
    logprobs: int | None = Field(default=None, ge=0, le=5, description="log-probabilities of the chosen token and "
                                 "this many most likely ones, per generated token")
    echo: bool = Field(default=False, description="only false is served here")


class FunctionCall(_Base):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=100_000, description="the arguments as a JSON string")


class ToolCall(_Base):
    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Base):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None  # a string, or parts ({"type": "text", "text": ...})
    name: str | None = Field(default=None, max_length=128)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=16)
    tool_call_id: str | None = Field(default=None, max_length=128)


class FunctionDef(_Base):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(default=None, max_length=4096)
    parameters: dict[str, Any] | None = None  # a JSON schema
    strict: bool | None = None


class Tool(_Base):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Base):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Base):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Base):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Base):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatRequest(Generation):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class ApiError(Exception):
    """An error a client gets in OpenAI's shape: ``{"error": {"message", "type", "code"}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}
