"""Serving under load: a workflow of several models over shared contexts, with and without sharing.

Workflows arrive as a Poisson process; each sends the first model a request over a fresh long
context and, when it has answered, each next model its own request over the same context (an agent
pipeline, or a fleet of variants over one document: each reads what the first read). The real
server (`droidspeak serve`, loopback, in-process store) runs twice, with sharing on and off
(`DROIDSPEAK_SHARE`); everything else is identical, including the arrival times. TTFT is measured
by the client (queueing included) from the first streamed token.

    .venv/bin/python bench/serve_load.py --models smollm2-toolcall,smollm2-code --out bench/results/serve_load.json
    .venv/bin/python bench/serve_load.py \
        --models smollm2-135m-instruct,smollm2-qa-alora,smollm2-toolcall-alora,smollm2-code-alora \
        --out bench/results/fleet_load.json      # the base and its cache-compatible fleet
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


QUESTIONS = {  # each task's own kind of request about the shared document (QA uses the row's question)
    "toolcall": "Produce a JSON call to refund_order for the first person listed, with order_id, product, "
                "quantity and city.",
    "code": "Write the first line of a Python function that counts the entries of this registry.",
    None: "Summarize the document in one sentence.",  # a base
}


def question(model: str, row_prompt: str) -> str:
    from droidspeak.training.variants import recipe_of

    r = recipe_of(model)
    if r is None:
        return QUESTIONS[None]
    return QUESTIONS.get(r.task, row_prompt)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: str, share: bool = True, **env: str) -> tuple[subprocess.Popen, str]:
    """`droidspeak serve` on a free loopback port with an in-process store; extra settings as environment."""
    port = _port()
    env = dict(os.environ, DROIDSPEAK_SHARE="1" if share else "0", DROIDSPEAK_MAX_WAITING="512", **env)
    proc = subprocess.Popen([sys.executable, "-m", "droidspeak", "serve", "--port", str(port), "--models", models,
                             "--store", "memory:4GB"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, wait_healthy(proc, f"http://127.0.0.1:{port}", "droidspeak serve")


def wait_healthy(proc: subprocess.Popen, url: str, what: str, timeout_s: float = 900) -> str:
    """``url`` once its ``/health`` answers 200; a server that exits or never answers is killed and raised."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{what} did not start")


def one_request(url: str, model: str, context: str, question: str, max_tokens: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="none", timeout=600)
    t0 = time.time()
    first = None
    n = 0
    usage = None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": context}, {"role": "user", "content": question}],
        max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True})
    for ev in stream:
        if ev.choices and ev.choices[0].delta.content and first is None:
            first = time.time()
        if ev.choices and ev.choices[0].delta.content:
            n += 1
        if ev.usage:
            usage = ev.usage
    end = time.time()
    return {"model": model, "ttft_s": (first or end) - t0, "e2e_s": end - t0, "start": t0, "end": end,
            "cached_tokens": usage.prompt_tokens_details.cached_tokens if usage and usage.prompt_tokens_details else 0}


def run_rate(url: str, models: list[str], contexts: list[tuple[str, list[str]]], rate: float, max_tokens: int,
             seed: int) -> list[dict]:
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in contexts:
        arrivals.append(t)
        t += rng.expovariate(rate)
    out: list[dict] = []
    lock = threading.Lock()

    def workflow(i: int) -> None:
        ctx, questions = contexts[i]
        for model, q in zip(models, questions):
            r = one_request(url, model, ctx, q, max_tokens)
            with lock:
                out.append(r)

    t0 = time.time()
    threads = []
    for i, at in enumerate(arrivals):
        time.sleep(max(0.0, t0 + at - time.time()))
        th = threading.Thread(target=workflow, args=(i,))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    return out


def stream_chunks(url: str, body: dict, timeout: float):
    """The parsed chunks of a streamed chat completion (``body`` with ``"stream": True``)."""
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=timeout) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])


def ttft_stats(reqs: list[dict], slo: float, percentiles: tuple[int, ...]) -> dict:
    """Requests/s over the makespan, TTFT percentiles (``ttft_pNN_s``) and mean, the share within the
    TTFT SLO and those requests per second (goodput), over requests with ``ttft_s``, ``start``, ``end``."""
    ttft = sorted(r["ttft_s"] for r in reqs)
    span = max(r["end"] for r in reqs) - min(r["start"] for r in reqs)
    met = sum(t <= slo for t in ttft)
    return {"requests": len(reqs), "requests_per_s": len(reqs) / span, "makespan_s": span,
            **{f"ttft_p{p}_s": ttft[min(len(ttft) - 1, int(round(p / 100 * (len(ttft) - 1))))] for p in percentiles},
            "ttft_mean_s": statistics.mean(ttft), "slo_attainment": met / len(ttft), "goodput_rps": met / span}


def summarize(reqs: list[dict], slo: float) -> dict:
    return ttft_stats(reqs, slo, (50, 90, 99)) | {
            "e2e_p50_s": statistics.median(r["e2e_s"] for r in reqs),
            "cached_tokens_mean": statistics.mean(r["cached_tokens"] for r in reqs),
            "per_model_ttft_p50_s": {m: statistics.median(r["ttft_s"] for r in reqs if r["model"] == m)
                                     for m in {r["model"] for r in reqs}}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-toolcall,smollm2-code", help="A,B: A reads first, B reuses")
    ap.add_argument("--workflows", type=int, default=6, help="workflows per rate")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.1], help="workflow arrivals per second")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--slo", type=float, default=4.0, help="TTFT SLO in seconds for attainment")
    ap.add_argument("--out", default="bench/results/serve_load.json")
    args = ap.parse_args()
    from droidspeak.models import load_model
    from droidspeak.tasks import generate

    models = args.models.split(",")
    tok = load_model("base").tokenizer
    result = {"command": "python " + " ".join(sys.argv), "models": models, "tokens": args.tokens, "slo_s": args.slo,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "date": time.strftime("%Y-%m-%d %H:%M"), "modes": {}}
    for share in (True, False):
        proc, url = start_server(",".join(sorted(set(models) | {"smollm2-135m-instruct"})), share)
        try:
            # warm-up: one request per model on a short context
            for m in models:
                one_request(url, m, "warm up " * 50, "ok?", 2)
            mode = {}
            for k, rate in enumerate(args.rates):
                rows = generate("qa", "heldout", args.workflows, tok, seed=100 + k, lengths=(args.tokens, args.tokens))
                contexts = [(row.context, [question(m, row.prompt) for m in models]) for row in rows]
                reqs = run_rate(url, models, contexts, rate, args.max_tokens, seed=k)
                mode[str(rate)] = summarize(reqs, args.slo) | {"raw": reqs}
                s = mode[str(rate)]
                print(f"share={share} rate={rate}/s: {s['requests_per_s']:.3f} req/s, TTFT p50 {s['ttft_p50_s']:.2f}s "
                      f"p90 {s['ttft_p90_s']:.2f}s, SLO {s['slo_attainment']:.0%}, cached {s['cached_tokens_mean']:.0f}",
                      flush=True)
            result["modes"]["sharing" if share else "no_sharing"] = mode
        finally:
            proc.terminate()
            proc.wait(60)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
