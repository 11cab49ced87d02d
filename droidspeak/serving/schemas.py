"""Request bodies of the OpenAI-compatible API (pydantic), and the API's error."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Base):
    include_usage: bool = False


class Generation(_Base):
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
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None


class CompletionRequest(Generation):
    prompt: str | list[str] = Field(description="one prompt (a list must hold exactly one)")


class ChatMessage(_Base):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Generation):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class ApiError(Exception):
    """An error a client gets in OpenAI's shape: ``{"error": {"message", "type", "code"}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}
