"""Commands that measure one pair: ``reuse``, ``study``, ``profile``, ``eval``; and ``demo``."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from ..errors import DroidspeakError
from .common import add_rows_args, command_line, emit, load_rows, open_store, read_context


def cmd_reuse(args: argparse.Namespace) -> int:
    if not 1 <= args.max_new_tokens <= 4096:
        raise DroidspeakError("--max-new-tokens must be between 1 and 4096")
    context = read_context(args.context)  # mistyped arguments are refused before the model stack is imported
    from ..models import load_model, resolve

    resolve(args.sender), resolve(args.receiver)
    from ..harness.reuse import parse_plan, prompt_for, run_reuse, warm_up
    from ..models.family import require_compatible

    sender, receiver = load_model(args.sender), load_model(args.receiver)
    require_compatible(sender.family, receiver.family, sender.name, receiver.name)
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
    emit(args, rep.to_dict(), text)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .. import tasks
    from ..harness import study
    from ..models import load_model
    from ..training.variants import answer_length

    sender, receiver = load_model(args.sender), load_model(args.receiver)
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
    # long enough for the receiver's task's answers (a JSON call needs ~60 tokens)
    max_new = args.max_new_tokens or answer_length(receiver.name, 24)
    result = study.sensitivity(sender, receiver, rows, metric, max_new, progress=not args.json)
    stem = f"sensitivity_{Path(sender.name).name}__{Path(receiver.name).name}"
    js, png = study.write(result, Path(args.out), stem)
    result["files"] = {"json": str(js), "png": str(png)}
    if args.profile_out:
        study.provisional_profile(result, str(js)).save(args.profile_out)
        result["files"]["profile"] = args.profile_out
    lines = [f"{x['layer']:>3}  {x['quality']:.3f}  {x['relative_drop']:+.1%}  kl={x['first_token_kl']:.3g}"
             + ("  CRITICAL" if x["critical"] else "") for x in result["layers"]]
    text = (f"{result['quality_metric']}: full prefill {result['quality_full_prefill']:.3f}, "
            f"full reuse {result['full_reuse']['quality']:.3f} ({result['full_reuse']['relative_drop']:+.1%} drop)\n"
            "layer quality drop\n" + "\n".join(lines) +
            f"\ncritical layers: {result['critical_layers']} ({result['critical_fraction']:.0%}); "
            f"contiguous block {study.critical_block(result)}\nwrote {', '.join(result['files'].values())}")
    emit(args, result, text)
    return 0


def _traffic_prompts(args: argparse.Namespace, sender, receiver):
    """The prompts the server's shadow checks kept: what users actually send."""
    from ..paths import home
    from ..serving.traffic import TrafficLog
    from ..store import open_backend
    from ..store.backends import redact_spec

    if args.quality == "gold":
        raise DroidspeakError("traffic has no references: profile it label-free")
    try:
        if args.store:  # the server's own tiers, sealed under DROIDSPEAK_STORE_SECRET as the server's are
            backend = open_store(args, args.store, args.from_traffic).backend
            if backend is None:
                raise DroidspeakError("--store names no disk or Redis tier, where a server keeps checked traffic")
        else:  # where a server without a disk tier keeps them (a local folder, never sealed)
            args.store = f"disk:{home() / 'traffic'}"
            backend = open_backend(args.store, args.from_traffic)
        log = TrafficLog(backend, args.from_traffic)
    except ValueError as e:
        raise DroidspeakError(str(e)) from None
    prompts = log.rows(sender.capture_weights.identity, receiver.identity)
    prompts = prompts[-args.n:] if args.n else prompts
    if not prompts:
        raise DroidspeakError(f"no checked traffic for {sender.name} -> {receiver.name} in namespace "
                              f"'{args.from_traffic}' of {redact_spec(args.store)}")
    return prompts, {"traffic": args.from_traffic, "store": redact_spec(args.store), "rows": len(prompts)}


def cmd_profile(args: argparse.Namespace) -> int:
    from ..harness.reuse import pair_exactness, prompt_for
    from ..models import load_model
    from ..models.family import require_compatible
    from ..profiling import Profiler, exact_profile, write_profile
    from ..training.variants import answer_length

    sender, receiver = load_model(args.sender), load_model(args.receiver)
    require_compatible(sender.family, receiver.family, sender.name, receiver.name)
    ex = pair_exactness(sender, receiver)
    if ex.exact and not args.calibrate:  # proven from the weights: nothing to measure
        prof, files = write_profile(replace(exact_profile(sender, receiver, ex), command=command_line()),
                                    Path(args.out), plots=False)
        emit(args, prof.to_dict() | {"files": files}, f"{sender.name} -> {receiver.name}: exact ({ex.kind.value}), "
             f"plan {ex.plan}, proven from the weights without calibrating: {ex.reason}\nwrote {files['profile']}")
        return 0
    if args.from_traffic:
        prompts, source = _traffic_prompts(args, sender, receiver)
        references, metric = [None] * len(prompts), None
    else:
        rows, task_metric, source = load_rows(args, receiver, "calib")
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
    prof = replace(prof, data=source, command=command_line(), wall_s=round(time.time() - t0, 1))
    prof, files = write_profile(prof, Path(args.out))
    ch, fr, ctx = prof.chosen, prof.full_reuse, prof.context_tokens or {}
    assert ch is not None and fr is not None and prof.search is not None
    text = (f"{prof.sender} -> {prof.receiver}: {prof.rows} rows ({ctx.get('min')}-{ctx.get('max')} tokens), "
            f"quality {prof.quality.metric}, budget {args.budget:.1%}\n"
            f"  full reuse: quality drop {fr.relative_drop:.2%}, mean KL {fr.mean_kl:.3g}\n"
            f"  chosen plan {ch.plan}: {ch.recomputed_layers}/{receiver.num_layers} layers, cost "
            f"{ch.cost:.2f} of full prefill, quality drop {ch.relative_drop:.2%} ({ch.verified})\n"
            f"  {prof.search['evaluated']} candidates, {prof.search['verified']} decoded, "
            f"{len(prof.frontier)} on the frontier; {prof.wall_s:.0f}s\n"
            f"wrote {', '.join(files.values())}")
    emit(args, {k: v for k, v in prof.to_dict().items() if k != "candidates"} | {"files": files}, text)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from ..harness.evaluate import evaluate_plan
    from ..harness.reuse import parse_plan
    from ..models import load_model
    from ..training.variants import answer_length

    sender, receiver = load_model(args.sender), load_model(args.receiver)
    plan = parse_plan(args.plan, sender, receiver)
    rows, metric, source = load_rows(args, receiver, args.split)
    if args.label_free or any(r.reference is None for r in rows):
        metric = None
    res = evaluate_plan(sender, receiver, plan, rows, metric, args.max_new_tokens or answer_length(receiver.name, 24),
                        progress=not args.json)
    res["plan_spec"] = args.plan
    res["data"] = source
    res["command"] = command_line()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    text = (f"{res['sender']} -> {res['receiver']}, plan {res['plan']} ({res['recomputed_layers']}/{res['num_layers']} "
            f"layers), {res['rows']} rows ({res['context_tokens']['min']}-{res['context_tokens']['max']} tokens), "
            f"{res['metric']}\n"
            f"  full prefill {res['quality_full']:.3f} | plan {res['quality_plan']:.3f} ({res['relative_drop']:+.1%} drop, "
            f"{res['ttft_speedup']:.2f}x TTFT) | full reuse {res['quality_full_reuse']:.3f} "
            f"({res['relative_drop_full_reuse']:+.1%} drop, {res['ttft_speedup_full_reuse']:.2f}x TTFT)\n"
            f"  95% CI over rows, paired: plan drop {_ci(res['intervals']['relative_drop'], '{:+.1%}')}, "
            f"plan minus full prefill {_ci(res['intervals']['minus_full'], '{:+.3f}')}")
    emit(args, {k: v for k, v in res.items() if k != "per_row"}, text)
    return 0


def _ci(d: dict | None, fmt: str) -> str:
    if d is None:
        return "n/a (the full prefill scores 0)"
    return f"{fmt.format(d['value'])} [{fmt.format(d['ci95'][0])}, {fmt.format(d['ci95'][1])}]"


def cmd_demo(args: argparse.Namespace) -> int:
    from ..harness.demo import run_demo

    return run_demo(args)


def register(add) -> None:
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

    sp = add("profile", "profile a pair: the cheapest recompute plan within a quality budget", cmd_profile)
    sp.add_argument("--sender", required=True, help="model that prefills the context (name or path)")
    sp.add_argument("--receiver", required=True, help="model that reuses it (name or path)")
    add_rows_args(sp, 10, (1024, 2048), "calib")
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
    sp.add_argument("--plan", required=True, help="none | all | S:E[,S:E...] | profile:PATH | exact")
    add_rows_args(sp, 20, (1024, 8000), "heldout")
    sp.add_argument("--split", choices=["heldout", "calib"], default="heldout",
                    help="generated rows of this split (calib: the rows a profile was measured on, to re-check it)")
    sp.add_argument("--label-free", action="store_true", help="score agreement with full prefill, not references")
    sp.add_argument("--out", help="write the full result (per row) as JSON here")

    sp = add("demo", "the base reads each task's document once; each variant answers reusing its cache", cmd_demo)
    sp.add_argument("--tokens", type=int, default=1500,
                    help="each task's document length in tokens (the shipped variants were measured at 1-2K)")
    sp.add_argument("--max-new-tokens", type=int, help="answer length (default: each variant's task's)")
