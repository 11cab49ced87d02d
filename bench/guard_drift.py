"""The online quality guard under drifting traffic, and what it costs.

Drift: the real server hosts the base and a profiled receiver (a standard LoRA whose shipped
profile picked a cheap plan on its own task's calibration rows). Traffic is workflows over fresh
contexts: the base reads the context, then the receiver asks about it (a profiled cross-model hit).
The first half of the workflows are calibration-like rows of the receiver's own task, the second
half rows of another task. Every profiled hit is shadow-checked here (``DROIDSPEAK_SHADOW_FRACTION=1``,
so the reaction shows within a few dozen requests; production's default is 0.02). After each
request the guard's state is read from ``GET /v1/droidspeak/pairs``: the plan in force and the
live agreement, plotted against the request index.

Overhead: closed-loop throughput of the same kind of workflows with ``shadow_fraction`` 0.02
against 0, side by side on fresh servers.

    .venv/bin/python bench/guard_drift.py --receiver smollm2-qa --out bench/results/guard_drift.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402
from serve_load import start_server  # noqa: E402

from droidspeak.models import BASE_NAME, load_model  # noqa: E402
from droidspeak.tasks import generate  # noqa: E402


def start(models: str, env: dict) -> tuple:
    return start_server(models, **env)


def chat(url: str, model: str, context: str, q: str, max_tokens: int) -> dict:
    r = httpx.post(url + "/v1/chat/completions", timeout=900, json={
        "model": model, "temperature": 0, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": context}, {"role": "user", "content": q}]})
    r.raise_for_status()
    return r.json()


def pair(url: str, receiver: str, sender: str = BASE_NAME) -> dict:
    data = httpx.get(url + "/v1/droidspeak/pairs", timeout=30).json()["data"]
    return next((d for d in data if d["receiver"] == receiver and d["sender"] == sender), {})


def drift(args, tok) -> list[dict]:
    env = {"DROIDSPEAK_SHADOW_FRACTION": "1", "DROIDSPEAK_GUARD_WINDOW": str(args.window),
           "DROIDSPEAK_GUARD_MIN_SAMPLES": str(args.min_samples), "DROIDSPEAK_POLICY": "profile",
           "DROIDSPEAK_SHADOW_TOKENS": str(args.max_tokens)}
    proc, url = start(f"{args.sender},{args.receiver}", env)
    rows = (generate(args.task1, "calib", args.n, tok, seed=50, lengths=(args.tokens, args.tokens))
            + generate(args.task2, "heldout", args.n, tok, seed=51, lengths=(args.tokens, args.tokens)))
    timeline = []
    try:
        for i, row in enumerate(rows):
            chat(url, args.sender, row.context, "Summarize the document in one sentence.", 4)
            before = pair(url, args.receiver, args.sender).get("checks", 0)
            body = chat(url, args.receiver, row.context, row.prompt, args.max_tokens)
            for _ in range(600):  # the check runs when the engine is idle: wait for it
                st = pair(url, args.receiver, args.sender)
                if st.get("checks", 0) > before or body["droidspeak"]["kind"] != "cross-model":
                    break
                time.sleep(0.2)
            ds = body["droidspeak"]
            timeline.append({"i": i, "phase": args.task1 if i < args.n else args.task2, "kind": ds["kind"],
                             "plan_served": ds["plan"], "recomputed_served": len(ds["recomputed_layers"] or []),
                             "plan_now": st.get("current_plan"), "live_agreement": st.get("live_agreement"),
                             "verified_agreement": st.get("verified_agreement"), "checks": st.get("checks"),
                             "widened": len(st.get("widened") or [])})
            print(f"{i:>3} {timeline[-1]['phase']:<8} served {ds['kind']:<11} plan {ds['plan']:<6} -> now "
                  f"{st.get('current_plan')}, live {st.get('live_agreement')}", flush=True)
        timeline[-1]["widened_detail"] = pair(url, args.receiver, args.sender).get("widened")
    finally:
        proc.terminate()
        proc.wait(60)
    return timeline


def overhead(args, tok) -> dict:
    out = {}
    rows = generate(args.task1, "heldout", args.overhead_n, tok, seed=60, lengths=(args.tokens, args.tokens))
    for frac in ("0", "0.02"):
        proc, url = start(f"{args.sender},{args.receiver}", {"DROIDSPEAK_SHADOW_FRACTION": frac,
                                                            "DROIDSPEAK_POLICY": "profile"})
        try:
            chat(url, args.receiver, "warm up " * 50, "ok?", 2)
            t0 = time.time()
            for row in rows:
                chat(url, args.sender, row.context, "Summarize the document in one sentence.", 4)
                chat(url, args.receiver, row.context, row.prompt, args.max_tokens)
            dt = time.time() - t0
            checks = pair(url, args.receiver, args.sender).get("checks", 0)
        finally:
            proc.terminate()
            proc.wait(60)
        out[frac] = {"requests": 2 * len(rows), "seconds": dt, "requests_per_s": 2 * len(rows) / dt, "checks": checks}
        print(f"shadow_fraction {frac}: {out[frac]['requests_per_s']:.3f} req/s, {checks} checks", flush=True)
    out["throughput_ratio"] = out["0.02"]["requests_per_s"] / out["0"]["requests_per_s"]
    return out


def plot(timeline: list[dict], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [t["i"] for t in timeline]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(xs, [t["live_agreement"] if t["live_agreement"] is not None else float("nan") for t in timeline], "o-",
            color="tab:blue", ms=3, label="live agreement (rolling window)")
    ax.plot(xs, [t["verified_agreement"] or float("nan") for t in timeline], "--", color="tab:gray",
            label="profile's verified agreement (plan in force)")
    ax.axvline(n - 0.5, color="k", lw=1, ls=":")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("request (receiver), in arrival order; dotted: traffic switches task")
    ax.set_ylabel("greedy agreement with own prefill")
    ax2 = ax.twinx()
    ax2.step(xs, [t["recomputed_served"] for t in timeline], where="mid", color="tab:red", label="layers recomputed")
    ax2.set_ylabel("layers recomputed (served)", color="tab:red")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sender", default=BASE_NAME, help="the model that reads each context first")
    ap.add_argument("--receiver", default="smollm2-qa")
    ap.add_argument("--task1", default="qa", help="the receiver's own task (calibration-like rows)")
    ap.add_argument("--task2", default="toolcall", help="the task the traffic switches to")
    ap.add_argument("--n", type=int, default=16, help="workflows per phase")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--min-samples", type=int, default=4)
    ap.add_argument("--overhead-n", type=int, default=15, help="workflows per mode for the overhead (0: skip)")
    ap.add_argument("--out", default="bench/results/guard_drift.json")
    args = ap.parse_args()
    tok = load_model(args.sender).tokenizer
    timeline = drift(args, tok)
    png = Path(args.out).with_suffix(".png")
    plot(timeline, args.n, png)
    result = provenance() | {"sender": args.sender, "receiver": args.receiver, "tasks": [args.task1, args.task2], "n": args.n,
                             "tokens": args.tokens, "window": args.window, "min_samples": args.min_samples,
                             "timeline": timeline, "plot": png.name}
    if args.overhead_n:
        result["overhead"] = overhead(args, tok)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
