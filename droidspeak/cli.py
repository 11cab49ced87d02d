"""The ``droidspeak`` command line.

Every subcommand has ``--help``; those that report take ``--json``. Errors print one line
(``droidspeak: error: ...``) and exit with status 2; nothing a user can cause prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .errors import DroidspeakError  # noqa: E402


def _quiet_transformers() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=1) if getattr(args, "json", False) else text)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


# --------------------------------------------------------------------------- subcommands

def cmd_models(args: argparse.Namespace) -> int:
    from .models import describe_models

    rows = describe_models()
    text = _table([[r["name"], r["kind"], r["parent"] or "-", r["family"], r["identity"][:16],
                    ", ".join(f"{c['with']} ({c['plan']})" for c in r["cache_compatible"]) or "-"] for r in rows],
                  ["name", "kind", "parent", "family", "identity", "reads exactly the caches of (plan)"])
    _emit(args, rows, text)
    return 0


def cmd_compat(args: argparse.Namespace) -> int:
    from .family import compatibility
    from .models import load_model
    from .reuse import pair_exactness

    a, b = load_model(args.sender), load_model(args.receiver)
    v = compatibility(a.family, b.family)
    ex = pair_exactness(a, b) if v.ok else None
    data = {"sender": a.name, "receiver": b.name, "ok": v.ok, "reason": v.reason,
            "sender_identity": a.identity, "receiver_identity": b.identity, "family": a.family.digest,
            "exact": ex.to_dict() if ex else None}
    if not v.ok:
        text = f"{a.name} -> {b.name}: {v.reason}"
    elif ex is not None and ex.exact:
        text = (f"{a.name} -> {b.name}: may share caches; exact ({ex.kind.value}, plan {ex.plan}): {ex.reason}"
                + ("; holds for requests whose activation point lies after the shared context"
                   if ex.needs_activation_after_context else ""))
    else:
        text = f"{a.name} -> {b.name}: may share caches, through a profile (not exact: {ex.reason if ex else '-'})"
    _emit(args, data, text)
    return 0 if v.ok else 1


def cmd_reuse(args: argparse.Namespace) -> int:
    from .models import load_model
    from .reuse import parse_plan, prompt_for, require_shareable, run_reuse, warm_up

    if not 1 <= args.max_new_tokens <= 4096:
        raise DroidspeakError("--max-new-tokens must be between 1 and 4096")
    context = _read_context(args.context)
    sender, receiver = load_model(args.sender), load_model(args.receiver)
    require_shareable(sender, receiver)
    plan = parse_plan(args.plan, sender, receiver)
    prompt = prompt_for(sender, receiver, context, args.prompt)
    max_pos = getattr(receiver.config, "max_position_embeddings", None)
    if max_pos and len(prompt.ids) + args.max_new_tokens > max_pos:
        raise DroidspeakError(f"prompt of {len(prompt.ids)} tokens + {args.max_new_tokens} new exceeds the "
                              f"model's context of {max_pos}")
    warm_up(sender, receiver)
    rep = run_reuse(sender, receiver, prompt, plan, args.max_new_tokens)
    text = (
        f"sender {rep.sender} -> receiver {rep.receiver}, {rep.context_tokens} context tokens, plan {rep.plan} "
        f"({len(rep.recomputed_layers)}/{receiver.num_layers} layers recomputed)\n"
        f"  with plan    TTFT {rep.ttft_s:.3f}s : {rep.answer!r}\n"
        f"  full prefill TTFT {rep.full_ttft_s:.3f}s : {rep.full_answer!r}\n"
        f"  speedup {rep.full_ttft_s / rep.ttft_s:.2f}x, first-token KL {rep.first_token_kl:.4g}, "
        f"answer F1 vs full {rep.answer_f1_vs_full:.3f}"
    )
    _emit(args, rep.to_dict(), text)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from . import study, tasks
    from .models import load_model

    sender, receiver = load_model(args.sender), load_model(args.receiver)
    metric = None
    if args.data:
        rows = tasks.read_jsonl(args.data)[: args.n]
        metric = args.metric
    else:
        task = args.task or receiver.spec.task or "qa"
        rows = tasks.generate(task, "calib", args.n, receiver.tokenizer, seed=args.seed,
                              lengths=(args.min_tokens, args.max_tokens))
        metric = args.metric or tasks.METRIC_OF_TASK[task]
    if not rows:
        raise DroidspeakError("no rows to study")
    from .variants import answer_length

    # long enough for the receiver's task's answers (a JSON call needs ~60 tokens)
    max_new = args.max_new_tokens or answer_length(receiver.name, 24)
    result = study.sensitivity(sender, receiver, rows, metric, max_new, progress=not args.json)
    stem = f"sensitivity_{Path(sender.name).name}__{Path(receiver.name).name}"
    js, png = study.write(result, Path(args.out), stem)
    result["files"] = {"json": str(js), "png": str(png)}
    if args.profile_out:
        prof = study.provisional_profile(result, str(js))
        Path(args.profile_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.profile_out).write_text(json.dumps(prof, indent=1))
        result["files"]["profile"] = args.profile_out
    lines = [f"{x['layer']:>3}  {x['quality']:.3f}  {x['relative_drop']:+.1%}  kl={x['first_token_kl']:.3g}"
             + ("  CRITICAL" if x["critical"] else "") for x in result["layers"]]
    text = (f"{result['quality_metric']}: full prefill {result['quality_full_prefill']:.3f}, "
            f"full reuse {result['full_reuse']['quality']:.3f} ({result['full_reuse']['relative_drop']:+.1%} drop)\n"
            "layer quality drop\n" + "\n".join(lines) +
            f"\ncritical layers: {result['critical_layers']} ({result['critical_fraction']:.0%}); "
            f"contiguous block {study.critical_block(result)}\nwrote {', '.join(result['files'].values())}")
    _emit(args, result, text)
    return 0


def _load_rows(args: argparse.Namespace, receiver: Any, split: str) -> tuple[list[Any], str | None, dict[str, Any]]:
    """Rows from ``--data FILE`` or generated from a task's split; with their task's metric and provenance."""
    import hashlib

    from . import tasks

    if args.n < 1:
        raise DroidspeakError("--n must be at least 1")
    if args.data:
        rows = tasks.read_jsonl(args.data)[: args.n]
        digest = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()[:16]
        task_metric = args.metric
        source = {"file": str(args.data), "sha256_16": digest}
    else:
        task = args.task or receiver.spec.task or "qa"
        if task not in tasks.GENERATORS:
            raise DroidspeakError(f"unknown task '{task}'; known: {', '.join(tasks.GENERATORS)}")
        rows = tasks.generate(task, split, args.n, receiver.tokenizer, seed=args.seed,
                              lengths=(args.min_tokens, args.max_tokens))
        task_metric = args.metric or tasks.METRIC_OF_TASK[task]
        source = {"task": task, "split": split, "seed": args.seed, "lengths": [args.min_tokens, args.max_tokens]}
    if not rows:
        raise DroidspeakError("no rows to run on")
    return rows, task_metric, source


def _add_rows_args(sp: argparse.ArgumentParser, n: int, lengths: tuple[int, int], split: str) -> None:
    sp.add_argument("--data", help="JSONL rows (context, prompt, reference?); default: generated rows")
    sp.add_argument("--task", help=f"task whose {split} rows to generate (qa, code, toolcall, summary; "
                                   "default: the receiver's)")
    sp.add_argument("--metric", help="gold metric against references (f1, edit_sim, rouge_l, call_fields)")
    sp.add_argument("--n", type=int, default=n, help=f"rows (default {n})")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--min-tokens", type=int, default=lengths[0], help=f"generated rows (default {lengths[0]})")
    sp.add_argument("--max-tokens", type=int, default=lengths[1], help=f"generated rows (default {lengths[1]})")
    sp.add_argument("--max-new-tokens", type=int, help="answer length (default: the receiver's task's, else 24)")


def cmd_profile(args: argparse.Namespace) -> int:
    import time

    from .models import load_model
    from .profiler import Profiler, exact_profile, profile_command, write_profile
    from .reuse import pair_exactness, prompt_for, require_shareable
    from .variants import answer_length

    sender, receiver = load_model(args.sender), load_model(args.receiver)
    require_shareable(sender, receiver)
    ex = pair_exactness(sender, receiver)
    if ex.exact and not args.calibrate:  # proven from the weights: nothing to measure
        prof = exact_profile(sender, receiver, ex) | {"command": profile_command()}
        files = write_profile(prof, Path(args.out), plots=False)
        _emit(args, prof | {"files": files}, f"{sender.name} -> {receiver.name}: exact ({ex.kind.value}), plan "
              f"{ex.plan}, proven from the weights without calibrating: {ex.reason}\nwrote {files['profile']}")
        return 0
    if args.from_traffic:  # the prompts the server's shadow checks kept: what users actually send
        from .guard import TrafficLog
        from .store import open_backend

        if args.quality == "gold":
            raise DroidspeakError("traffic has no references: profile it label-free")
        from .paths import home

        args.store = args.store or f"disk:{home() / 'traffic'}"
        try:
            backend = open_backend(args.store, args.from_traffic)
        except ValueError as e:
            raise DroidspeakError(str(e)) from None
        prompts = TrafficLog(backend, args.from_traffic).rows(sender.capture_weights.identity, receiver.identity)
        prompts = prompts[-args.n:] if args.n else prompts
        if not prompts:
            raise DroidspeakError(f"no checked traffic for {sender.name} -> {receiver.name} in namespace "
                                  f"'{args.from_traffic}' of {args.store}")
        references, metric = [None] * len(prompts), None
        source: dict = {"traffic": args.from_traffic, "store": args.store, "rows": len(prompts)}
    else:
        rows, task_metric, source = _load_rows(args, receiver, "calib")
        metric = None
        if args.quality == "gold":
            metric = task_metric
            if metric is None:
                raise DroidspeakError("--quality gold needs --metric (or a task with references)")
        prompts = [prompt_for(sender, receiver, r.context, r.prompt) for r in rows]
        references = [r.reference for r in rows]
    t0 = time.time()
    prof = Profiler(sender, receiver, prompts, references, metric, budget=args.budget,
                    granularity=args.granularity, max_new_tokens=args.max_new_tokens or answer_length(receiver.name, 24),
                    bandwidth_gbps=args.bandwidth_gbps or None, search_budget=args.search_budget,
                    max_minutes=args.max_minutes, progress=not args.json).run()
    prof["data"] = source
    prof["command"] = profile_command()
    prof["wall_s"] = round(time.time() - t0, 1)
    files = write_profile(prof, Path(args.out))
    ch = prof["chosen"]
    text = (f"{prof['sender']} -> {prof['receiver']}: {prof['rows']} rows ({prof['context_tokens']['min']}-"
            f"{prof['context_tokens']['max']} tokens), quality {prof['quality']['metric']}, budget {args.budget:.1%}\n"
            f"  full reuse: quality drop {prof['full_reuse']['relative_drop']:.2%}, "
            f"mean KL {prof['full_reuse']['mean_kl']:.3g}\n"
            f"  chosen plan {ch['plan']}: {ch['recomputed_layers']}/{receiver.num_layers} layers, cost "
            f"{ch['cost']:.2f} of full prefill, quality drop {ch['relative_drop']:.2%} ({ch['verified']})\n"
            f"  {prof['search']['evaluated']} candidates, {prof['search']['verified']} decoded, "
            f"{len(prof['frontier'])} on the frontier; {prof['wall_s']:.0f}s\n"
            f"wrote {', '.join(files.values())}")
    _emit(args, {k: v for k, v in prof.items() if k != "candidates"} | {"files": files}, text)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_plan
    from .models import load_model
    from .reuse import parse_plan
    from .variants import answer_length

    sender, receiver = load_model(args.sender), load_model(args.receiver)
    plan = parse_plan(args.plan, sender, receiver)
    rows, metric, source = _load_rows(args, receiver, args.split)
    if args.label_free or any(r.reference is None for r in rows):
        metric = None
    res = evaluate_plan(sender, receiver, plan, rows, metric, args.max_new_tokens or answer_length(receiver.name, 24),
                        progress=not args.json)
    res["plan_spec"] = args.plan
    res["data"] = source
    from .profiler import profile_command

    res["command"] = profile_command()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    text = (f"{res['sender']} -> {res['receiver']}, plan {res['plan']} ({res['recomputed_layers']}/{res['num_layers']} "
            f"layers), {res['rows']} rows ({res['context_tokens']['min']}-{res['context_tokens']['max']} tokens), "
            f"{res['metric']}\n"
            f"  full prefill {res['quality_full']:.3f} | plan {res['quality_plan']:.3f} ({res['relative_drop']:+.1%} drop, "
            f"{res['ttft_speedup']:.2f}x TTFT) | full reuse {res['quality_full_reuse']:.3f} "
            f"({res['relative_drop_full_reuse']:+.1%} drop, {res['ttft_speedup_full_reuse']:.2f}x TTFT)")
    _emit(args, {k: v for k, v in res.items() if k != "per_row"}, text)
    return 0


def _open_store(args: argparse.Namespace):
    from .store import CacheStore, open_backend

    try:
        return CacheStore(open_backend(args.store, args.namespace), namespace=args.namespace, fmt=args.format)
    except ValueError as e:
        raise DroidspeakError(str(e)) from None


def _read_context(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise DroidspeakError(f"context file not found: {p}")
    return p.read_text(encoding="utf-8", errors="replace")


def cmd_prefill(args: argparse.Namespace) -> int:
    """A sender node: prefill a context and store its K/V and the E other models need."""
    from .models import load_model, registered_peers
    from .prompt import layout
    from .sender import capture
    from .sharing import needed_e_layers

    model = load_model(args.model)
    store = _open_store(args)
    prefix = layout(model.tokenizer, _read_context(args.context)).prefix
    e_layers = needed_e_layers(model, registered_peers(model))
    cap = capture(model, list(prefix), e_layers=e_layers)
    n = store.put(cap)
    if n == 0:
        raise DroidspeakError("nothing was stored (context shorter than one block, or the store refused the write)")
    data = {"model": model.name, "identity": model.identity, "stored_as": cap.sender_identity,
            "context_tokens": len(prefix), "stored_tokens": n,
            "e_layers": e_layers, "bytes": cap.nbytes(), "store": args.store, "namespace": args.namespace}
    _emit(args, data, f"{model.name} stored {n} of {len(prefix)} context tokens (K/V of {model.num_layers} layers, "
                      f"E at {e_layers or 'no layers'}) in {args.store}")
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    """A receiver node: answer a request, reusing whatever the store holds for this context."""
    from .decode import greedy_text
    from .models import load_model, registered_peers
    from .prompt import layout
    from .sharing import ShareOptions, serve_prefill

    model = load_model(args.model)
    store = _open_store(args)
    prompt = layout(model.tokenizer, _read_context(args.context), args.prompt)
    opts = ShareOptions(policy=args.policy, store_on_miss=not args.no_store, room=args.max_new_tokens)
    res = serve_prefill(model, store, prompt, opts, peers=registered_peers(model))
    answer = greedy_text(model, res, args.max_new_tokens)
    info = res.info
    data = {"model": model.name, "answer": answer, "ttft_s": res.timings.prefill_s,
            "recomputed_layers": res.recomputed_layers, "prompt_tokens": len(prompt.ids),
            "store_stats": dict(store.stats.counts)} | info.to_dict()
    _emit(args, data, f"{answer}\n-- {info.kind.value}: reused {info.reused_tokens} tokens"
                      f"{' from ' + info.sender[:12] if info.sender else ''}, plan {info.plan}, "
                      f"{len(res.recomputed_layers)}/{model.num_layers} layers recomputed, TTFT {res.timings.prefill_s:.3f}s")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Ask a running server how every pair shares: plan in force, verified and live agreement."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(args.url.rstrip("/") + "/v1/droidspeak/pairs")
    key = args.api_key or os.environ.get("DROIDSPEAK_API_KEY")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.loads(resp.read())["data"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        raise DroidspeakError(f"cannot read {req.full_url}: {e}") from None
    fmt = lambda x: "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))  # noqa: E731
    rows = [[d["sender"], d["receiver"], d["kind"], d.get("profile_plan") or "-", d["current_plan"],
             fmt(d.get("verified_agreement")), fmt(d.get("live_agreement")), str(d.get("checks", 0)),
             str(len(d.get("widened") or []))] for d in data]
    _emit(args, data, _table(rows, ["sender", "receiver", "kind", "profile plan", "plan now", "verified", "live",
                                    "checks", "widened"]) if rows else "no pairs share on this server")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the OpenAI-compatible server until SIGINT/SIGTERM (running requests finish first)."""
    import logging

    import uvicorn

    from .serving.config import Settings

    if args.print_settings:
        print(_table([[n, e, str(d), h] for n, e, d, h in Settings.table()], ["setting", "environment", "default", "meaning"]))
        return 0
    s = Settings.load(args.config, {"host": args.host, "port": args.port, "models": args.models, "store": args.store,
                                    "namespace": args.namespace, "api_key": args.api_key})
    app = build_app(s)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=s.host, port=s.port, log_level="info", timeout_graceful_shutdown=30)
    return 0


def build_app(s):
    from .serving.api import create_app
    from .serving.engine import Engine, ModelHost
    from .store import CacheStore, open_backend
    from .store.keys import check_namespace

    try:
        check_namespace(s.namespace)
        store = CacheStore(open_backend(s.store, s.namespace), namespace=s.namespace) if s.store else None
    except ValueError as e:
        raise DroidspeakError(str(e)) from None
    names = [n.strip() for n in s.models.split(",") if n.strip()] or None
    host = ModelHost(names)
    return create_app(Engine(host, store, s))


def cmd_store_server(args: argparse.Namespace) -> int:
    """Run a Redis-protocol server for the shared tier (the system's redis-server, else the bundled valkey-server)."""
    from .store.server import run_foreground, server_command

    cmd = server_command(args.port, args.bind, args.dir, args.persist)
    print(f"starting {cmd[0]} on {args.bind}:{args.port} (Ctrl-C stops it); nodes use --store redis://{args.bind}:"
          f"{args.port}", file=sys.stderr, flush=True)
    return run_foreground(args.port, args.bind, args.dir, args.persist)


def cmd_variants(args: argparse.Namespace) -> int:
    from . import variants

    if args.variants_cmd == "list":
        rows = [{"name": n, "base": r.parent, "task": r.task, "description": r.description, "steps": r.steps,
                 "questions_per_context": r.questions, "context_tokens": list(r.train_lengths), "ranks": r.ranks}
                for n, r in variants.RECIPES.items()]
        _emit(args, {"recipes": rows, "pairs": variants.PAIRS},
              _table([[r["name"], r["base"], r["task"], str(r["steps"]), r["description"]] for r in rows],
                     ["recipe", "base", "task", "steps", "description"])
              + "\nadapter kinds: --adapter lora (NAME), alora (NAME-alora), top:K (NAME-topK)"
              + "\nprofiled pairs (sender -> receiver): " + ", ".join(f"{s} -> {r}" for s, r in variants.PAIRS))
        return 0
    if args.variants_cmd == "train":
        out = variants.train(args.name, args.adapter, Path(args.out) if args.out else None, args.steps,
                             progress=not args.json)
        meta = json.loads((out / "droidspeak.json").read_text())
        _emit(args, {"adapter": str(out), "train_wall_s": meta["train_wall_s"], "final_loss": meta["loss_curve"][-1]},
              f"wrote {out} in {meta['train_wall_s']}s (final loss {meta['loss_curve'][-1]})")
        return 0
    if args.variants_cmd == "eval":
        res = variants.evaluate(args.names, args.n, progress=not args.json, lengths=(args.min_tokens, args.max_tokens))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(res, indent=1))
        summary = {k: v for k, v in res.items() if k != "per_row"}
        _emit(args, summary, f"held-out {res['task']} ({res['rows']} rows, {res['min_tokens']}-{res['max_tokens']} "
              f"tokens), {res['metric']}: " + ", ".join(f"{k} {v:.3f}" for k, v in res["scores"].items()))
        return 0
    raise DroidspeakError("use: droidspeak variants {list,train,eval}")


def cmd_data(args: argparse.Namespace) -> int:
    from . import tasks
    from .models import load_model

    tok = load_model("base").tokenizer
    rows = tasks.generate(args.task, args.split, args.n, tok, seed=args.seed,
                          lengths=(args.min_tokens, args.max_tokens) if args.min_tokens else None)
    tasks.write_jsonl(rows, args.out)
    _emit(args, {"rows": len(rows), "out": args.out}, f"wrote {len(rows)} rows to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="droidspeak",
        description="Fine-tuned variants of one base LLM share KV caches (DroidSpeak, NSDI 2026).",
    )
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def add(name: str, help_: str, fn, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(fn=fn)
        return sp

    add("models", "list every available model: name, kind, parent, family, identity", cmd_models)

    sp = add("compat", "say whether two models may share caches, and why not", cmd_compat)
    sp.add_argument("--sender", required=True, help="registered name, HF model dir or PEFT adapter dir")
    sp.add_argument("--receiver", required=True, help="registered name, HF model dir or PEFT adapter dir")

    sp = add("reuse", "answer one request with a plan over a sender's cache, and with full prefill", cmd_reuse)
    sp.add_argument("--sender", required=True, help="model that prefills the context (name or path)")
    sp.add_argument("--receiver", required=True, help="model that answers reusing it (name or path)")
    sp.add_argument("--context", required=True, help="file holding the shared context")
    sp.add_argument("--prompt", required=True, help="the receiver's request about the context")
    sp.add_argument("--plan", default="all", help="none | all | S:E[,S:E...] | profile:PATH | exact (the plan the "
                                                  "weights prove exact for this pair) (default: all)")
    sp.add_argument("--max-new-tokens", type=int, default=32)

    sp = add("study", "studies of the algorithm (sensitivity: the paper's Fig. 7)", cmd_study)
    sp.add_argument("kind", choices=["sensitivity"], help="which study")
    sp.add_argument("--sender", required=True)
    sp.add_argument("--receiver", required=True)
    sp.add_argument("--data", help="JSONL rows (context, prompt, reference?); default: generated calib rows")
    sp.add_argument("--task", help="task whose calibration rows to generate (default: the receiver's)")
    sp.add_argument("--metric", help="metric against references (f1, edit_sim, rouge_l, call_fields)")
    sp.add_argument("--n", type=int, default=4, help="rows (default 4)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--min-tokens", type=int, default=1024)
    sp.add_argument("--max-tokens", type=int, default=1536)
    sp.add_argument("--max-new-tokens", type=int, help="answer length (default: the receiver's task's, else 24)")
    sp.add_argument("--out", default="bench/results", help="folder for the JSON and PNG (default bench/results)")
    sp.add_argument("--profile-out", help="also write a provisional profile whose plan is the critical-layer block")

    sp = add("variants", "the shipped fine-tuned variants: list, train, eval", cmd_variants)
    vsub = sp.add_subparsers(dest="variants_cmd", metavar="ACTION")
    vl = vsub.add_parser("list", help="variants and the pairs that share")
    vl.add_argument("--json", action="store_true")
    vt = vsub.add_parser("train", help="train a variant's LoRA adapter from its recipe")
    vt.add_argument("name")
    vt.add_argument("--adapter", default="lora", help="lora (every layer), alora (activated: exact reuse of the base's "
                                                     "context), top:K (layers K+ only: exact with plan K:L)")
    vt.add_argument("--steps", type=int, help="override the recipe's step count")
    vt.add_argument("--out", help="adapter folder (default adapters/NAME)")
    vt.add_argument("--json", action="store_true")
    ve = vsub.add_parser("eval", help="score variants of one task and their base on the same held-out rows")
    ve.add_argument("names", nargs="+", metavar="NAME")
    ve.add_argument("--n", type=int, default=30)
    ve.add_argument("--min-tokens", type=int, default=1024)
    ve.add_argument("--max-tokens", type=int, default=4096)
    ve.add_argument("--out", help="write the full result (per row) as JSON here")
    ve.add_argument("--json", action="store_true")

    sp = add("profile", "profile a pair: the cheapest recompute plan within a quality budget", cmd_profile)
    sp.add_argument("--sender", required=True, help="model that prefills the context (name or path)")
    sp.add_argument("--receiver", required=True, help="model that reuses it (name or path)")
    _add_rows_args(sp, 10, (1024, 2048), "calib")
    sp.add_argument("--quality", choices=["label-free", "gold"], default="label-free",
                    help="label-free: agreement with the receiver's own full-prefill answer (default); "
                         "gold: the task metric against references")
    sp.add_argument("--budget", type=float, default=0.01, help="largest relative quality drop (default 0.01 = 1%%)")
    sp.add_argument("--granularity", type=int, default=2, help="layers per unit of a group (default 2)")
    sp.add_argument("--bandwidth-gbps", type=float, default=10.0,
                    help="link the caches come over, for the cost model (default 10; 0: local, free)")
    sp.add_argument("--search-budget", type=int, default=40, help="multi-group plans to measure (default 40)")
    sp.add_argument("--max-minutes", type=float, default=30.0, help="stop searching early past this (default 30)")
    sp.add_argument("--out", required=True, help="profile JSON to write (plots go beside it)")
    sp.add_argument("--calibrate", action="store_true",
                    help="measure even a pair the weights prove exact (default: write the proven plan)")
    sp.add_argument("--from-traffic", metavar="NAMESPACE",
                    help="profile on the prompts the server's shadow checks kept in this store namespace "
                         "(the last --n of them), not on generated rows")
    sp.add_argument("--store", help="with --from-traffic: the server's disk tier (disk:PATH) or Redis; default: "
                                    "$DROIDSPEAK_HOME/traffic, where a server without a disk tier keeps them")

    sp = add("eval", "evaluate a plan on rows: full prefill vs plan vs full reuse, quality and TTFT", cmd_eval)
    sp.add_argument("--sender", required=True)
    sp.add_argument("--receiver", required=True)
    sp.add_argument("--plan", required=True, help="none | all | S:E[,S:E...] | profile:PATH")
    _add_rows_args(sp, 20, (1024, 8000), "heldout")
    sp.add_argument("--split", choices=["heldout", "calib"], default="heldout",
                    help="generated rows of this split (calib: the rows a profile was measured on, to re-check it)")
    sp.add_argument("--label-free", action="store_true", help="score agreement with full prefill, not references")
    sp.add_argument("--out", help="write the full result (per row) as JSON here")

    for name, help_, fn in (("prefill", "sender node: prefill a context and store K/V and E", cmd_prefill),
                            ("answer", "receiver node: answer a request reusing the store", cmd_answer)):
        sp = add(name, help_, fn)
        sp.add_argument("--model", required=True, help="registered name, HF model dir or PEFT adapter dir")
        sp.add_argument("--context", required=True, help="file holding the shared context")
        sp.add_argument("--store", default="memory", help="memory[:SIZE] | disk:PATH[::SIZE] | redis://HOST:PORT[/DB]"
                                                          " (tiers joined by ',')")
        sp.add_argument("--namespace", default=os.environ.get("DROIDSPEAK_NAMESPACE", "default"),
                        help="deployment namespace inside the store (default: default)")
        sp.add_argument("--format", default="native", choices=["native", "fp16", "bf16", "int8"],
                        help="transfer format of stored tensors")
        if name == "answer":
            sp.add_argument("--prompt", required=True)
            sp.add_argument("--max-new-tokens", type=int, default=32)
            sp.add_argument("--policy", choices=["bandwidth", "profile", "load"], default="bandwidth",
                            help="plan choice: lowest predicted TTFT within budget (default) or the profile's")
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
    sp.add_argument("--api-key", help="require this bearer key (or DROIDSPEAK_API_KEY)")
    sp.add_argument("--print-settings", action="store_true", help="print the settings table and exit")

    sp = add("status", "how a running server's pairs share: plans in force, verified and live agreement", cmd_status)
    sp.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    sp.add_argument("--api-key", help="bearer key (default: DROIDSPEAK_API_KEY)")

    sp = add("store-server", "run a Redis-protocol server for the shared store tier (no root needed)",
             cmd_store_server, json_flag=False)
    sp.add_argument("--port", type=int, default=6379)
    sp.add_argument("--bind", default="127.0.0.1", help="address to listen on (another address: a private network)")
    sp.add_argument("--dir", help="working directory for the server's files")
    sp.add_argument("--persist", action="store_true", help="keep snapshots on disk (default: memory only)")

    sp = add("data", "generate task rows as JSONL (context, prompt, reference)", cmd_data)
    sp.add_argument("--task", required=True, choices=["qa", "code", "toolcall", "summary"])
    sp.add_argument("--split", required=True, choices=["train", "calib", "heldout"])
    sp.add_argument("--n", type=int, default=20)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--min-tokens", type=int)
    sp.add_argument("--max-tokens", type=int)
    sp.add_argument("--out", required=True)

    sp = add("demo", "the base reads a long document once; each variant answers reusing its cache", cmd_demo)
    sp.add_argument("--tokens", type=int, default=3000, help="approximate document length in tokens")
    sp.add_argument("--max-new-tokens", type=int, help="answer length (default: each variant's task's)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    if args.cmd == "variants" and not args.variants_cmd:
        parser.parse_args(["variants", "--help"])
    _quiet_transformers()
    try:
        return int(args.fn(args) or 0)
    except DroidspeakError as e:
        print(f"droidspeak: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("droidspeak: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        return 0


if __name__ == "__main__":
    sys.exit(main())
