"""The OpenAI-compatible HTTP API (FastAPI): models, completions, chat completions, SSE streaming,
health and Prometheus metrics. Errors use OpenAI's shape: ``{"error": {"message", "type", "code"}}``.

A request's route: :class:`~droidspeak.serving.intake.Intake` validates the body and turns it into
engine requests, one per choice (the prompt laid out by the one layout rule, the answer's grammar
compiled); the engine prefills each through the one sharing path and decodes it; :mod:`.render`
shapes what comes back (a tool call parsed by :mod:`.tools`), with the ``droidspeak`` field saying
how the prefill shared.
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

from ..models.exact import exactness
from ..sharing.index import ProfileIndex
from . import render
from . import tools as calls
from .config import Settings
from .engine import Engine
from .intake import Intake
from .request import QueueFull, Request
from .schemas import ApiError, ChatRequest, CompletionRequest


def submit(engine: Engine, reqs: list[Request]) -> None:
    """All of a request's choices, or none (a full queue cancels the ones already in)."""
    for i, r in enumerate(reqs):
        try:
            engine.submit(r)
        except QueueFull as e:
            for done in reqs[:i]:
                engine.cancel(done)
            if engine.stopping:
                raise ApiError(503, "server is shutting down", "server_error", "shutting_down") from None
            raise ApiError(429, f"server busy: {e}; retry later", "rate_limit_error", "overloaded") from None


# --------------------------------------------------------------------------- answering
async def answer(intake: Intake, body: CompletionRequest | ChatRequest, http: HttpRequest):
    """Build, submit and answer one generation request (whole, or streamed as server-sent events)."""
    engine = intake.engine
    reqs, offered = intake.build(body)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    for i, r in enumerate(reqs):
        r.on_event = lambda ev, data, i=i: loop.call_soon_threadsafe(events.put_nowait, (i, ev, data))
    submit(engine, reqs)
    chat = isinstance(body, ChatRequest)
    tok = engine.host.get(body.model).loaded.tokenizer
    shape = render.Shape(chat, ("chatcmpl-" if chat else "cmpl-") + reqs[0].id, int(time.time()), body.model,
                         lambda t: tok.decode([t]))
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(engine, reqs, offered, shape, events, http, usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache",
                                                                          "X-Accel-Buffering": "no"})
    finished: dict[int, dict] = {}
    try:
        while len(finished) < len(reqs):
            i, ev, data = await events.get()
            if ev == "done":
                finished[i] = data
    except asyncio.CancelledError:
        for r in reqs:
            engine.cancel(r)
        raise
    error = next((d["error"] for d in finished.values() if d.get("error")), None)
    if error:
        raise ApiError(500, error, "server_error")
    choices = [render.choice(shape, i, r, finished[i]["finish_reason"], calls.parse_call(r.text, offered) if offered
                             else None) for i, r in enumerate(reqs)]
    return render.completion(shape, choices, reqs)


async def _stream(engine: Engine, reqs: list[Request], offered: list, shape: render.Shape, events: asyncio.Queue,
                  http: HttpRequest, include_usage: bool):
    """The choices' events as server-sent events. With tools offered, an answer that may still become a
    call (it starts with ``{``) is held back until it ends: then it is one ``tool_calls`` delta if it
    parses as a call, else its text."""
    held = [offered and True for _ in reqs]  # still possibly a call
    pending = ["" for _ in reqs]
    left = len(reqs)
    try:
        if shape.chat:
            for i, r in enumerate(reqs):
                yield render.chunk(shape, r, None, None, first=True, index=i)
        while left:
            if await http.is_disconnected():
                for r in reqs:
                    engine.cancel(r)
                return
            try:
                i, ev, data = await asyncio.wait_for(events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                continue
            r = reqs[i]
            if ev == "token":
                if held[i]:
                    pending[i] += data["text"]
                    if pending[i].lstrip() and not pending[i].lstrip().startswith("{"):
                        held[i] = False  # plain text: send what was held
                        yield render.chunk(shape, r, pending[i], None, index=i, lp=render.logprobs(shape, r, 0, data["end"]))
                    continue
                yield render.chunk(shape, r, data["text"], None, index=i,
                                   lp=render.logprobs(shape, r, data["start"], data["end"]))
                continue
            left -= 1
            if data.get("error"):
                yield render.error_chunk(data["error"])
                continue
            finish = data["finish_reason"]
            if held[i]:
                call = calls.parse_call(r.text, offered)
                if call is not None:
                    yield render.chunk(shape, r, None, None, index=i, call=call, lp=render.logprobs(shape, r))
                    yield render.chunk(shape, r, None, "tool_calls", index=i)
                    continue
                if pending[i]:
                    yield render.chunk(shape, r, pending[i], None, index=i, lp=render.logprobs(shape, r))
            yield render.chunk(shape, r, None, finish, index=i)
        if include_usage:
            yield render.usage_chunk(shape, reqs)
        yield render.DONE
    finally:
        for r in reqs:
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
        if engine.warming:  # not ready yet: a load balancer keeps traffic away until the warm-up ends
            return JSONResponse({"status": "starting", "models": list(engine.host.models)}, status_code=503)
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

    intake = Intake(engine)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HttpRequest):
        return await answer(intake, body, http)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: HttpRequest):
        return await answer(intake, body, http)

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
