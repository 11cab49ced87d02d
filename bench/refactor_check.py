"""A refactor changes no figure: the old tree and this one, side by side on the same machine and models.

The old tree is checked out from git (``--old REV``) into a temporary worktree; each command runs
once per tree in alternating order (old, new, then new, old for the second round), so drift on a
shared machine falls on both alike. Two commands, as every refactor check has run them:

* ``bench/ttft_partial.py`` (each tree's own script): receiver TTFT for full prefill and five plans
  at 1K and 2K tokens, the median of ``--repeats`` runs per round;
* ``droidspeak eval`` of a shipped profile's plan on held-out rows: quality, agreement and
  first-token KLs must be identical to the last digit (the same arithmetic), TTFT ratios alike.

With ``--suite``, the test suite (``pytest -m "not slow"``) is timed once per tree too.

    .venv/bin/python bench/refactor_check.py --old 52281e2 --out bench/results/refactor_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, provenance, write_result  # noqa: E402

TTFT = ["bench/ttft_partial.py", "--lengths", "1024", "2048", "--plans", "none", "12:15", "10:16", "15:24", "all",
        "--repeats", "2"]
EVAL = ["-m", "droidspeak", "eval", "--sender", "base", "--receiver", "smollm2-code", "--plan",
        "profile:profiles/smollm2-135m-instruct__smollm2-code.json", "--n", "3", "--min-tokens", "1500",
        "--max-tokens", "2000", "--json"]
SAME = ("quality_full", "quality_plan", "quality_full_reuse", "agreement_plan", "agreement_full_reuse",
        "first_token_kl_plan", "first_token_kl_full_reuse")


def run(tree: Path, args: list[str], timeout: int = 3600) -> str:
    env = os.environ | {"PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return p.stdout


def ttft(tree: Path, scratch: Path) -> list[dict]:
    out = scratch / "ttft.json"
    run(tree, TTFT + ["--out", str(out)])
    res = json.loads(out.read_text())["results"]
    return [{"context_tokens": r["context_tokens"], "full_prefill_s": r["full_prefill_s"],
             "plans": {p["plan"]: {"ttft_s": p["ttft_s"], "speedup": p["speedup"], "ratio_to_limit": p["ratio_to_limit"]}
                       for p in r["plans"]}} for r in res]


def evaluate(tree: Path) -> dict:
    out = run(tree, EVAL)
    return json.loads(out[out.index("{"):])


def suite(tree: Path) -> dict:
    t0 = time.time()
    out = run(tree, ["-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", "-x"], timeout=5400)
    return {"wall_s": round(time.time() - t0, 1), "summary": out.strip().splitlines()[-1]}


def merged(rounds: list[list[dict]]) -> list[dict]:
    """Per context length and plan, the median TTFT over the rounds (each already a median of repeats)."""
    out = []
    for parts in zip(*rounds):
        full = statistics.median(p["full_prefill_s"] for p in parts)
        plans = {}
        for plan in parts[0]["plans"]:
            t = statistics.median(p["plans"][plan]["ttft_s"] for p in parts)
            limit = _limit(plan, full)
            plans[plan] = {"ttft_s": t, "speedup": full / t, "ratio_to_limit": t / limit if limit else None}
        out.append({"context_tokens": parts[0]["context_tokens"], "full_prefill_s": full, "plans": plans})
    return out


def _limit(plan: str, full_s: float, layers: int = 30) -> float:
    """A plan's physical limit: its recomputed fraction of the full prefill."""
    if plan == "none":
        return 0.0
    if plan == "all":
        return full_s
    rec = sum(int(b) - int(a) for a, b in (g.split(":") for g in plan.split(",")))
    return rec / layers * full_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git revision of the old tree")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--suite", action="store_true", help="also time the test suite of each tree")
    ap.add_argument("--out", default="bench/results/refactor_check.json")
    args = ap.parse_args()

    new = ROOT
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=new, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "droidspeak"], cwd=new, capture_output=True,
                                text=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="refactor-check-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.old], cwd=new, check=True,
                       capture_output=True)
        try:
            rounds: dict[str, list] = {"old": [], "new": []}
            evals: dict[str, list] = {"old": [], "new": []}
            suites: dict[str, dict] = {}
            for i in range(args.rounds):
                order = [("old", old), ("new", new)] if i % 2 == 0 else [("new", new), ("old", old)]
                for name, tree in order:
                    print(f"round {i + 1}: {name} ttft", flush=True)
                    rounds[name].append(ttft(tree, Path(tmp)))
                for name, tree in order:
                    print(f"round {i + 1}: {name} eval", flush=True)
                    evals[name].append(evaluate(tree))
            if args.suite:
                for name, tree in (("old", old), ("new", new)):
                    print(f"{name} test suite", flush=True)
                    suites[name] = suite(tree)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=new, capture_output=True)
    keep = lambda e: {k: e[k] for k in ("plan", "rows", *SAME, "ttft_speedup", "ttft_speedup_full_reuse")}  # noqa: E731
    eval_old, eval_new = evals["old"][0], evals["new"][0]
    identical = all(e[k] == eval_old[k] for e in evals["old"] + evals["new"] for k in SAME)
    ttft_old, ttft_new = merged(rounds["old"]), merged(rounds["new"])
    ratios = {f"{o['context_tokens']}:{plan}": round(n["plans"][plan]["ttft_s"] / o["plans"][plan]["ttft_s"], 3)
              for o, n in zip(ttft_old, ttft_new) for plan in o["plans"]}
    write_result(args.out, provenance(dtype="float32") | {
        "what": "the request path before and after the package redesign (issue 20), same machine, adapters and "
                "profile, each command run once per tree per round in alternating order",
        "old_code": args.old, "new_code": head + (" + uncommitted changes" if dirty else ""),
        "commands": {"ttft": "python " + " ".join(TTFT), "eval": "droidspeak " + " ".join(EVAL[2:])},
        "rounds": args.rounds,
        "ttft": {"old": ttft_old, "new": ttft_new, "new_over_old": ratios,
                 "rounds": rounds},
        "eval": {"old": keep(eval_old), "new": keep(eval_new), "identical_quality_and_kl": identical,
                 "ttft_speedup_rounds": {k: [e["ttft_speedup"] for e in v] for k, v in evals.items()}},
        "suite": suites or None,
    })
    print(f"eval figures identical: {identical}; TTFT new/old: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
