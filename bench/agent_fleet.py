"""An agentic fleet of eight over one base: a long shared document, then eight agents in turn.

Each workflow: one ~4K-token document (a staff registry, an order log and a Python file), then eight
agents, each a role served by the base or one of its variants, in turn; each agent reads the whole
conversation so far (the document, every earlier agent's request and answer) and adds its own turn.
Workflows arrive as a Poisson process at each rate. The real server runs twice on the same build,
with sharing and with ``DROIDSPEAK_SHARE=0`` (each model reuses only what it stored itself, as a
prefix cache keyed by model does); everything else, arrival times included, is identical.

Per mode and rate: requests/s, p50/p95 TTFT (the client's, from the first streamed token, queueing
included), the share of requests within the TTFT SLO and the rate of those (goodput). Per mode: the
in-process tier's bytes after one workflow (the KV held for one conversation).

Two fleets (``--fleet``): "mixed" serves the roles with every kind of variant we ship, "exact" with the
base and its activated variants only (each task's activated variant plays that task's roles).

    .venv/bin/python bench/agent_fleet.py --out bench/results/agent_fleet.json
    .venv/bin/python bench/agent_fleet.py --fleet exact --rates 0.01 0.03 0.05 --out bench/results/agent_fleet_exact.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import binder_document, provenance, write_result  # noqa: E402
from serve_load import start_server, stream_chunks, ttft_stats  # noqa: E402

BASE = "smollm2-135m-instruct"


# The model behind each role. "mixed": every kind of variant we ship (activated, top-20 LoRA, a LoRA on every
# layer, profiled), seven models. "exact": the same roles, each served by its task's activated variant (the
# variants built to share the base's cache), four models.
FLEETS = {
    "mixed": ("smollm2-qa-alora", "smollm2-toolcall-alora", "smollm2-code-alora", "smollm2-qa-top20",
              "smollm2-code-top20", "smollm2-qa"),
    "exact": ("smollm2-qa-alora", "smollm2-toolcall-alora", "smollm2-code-alora", "smollm2-qa-alora",
              "smollm2-code-alora", "smollm2-qa-alora"),
}


def roles(requests: dict, fleet: str = "mixed") -> list[tuple[str, str, str, int]]:
    """(role, model, request, max tokens): eight agents; the base plays the planner and the critic."""
    qa, tc, code = requests["qa"], requests["toolcall"], requests["code"]
    extractor, caller, coder, checker, reviewer, answerer = FLEETS[fleet]
    return [
        ("planner", BASE, "In one line: what are the parts of this document, and who should handle each?", 32),
        ("extractor", extractor, qa.prompt, 16),
        ("caller", caller, tc.prompt, 64),
        ("coder", coder, code.prompt, 40),
        ("checker", checker, qa.prompt, 16),
        ("reviewer", reviewer, code.prompt, 40),
        ("answerer", answerer, qa.prompt, 16),
        ("critic", BASE, "Is any answer above inconsistent with the document? Answer in one sentence.", 32),
    ]


def turn(url: str, model: str, messages: list[dict], max_tokens: int) -> dict:
    t0 = time.time()
    first, text, usage = None, [], {}
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    for d in stream_chunks(url, body, 1800):
        if d.get("choices") and d["choices"][0]["delta"].get("content"):
            first = first or time.time()
            text.append(d["choices"][0]["delta"]["content"])
        if d.get("usage"):
            usage = d["usage"]
    end = time.time()
    return {"model": model, "ttft_s": (first or end) - t0, "e2e_s": end - t0, "start": t0, "end": end,
            "text": "".join(text), "prompt_tokens": usage.get("prompt_tokens", 0),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)}


def workflow(url: str, doc: str, agents: list, out: list, lock: threading.Lock, turn_fn=turn) -> None:
    messages = [{"role": "user", "content": doc}]
    for role, model, request, max_tokens in agents:
        messages.append({"role": "user", "content": request})
        r = turn_fn(url, model, messages, max_tokens) | {"role": role}
        messages.append({"role": "assistant", "content": r["text"] or "(no answer)"})
        with lock:
            out.append(r)


def run_rate(url: str, docs: list, rate: float, seed: int, turn_fn=turn) -> list[dict]:
    rng = random.Random(seed)
    out: list[dict] = []
    lock = threading.Lock()
    t0, at, threads = time.time(), 0.0, []
    for doc, agents in docs:
        time.sleep(max(0.0, t0 + at - time.time()))
        th = threading.Thread(target=workflow, args=(url, doc, agents, out, lock, turn_fn))
        th.start()
        threads.append(th)
        at += rng.expovariate(rate)
    for th in threads:
        th.join()
    return out


def summarize(reqs: list[dict], slo: float) -> dict:
    return ttft_stats(reqs, slo, (50, 95)) | {
            "cached_fraction": sum(r["cached_tokens"] for r in reqs) / max(1, sum(r["prompt_tokens"] for r in reqs)),
            "per_role_ttft_p50_s": {role: statistics.median(r["ttft_s"] for r in reqs if r["role"] == role)
                                    for role in dict.fromkeys(r["role"] for r in reqs)}}


def memory_bytes(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(ln.split()[-1]) for ln in text.splitlines()
               if ln.startswith("droidspeak:store_bytes") and 'tier="memory"' in ln)


def rates_in(mode: dict) -> list[str]:
    """The rates a mode of a result holds (its other keys are the one-workflow figures), lowest first."""
    return sorted((k for k in mode if k not in ("kv_bytes_one_workflow", "one_workflow")), key=float)


def _earlier(args) -> dict:
    """The result to merge into: it must describe the same fleet, document length and SLO."""
    try:
        r = json.loads(Path(args.out).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--merge: cannot read {args.out}: {e}")
    same = isinstance(r, dict) and (r.get("fleet", "mixed"), r.get("tokens"), r.get("slo_s")) == (
        args.fleet, args.tokens, args.slo)
    if not same or "modes" not in r:
        raise SystemExit(f"--merge: {args.out} is not an agent_fleet result of the {args.fleet} fleet at "
                         f"{args.tokens} tokens and a {args.slo}s SLO")
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4000, help="document length")
    ap.add_argument("--workflows", type=int, default=4, help="workflows per rate")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.03], help="workflow arrivals per second")
    ap.add_argument("--slo", type=float, default=4.0, help="TTFT SLO in seconds")
    ap.add_argument("--fleet", choices=sorted(FLEETS), default="mixed", help="the models behind the roles")
    ap.add_argument("--out", default="bench/results/agent_fleet.json")
    ap.add_argument("--merge", action="store_true", help="add these rates to the result already in --out (the same "
                    "fleet, document length and SLO; its one-workflow figures and other rates are kept)")
    args = ap.parse_args()
    earlier = _earlier(args) if args.merge else None
    from droidspeak.models import load_model

    tok = load_model(BASE).tokenizer
    first_doc, first_req = binder_document(tok, args.tokens, seed=500)
    cast = partial(roles, fleet=args.fleet)
    models = sorted({m for _, m, _, _ in cast(first_req)})
    result = provenance() | {"tokens": args.tokens, "slo_s": args.slo, "fleet": args.fleet,
                             "agents": [r[:2] for r in cast(first_req)], "modes": {}}
    for share in (True, False):
        proc, url = start_server(",".join(models), share, DROIDSPEAK_STORE="memory:12GB")
        try:
            for m in models:  # warm-up, a short context each
                turn(url, m, [{"role": "user", "content": "warm up " * 40}, {"role": "user", "content": "ok?"}], 2)
            name = "sharing" if share else "no_sharing"
            if earlier:
                mode = earlier["modes"][name]
            else:
                base_bytes = memory_bytes(url)
                one: list[dict] = []
                workflow(url, first_doc, cast(first_req), one, threading.Lock())  # one alone: KV held per conversation
                mode = {"kv_bytes_one_workflow": memory_bytes(url) - base_bytes, "one_workflow": summarize(one, args.slo)}
            for k, rate in enumerate(args.rates, start=len(rates_in(mode))):  # every rate its own documents and arrivals
                docs = [binder_document(tok, args.tokens, seed=1000 * (k + 1) + i) for i in range(args.workflows)]
                reqs = run_rate(url, [(d, cast(r)) for d, r in docs], rate, seed=k)
                mode[str(rate)] = summarize(reqs, args.slo) | {"raw": reqs}
                s = mode[str(rate)]
                print(f"share={share} rate={rate}/s: {s['requests_per_s']:.3f} req/s, TTFT p50 {s['ttft_p50_s']:.2f}s "
                      f"p95 {s['ttft_p95_s']:.2f}s, SLO {s['slo_attainment']:.0%} (goodput {s['goodput_rps']:.3f}/s), "
                      f"cached {s['cached_fraction']:.0%}", flush=True)
            result["modes"][name] = mode
        finally:
            proc.terminate()
            proc.wait(120)
    sh, no = result["modes"]["sharing"], result["modes"]["no_sharing"]
    result["gains"] = {r: {"requests_per_s": sh[r]["requests_per_s"] / no[r]["requests_per_s"],
                           "p95_ttft": no[r]["ttft_p95_s"] / sh[r]["ttft_p95_s"],
                           "goodput": sh[r]["goodput_rps"] / no[r]["goodput_rps"] if no[r]["goodput_rps"] else None}
                       for r in rates_in(sh)}
    if earlier:
        result["command"] = f"{earlier['command']}; then {result['command']}"
    result["kv_bytes_per_context"] = {"sharing": sh["kv_bytes_one_workflow"], "no_sharing": no["kv_bytes_one_workflow"]}
    print(json.dumps(result["gains"], indent=1), result["kv_bytes_per_context"])
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
