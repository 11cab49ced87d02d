"""Commands that run a node: a sender (``prefill``), a receiver (``answer``), the server (``serve``),
the shared tier's Redis-protocol server (``store-server``)."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import DroidspeakError
from .common import add_store_args, emit, open_store, read_context, table


def cmd_prefill(args: argparse.Namespace) -> int:
    """A sender node: prefill a context and store its K/V and the E other models need."""
    from ..core.capture import capture
    from ..core.prompt import layout
    from ..models import load_model
    from ..sharing import capture_peers, needed_e_layers
    from ..store.backends import redact_spec

    store = open_store(args)  # a store this node may not use is refused before any model loads
    model = load_model(args.model)
    prefix = layout(model.tokenizer, read_context(args.context)).prefix
    e_layers = needed_e_layers(model, capture_peers(model))
    cap = capture(model, list(prefix), e_layers=e_layers)
    n = store.put(cap)
    if n == 0:
        raise DroidspeakError("nothing was stored (context shorter than one block, or the store refused the write)")
    data = {"model": model.name, "identity": model.identity, "stored_as": cap.sender_identity,
            "context_tokens": len(prefix), "stored_tokens": n,
            "e_layers": e_layers, "bytes": cap.nbytes(), "store": redact_spec(args.store), "namespace": args.namespace}
    emit(args, data, f"{model.name} stored {n} of {len(prefix)} context tokens (K/V of {model.num_layers} layers, "
                     f"E at {e_layers or 'no layers'}) in {redact_spec(args.store)}")
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    """A receiver node: answer a request, reusing whatever the store holds for this context."""
    from ..core.decode import greedy_text
    from ..core.prompt import layout
    from ..models import load_model
    from ..sharing import ShareOptions, serve_prefill

    store = open_store(args)
    model = load_model(args.model)
    prompt = layout(model.tokenizer, read_context(args.context), args.prompt)
    opts = ShareOptions(policy=args.policy, store_on_miss=not args.no_store, room=args.max_new_tokens)
    res = serve_prefill(model, store, prompt, opts)
    answer = greedy_text(model, res, args.max_new_tokens)
    info = res.info
    data = {"model": model.name, "answer": answer, "ttft_s": res.timings.prefill_s,
            "recomputed_layers": res.recomputed_layers, "prompt_tokens": len(prompt.ids),
            "store_stats": dict(store.stats.counts)} | info.to_dict()
    emit(args, data, f"{answer}\n-- {info.kind.value}: reused {info.reused_tokens} tokens"
                     f"{' from ' + info.sender[:12] if info.sender else ''}, plan {info.plan}, "
                     f"{len(res.recomputed_layers)}/{model.num_layers} layers recomputed, TTFT {res.timings.prefill_s:.3f}s")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the OpenAI-compatible server until SIGINT/SIGTERM (running requests finish first)."""
    import logging

    from ..serving.app import build_app
    from ..serving.config import Settings

    s = Settings.load(args.config, {"host": args.host, "port": args.port, "models": args.models, "store": args.store,
                                    "namespace": args.namespace, "api_key": args.api_key,
                                    "insecure_store": True if args.insecure_store else None})
    if args.print_settings:  # what this node would run with: defaults, then the config file, environment and flags
        print(table([[n, e, v, "changed" if changed else ""] for n, e, v, changed in s.values()],
                    ["setting", "environment", "value", "from the default"]))
        return 0
    app = build_app(s)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_on_main_thread(app, s.host, s.port)


def serve_on_main_thread(app, host: str, port: int) -> int:
    """The engine loop on this (the main) thread, the HTTP server on another; SIGTERM or Ctrl-C stops
    taking requests, lets running ones finish, then both stop."""
    import signal
    import threading

    import uvicorn

    engine = app.state.engine
    engine.external = True
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30))

    def http() -> None:
        try:
            server.run()
        finally:
            engine.stop(timeout=0)  # the HTTP side is gone (or never came up): the loop ends once idle

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.handle_exit)
    t = threading.Thread(target=http, name="droidspeak-http", daemon=True)
    t.start()
    engine.run()
    t.join(60)
    return 0 if server.started else 1


def cmd_store_server(args: argparse.Namespace) -> int:
    """Run a Redis-protocol server for the shared tier (the system's redis-server, else the bundled valkey-server)."""
    from ..store.server import StoreServer

    server = StoreServer(args.port, args.bind, args.dir, args.persist, password=args.password or None)
    print(server.announce(), file=sys.stderr, flush=True)
    return server.run_foreground()


def register(add) -> None:
    from ..kinds import POLICIES

    for name, help_, fn in (("prefill", "sender node: prefill a context and store K/V and E", cmd_prefill),
                            ("answer", "receiver node: answer a request reusing the store", cmd_answer)):
        sp = add(name, help_, fn)
        sp.add_argument("--model", required=True, help="registered name, HF model dir or PEFT adapter dir")
        sp.add_argument("--context", required=True, help="file holding the shared context")
        sp.add_argument("--store", default="memory", help="memory[:SIZE] | disk:PATH[::SIZE] | redis://HOST:PORT[/DB]"
                                                          " (tiers joined by ',')")
        add_store_args(sp)
        sp.add_argument("--format", default="native", choices=["native", "fp16", "bf16", "int8"],
                        help="transfer format of stored tensors")
        if name == "answer":
            sp.add_argument("--prompt", required=True)
            sp.add_argument("--max-new-tokens", type=int, default=32)
            sp.add_argument("--policy", choices=POLICIES, default="bandwidth",
                            help="plan choice: lowest predicted TTFT within budget (bandwidth, the default), the "
                                 "profile's own (profile), or by load (load)")
            sp.add_argument("--no-store", action="store_true", help="do not store this model's prefill on a miss")

    sp = add("serve", "OpenAI-compatible server; variants share caches (settings: --print-settings)", cmd_serve,
             json_flag=False)
    sp.add_argument("--config", help="settings file (JSON or TOML); environment variables and flags override it")
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.add_argument("--models", help="comma-separated models to host (default: all shipped)")
    sp.add_argument("--store", help="store tiers, e.g. memory:2GB or memory:1GB,redis://host:6379 (nodes with the "
                                    "same Redis share caches)")
    sp.add_argument("--namespace", help="deployment namespace inside the store")
    sp.add_argument("--insecure-store", action="store_true",
                    help="accept a Redis tier on another machine without a store secret (DROIDSPEAK_STORE_SECRET)")
    sp.add_argument("--api-key", help="require this bearer key (or DROIDSPEAK_API_KEY)")
    sp.add_argument("--print-settings", action="store_true",
                    help="print the settings this node would run with (defaults, then config file, environment, "
                         "flags) and exit")

    sp = add("store-server", "run a Redis-protocol server for the shared store tier (no root needed)",
             cmd_store_server, json_flag=False)
    sp.add_argument("--port", type=int, default=6379)
    sp.add_argument("--bind", default="127.0.0.1", help="address to listen on (any other than loopback requires a "
                                                        "password: --password, or one is generated)")
    sp.add_argument("--password", default=os.environ.get("DROIDSPEAK_STORE_PASSWORD", ""),
                    help="the password clients give (redis://:PASSWORD@host:port); default: DROIDSPEAK_STORE_PASSWORD, "
                         "else none on loopback and a generated one (printed once, kept in a 0600 file) elsewhere")
    sp.add_argument("--dir", help="working directory for the server's files")
    sp.add_argument("--persist", action="store_true", help="keep snapshots on disk (default: memory only)")
