"""The OpenAI-compatible HTTP API (FastAPI): models, completions, chat completions, SSE streaming,
health and Prometheus metrics. Errors use OpenAI's shape: ``{"error": {"message", "type", "code"}}``.

A request's route: :func:`build_request` validates the body and turns it into an engine
:class:`~droidspeak.serving.request.Request` (the prompt laid out by the one layout rule), the
engine prefills it through the one sharing path and decodes it, and :mod:`.render` shapes what
comes back, with the ``droidspeak`` field saying how the prefill shared.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ..core.prompt import PromptTokens, chat_prompt
from ..models.exact import exactness
from ..sharing.index import ProfileIndex
from . import render
from .config import Settings
from .engine import Engine
from .request import QueueFull, Request
from .schemas import ApiError, ChatRequest, CompletionRequest


# --------------------------------------------------------------------------- request building
def prompt_of(body: CompletionRequest | ChatRequest, tokenizer: Any) -> PromptTokens:
    """The prompt's tokens: a chat by the layout rule (every turn but the last is the shared prefix),
    a completion prompt as one piece."""
    if isinstance(body, ChatRequest):
        try:
            return chat_prompt(tokenizer, [m.model_dump() for m in body.messages])
        except Exception as e:  # noqa: BLE001 - a template that refuses this conversation
            raise ApiError(400, f"the model's chat template refuses these messages: {str(e).splitlines()[0]}") from None
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, "prompt must be a string or a list of exactly one string")
        prompt = prompt[0]
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ApiError(400, "prompt is empty")
    return PromptTokens(tuple(ids), ())


def build_request(engine: Engine, body: CompletionRequest | ChatRequest) -> Request:
    """A validated engine request (4xx :class:`ApiError` otherwise); events are wired by the caller."""
    s = engine.settings
    try:
        hosted = engine.host.get(body.model)
    except Exception as e:  # noqa: BLE001
        raise ApiError(404, str(e), code="model_not_found") from None
    prompt = prompt_of(body, hosted.loaded.tokenizer)
    n_prompt = len(prompt.ids)
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if max_tokens is None:
        # at least one token, so a prompt that already fills the context is refused below
        max_tokens = max(1, min(s.max_tokens_limit, s.max_model_len - n_prompt))
    if max_tokens > s.max_tokens_limit:
        raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {s.max_tokens_limit}")
    if n_prompt + max_tokens > s.max_model_len:
        raise ApiError(400, f"this model's maximum context length is {s.max_model_len} tokens; the prompt has "
                            f"{n_prompt} and max_tokens asks {max_tokens} more", code="context_length_exceeded")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4 or any(len(x) > 256 for x in stop):
        raise ApiError(400, "at most 4 stop sequences of at most 256 characters")
    return Request(body.model, prompt, max_tokens, body.temperature, body.top_p, body.seed, stop,
                   ignore_eos=body.ignore_eos)


def submit(engine: Engine, r: Request) -> None:
    try:
        engine.submit(r)
    except QueueFull as e:
        if engine.stopping:
            raise ApiError(503, "server is shutting down", "server_error", "shutting_down") from None
        raise ApiError(429, f"server busy: {e}; retry later", "rate_limit_error", "overloaded") from None


# --------------------------------------------------------------------------- answering
async def answer(engine: Engine, body: CompletionRequest | ChatRequest, http: HttpRequest):
    """Build, submit and answer one generation request (whole, or streamed as server-sent events)."""
    r = build_request(engine, body)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    r.on_event = lambda ev, data: loop.call_soon_threadsafe(events.put_nowait, (ev, data))
    submit(engine, r)
    chat = isinstance(body, ChatRequest)
    shape = render.Shape(chat, ("chatcmpl-" if chat else "cmpl-") + r.id, int(time.time()), body.model)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(engine, r, shape, events, http, usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        while True:
            ev, data = await events.get()
            if ev == "done":
                break
    except asyncio.CancelledError:
        engine.cancel(r)
        raise
    if data.get("error"):
        raise ApiError(500, data["error"], "server_error")
    return render.completion(shape, r, data["finish_reason"])


async def _stream(engine: Engine, r: Request, shape: render.Shape, events: asyncio.Queue, http: HttpRequest,
                  include_usage: bool):
    try:
        if shape.chat:
            yield render.chunk(shape, r, None, None, first=True)
        while True:
            if await http.is_disconnected():
                engine.cancel(r)
                return
            try:
                ev, data = await asyncio.wait_for(events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                continue
            if ev == "token":
                yield render.chunk(shape, r, data["text"], None)
                continue
            yield render.error_chunk(data["error"]) if data.get("error") else render.chunk(shape, r, None,
                                                                                           data["finish_reason"])
            if include_usage:
                yield render.usage_chunk(shape, r)
            yield render.DONE
            return
    finally:
        if r.finish_reason is None:
            engine.cancel(r)  # the client went away mid-stream


# --------------------------------------------------------------------------- the app
def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _guard(settings: Settings):
    """Middleware: API key (constant-time), body size, and never a traceback to the client."""

    async def guard(request: HttpRequest, call_next):
        if request.url.path.startswith("/v1/"):
            if settings.api_key:
                got = request.headers.get("authorization", "")
                if not hmac.compare_digest(got.encode(), f"Bearer {settings.api_key}".encode()):
                    return _error(ApiError(401, "invalid or missing API key", "authentication_error", "invalid_api_key"))
            size = request.headers.get("content-length")
            if size is not None and (not size.isdigit() or int(size) > settings.max_request_bytes):
                return _error(ApiError(413, f"request body over {settings.max_request_bytes} bytes"))
        try:
            return await call_next(request)
        except Exception:  # noqa: BLE001
            return _error(ApiError(500, "internal error", "server_error"))

    return guard


def create_app(engine: Engine) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if not engine.external and not engine.running:
            engine.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.stop)  # graceful: finish running requests

    app = FastAPI(title="droidspeak", version="0.1", lifespan=lifespan,
                  description="OpenAI-compatible serving where fine-tuned variants share KV caches")
    app.state.engine = engine
    app.openapi = lambda: _openapi(app, engine)  # type: ignore[method-assign]
    app.middleware("http")(_guard(engine.settings))

    @app.exception_handler(ApiError)
    async def _api_error(_req: HttpRequest, exc: ApiError):
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: HttpRequest, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(ApiError(400, f"invalid request: {loc or 'body'}: {first.get('msg', 'malformed')}"))

    @app.get("/health")
    async def health():
        return {"status": "ok" if engine.running and not engine.stopping else "stopping",
                "models": list(engine.host.models), **engine.load()}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import generate_latest

        engine.metrics.observe_store(engine.store)
        return PlainTextResponse(generate_latest(engine.metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": int(engine.started), "owned_by": "droidspeak", "root": name,
             "parent": h.parent, "max_model_len": engine.settings.max_model_len,
             "droidspeak": {"kind": h.kind.value, "identity": h.loaded.identity, "family": h.loaded.family.digest}}
            for name, h in engine.host.models.items()]}

    @app.get("/v1/droidspeak/pairs")
    async def pairs():
        return {"object": "list", "data": pairs_status(engine)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HttpRequest):
        return await answer(engine, body, http)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: HttpRequest):
        return await answer(engine, body, http)

    return app


def pairs_status(engine: Engine) -> list[dict[str, Any]]:
    """Every hosted (sender, receiver) pair that shares: exact ones with their proven plan, profiled
    ones with their profile's plan, the plan in force (the guard may have widened it), the profile's
    verified agreement and the live one from shadow checks."""
    index = ProfileIndex()
    guarded = {(st.profile.sender_identity, st.profile.receiver_identity): st for st in engine.guard.pairs.values()}
    out = []
    for sname, s in engine.host.models.items():
        for rname, r in engine.host.models.items():
            if sname == rname or s.loaded.family != r.loaded.family:
                continue
            producer = s.loaded.capture_weights
            ex = exactness(producer, r.loaded.weights)
            if ex.exact:
                out.append({"sender": sname, "receiver": rname, "kind": "exact", "exactness": ex.kind.value,
                            "current_plan": ex.plan, "profile": None, "verified_agreement": 1.0,
                            "live_agreement": None, "checks": 0, "widened": []})
                continue
            prof = index.find(r.loaded.family.digest, producer.identity, r.loaded.identity)
            if prof is None:
                continue
            st = guarded.get((prof.sender_identity, prof.receiver_identity))
            out.append({"sender": sname, "receiver": rname, "kind": "profiled", "profile": prof.name,
                        "profile_plan": prof.chosen_plan, "current_plan": str(st.plan) if st else prof.chosen_plan,
                        "verified_agreement": st.verified if st else prof.top1.get(prof.chosen_plan),
                        "live_agreement": st.live() if st else None, "live_first_token_kl": st.live_kl() if st else None,
                        "checks": st.checks if st else 0, "widened": st.widened if st else []})
    return out


def _openapi(app: FastAPI, engine: Engine) -> dict[str, Any]:
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
