"""The OpenAI-compatible HTTP API (FastAPI): models, completions, chat completions, SSE streaming,
health and Prometheus metrics. Errors use OpenAI's shape: ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..prompt import PromptTokens
from .engine import Engine, QueueFull, Request

# --------------------------------------------------------------------------- schemas


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Base):
    include_usage: bool = False


class _Generation(_Base):
    """Fields every generation request shares."""

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None


class CompletionRequest(_Generation):
    prompt: str | list[str] = Field(description="one prompt (a list must hold exactly one)")


class ChatMessage(_Base):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def _err(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": code}}, status_code=status)


# --------------------------------------------------------------------------- app
def create_app(engine: Engine) -> FastAPI:
    settings = engine.settings

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if not engine.thread.is_alive():
            engine.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.stop)  # graceful: finish running requests

    app = FastAPI(title="droidspeak", version="0.1", lifespan=lifespan,
                  description="OpenAI-compatible serving where fine-tuned variants share KV caches")

    def openapi() -> dict[str, Any]:
        """The schema names the served models (clients and fuzzers see what is valid)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            sch = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for name in ("CompletionRequest", "ChatRequest"):
                props = sch.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {})
                if "model" in props:
                    props["model"]["enum"] = list(engine.host.models)
            app.openapi_schema = sch
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api_error(_req: HttpRequest, exc: ApiError):
        return _err(exc.status, exc.message, exc.type, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: HttpRequest, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _err(400, f"invalid request: {loc or 'body'}: {first.get('msg', 'malformed')}")

    @app.middleware("http")
    async def _guard(request: HttpRequest, call_next):
        if request.url.path.startswith("/v1/"):
            if settings.api_key:
                got = request.headers.get("authorization", "")
                want = f"Bearer {settings.api_key}"
                if not hmac.compare_digest(got.encode(), want.encode()):
                    return _err(401, "invalid or missing API key", "authentication_error", "invalid_api_key")
            size = request.headers.get("content-length")
            if size is not None and (not size.isdigit() or int(size) > settings.max_request_bytes):
                return _err(413, f"request body over {settings.max_request_bytes} bytes")
        try:
            return await call_next(request)
        except Exception:  # noqa: BLE001 - never a traceback to the client
            return _err(500, "internal error", "server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok" if engine.thread.is_alive() and not engine.stopping else "stopping",
                "models": list(engine.host.models), **engine.load()}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import generate_latest

        _store_gauges(engine)
        return PlainTextResponse(generate_latest(engine.metrics.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        data = []
        for name, h in engine.host.models.items():
            data.append({"id": name, "object": "model", "created": int(engine.started), "owned_by": "droidspeak",
                         "root": name, "parent": h.parent, "max_model_len": settings.max_model_len,
                         "droidspeak": {"kind": h.kind, "identity": h.loaded.identity,
                                        "family": h.loaded.family.digest}})
        return {"object": "list", "data": data}

    def _tokens_for_completion(req: CompletionRequest, tok) -> PromptTokens:
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "prompt must be a string or a list of exactly one string")
            prompt = prompt[0]
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ApiError(400, "prompt is empty")
        return PromptTokens(tuple(ids), ())

    def _tokens_for_chat(req: ChatRequest, tok) -> PromptTokens:
        msgs = [m.model_dump() for m in req.messages]
        ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return PromptTokens(tuple(int(i) for i in ids), ())

    async def _run(kind: str, req: CompletionRequest | ChatRequest, http: HttpRequest):
        try:
            hosted = engine.host.get(req.model)
        except Exception as e:  # noqa: BLE001
            raise ApiError(404, str(e), code="model_not_found") from None
        tok = hosted.loaded.tokenizer
        prompt = _tokens_for_chat(req, tok) if kind == "chat" else _tokens_for_completion(req, tok)
        n_prompt = len(prompt.ids)
        max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if max_tokens is None:
            max_tokens = min(settings.max_tokens_limit, settings.max_model_len - n_prompt)
        if max_tokens > settings.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {settings.max_tokens_limit}")
        if n_prompt + max_tokens > settings.max_model_len:
            raise ApiError(400, f"this model's maximum context length is {settings.max_model_len} tokens; the prompt "
                                f"has {n_prompt} and max_tokens asks {max_tokens} more", code="context_length_exceeded")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or any(len(s) > 256 for s in stop):
            raise ApiError(400, "at most 4 stop sequences of at most 256 characters")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_event(ev: str, data: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (ev, data))

        r = Request(req.model, prompt, max_tokens, req.temperature, req.top_p, req.seed, stop, on_event)
        try:
            engine.submit(r)
        except QueueFull as e:
            if engine.stopping:
                raise ApiError(503, "server is shutting down", "server_error", "shutting_down") from None
            raise ApiError(429, f"server busy: {e}; retry later", "rate_limit_error", "overloaded") from None
        created = int(time.time())
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + r.id
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def usage() -> dict[str, Any]:
            return {"prompt_tokens": n_prompt, "completion_tokens": len(r.out), "total_tokens": n_prompt + len(r.out),
                    "prompt_tokens_details": {"cached_tokens": int(r.info.get("reused_tokens", 0) or 0)}}

        def reuse() -> dict[str, Any]:
            i = r.info
            return {"kind": i.get("kind"), "reused_tokens": i.get("reused_tokens", 0), "from_model": i.get("sender_model"),
                    "plan": i.get("plan"), "recomputed_layers": i.get("recomputed_layers"),
                    "fallback": bool(i.get("missing")), "ttft_s": (r.t_first - r.created) if r.t_first else None}

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunk(delta: str | None, finish: str | None, first: bool = False) -> str:
                if kind == "chat":
                    d: dict[str, Any] = {}
                    if first:
                        d["role"] = "assistant"
                    if delta:
                        d["content"] = delta
                    choice = {"index": 0, "delta": d, "finish_reason": finish}
                else:
                    choice = {"index": 0, "text": delta or "", "finish_reason": finish}
                body = {"id": rid, "object": obj + (".chunk" if kind == "chat" else ""), "created": created,
                        "model": req.model, "choices": [choice]}
                if finish is not None:
                    body["droidspeak"] = reuse()
                return f"data: {json.dumps(body)}\n\n"

            async def events():
                try:
                    yield chunk(None, None, first=True) if kind == "chat" else ""
                    while True:
                        if await http.is_disconnected():
                            engine.cancel(r)
                            return
                        try:
                            ev, data = await asyncio.wait_for(queue.get(), timeout=1.0)
                        except asyncio.TimeoutError:
                            continue
                        if ev == "token":
                            yield chunk(data["text"], None)
                        else:
                            if data.get("error"):
                                yield f"data: {json.dumps({'error': {'message': data['error'], 'type': 'server_error'}})}\n\n"
                            else:
                                yield chunk(None, data["finish_reason"])
                            if include_usage:
                                yield f"data: {json.dumps({'id': rid, 'object': obj, 'created': created, 'model': req.model, 'choices': [], 'usage': usage()})}\n\n"
                            yield "data: [DONE]\n\n"
                            return
                finally:
                    if r.finish_reason is None:
                        engine.cancel(r)  # the client went away mid-stream

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        try:
            while True:
                ev, data = await queue.get()
                if ev == "done":
                    break
        except asyncio.CancelledError:
            engine.cancel(r)
            raise
        if data.get("error"):
            raise ApiError(500, data["error"], "server_error")
        finish = data["finish_reason"]
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": finish,
                      "logprobs": None}
        else:
            choice = {"index": 0, "text": r.text, "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice],
                "usage": usage(), "droidspeak": reuse()}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, http: HttpRequest):
        return await _run("completion", req, http)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, http: HttpRequest):
        return await _run("chat", req, http)

    return app


def _store_gauges(engine: Engine) -> None:
    if engine.store is None:
        return
    st = engine.store.backend.stats()
    tiers = st.get("tiers", [st])
    for t in tiers:
        engine.metrics.store_bytes.labels(t["name"]).set(t["bytes"])
        engine.metrics.store_errors.labels(t["name"]).set(t["errors"])
