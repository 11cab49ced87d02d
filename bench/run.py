"""Run the benchmark page: every figure measured side by side, then BENCHMARKS.md and summary.json.

    .venv/bin/python bench/run.py --quick    # make bench: a few minutes' worth of each figure
    .venv/bin/python bench/run.py --full     # make bench-full: the whole page (about 20 minutes on 2 cores)
    .venv/bin/python bench/run.py --summary-only   # recompute summary.json + BENCHMARKS.md from results

Profiles and held-out evaluations are long CPU jobs with their own script (bench/profile_all.sh);
this runner reads their results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from common import recipe_words, same_recipe, trained_with, variant_kinds

from droidspeak.stats import paired_ratio_ci

ROOT = Path(__file__).resolve().parent.parent
RES = ROOT / "bench" / "results"
PY = sys.executable

def _shipped(names: list[str]) -> list[str]:
    """The named variants that are shipped in adapters/ (a recipe not yet trained is left out)."""
    return [n for n in names if trained_with(n)]


# the profiled path's headline pair: the shipped profile that reuses layers (every other SmolLM2 profile
# recomputes all of them); summary.json's headline keys all come from this one receiver and its shipped plan
HEADLINE = ("smollm2-135m-instruct", "smollm2-code")
ALL_EXACT = [f"smollm2-{t}-{k}" for k in ("alora", "top20") for t in ("qa", "toolcall", "code")]
EXACT = _shipped(ALL_EXACT)
FLEET = ",".join(["smollm2-135m-instruct", *_shipped([f"smollm2-{t}-alora" for t in ("qa", "toolcall", "code")])])
QUICK = {
    "ttft": ["bench/ttft_peers.py", "--lengths", "1024", "4096", "--repeats", "2"],
    "exact": ["bench/exact_ttft.py", "--variants", *EXACT, "--n", "2"],
    "pipeline": ["bench/pipeline.py", "--plan", "10:24", "--bandwidths-mbs", "50", "1000", "--repeats", "1"],
    "load": ["bench/serve_load.py", "--models", ",".join(HEADLINE), "--workflows", "4",
             "--rates", "0.1", "--out", "bench/results/serve_load_headline.json"],
    "fleet": ["bench/serve_load.py", "--models", FLEET, "--workflows", "4", "--rates", "0.05",
              "--out", "bench/results/fleet_load.json"],
    "seal": ["bench/seal_cost.py", "--repeats", "3"],
    "engine": ["bench/fleet_engine.py", "--n", "2", "--decode-tokens", "32", "--decode-repeats", "1"],
    "kernels": ["bench/decode_kernels.py", "--repeats", "4"],
    "grammar": ["bench/grammar_cost.py"],
    "gpu-smoke": ["bench/gpu_ttft.py", "--device", "cpu", "--tiny", "--out", "bench/results/gpu_smoke.json"],
}
FULL = {
    "ttft": ["bench/ttft_peers.py", "--lengths", "1024", "2048", "4096", "8000", "--repeats", "2"],
    "ttft-partial": ["bench/ttft_partial.py", "--lengths", "1024", "2048", "4096", "--repeats", "3"],
    "exact": ["bench/exact_ttft.py", "--variants", *EXACT, "--n", "5"],
    "pipeline": ["bench/pipeline.py", "--plan", "10:24", "--bandwidths-mbs", "25", "100", "1000", "--repeats", "1"],
    "load": ["bench/serve_load.py", "--models", ",".join(HEADLINE), "--workflows", "5",
             "--rates", "0.05", "0.15", "--out", "bench/results/serve_load_headline.json"],
    "load2": ["bench/serve_load.py", "--models", "smollm2-toolcall,smollm2-code", "--workflows", "4",
              "--rates", "0.1", "--out", "bench/results/serve_load.json"],
    "fleet": ["bench/serve_load.py", "--models", FLEET, "--workflows", "6", "--rates", "0.03", "0.06",
              "--out", "bench/results/fleet_load.json"],
    "guard": ["bench/guard_drift.py"],
    "formats": ["bench/formats.py"],
    "seal": ["bench/seal_cost.py"],
    "engine": ["bench/fleet_engine.py"],
    "kernels": ["bench/decode_kernels.py"],
    "fleet8": ["bench/agent_fleet.py"],
    "fleet8-exact": ["bench/agent_fleet.py", "--fleet", "exact", "--rates", "0.01", "0.03", "0.05",
                     "--out", "bench/results/agent_fleet_exact.json"],
    "fleet8-exact-busy": ["bench/agent_fleet.py", "--fleet", "exact", "--rates", "0.1", "--workflows", "8", "--merge",
                          "--out", "bench/results/agent_fleet_exact.json"],  # after fleet8-exact: it adds a rate
    "toolcalls": ["bench/tool_calls.py"],
    "grammar": ["bench/grammar_cost.py"],
    "gpu-smoke": ["bench/gpu_ttft.py", "--device", "cpu", "--tiny", "--compile", "--out", "bench/results/gpu_smoke.json"],
}


def _load(name: str):
    p = RES / name
    return json.loads(p.read_text()) if p.is_file() else None


def _no_gain_note(good_with_sharing: float) -> str:
    """Why a gain at the SLO has no ratio: nothing met the SLO without sharing."""
    return ("unbounded: no request met the SLO without sharing" if good_with_sharing
            else "no request met the SLO either way")


def _load_gains(lo: dict) -> tuple[str, float | None, str | None, dict[str, float]]:
    """A serve_load result at its highest rate: the rate, requests/s within the SLO with sharing over without
    (None, with the note why, when nothing met it without), and requests/s per mode."""
    top = sorted(lo["modes"]["sharing"], key=float)[-1]
    at = {m: lo["modes"][m][top] for m in ("sharing", "no_sharing")}
    good = {m: x["requests_per_s"] * x["slo_attainment"] for m, x in at.items()}
    gain = good["sharing"] / good["no_sharing"] if good["no_sharing"] else None
    note = None if good["no_sharing"] else _no_gain_note(good["sharing"])
    return top, gain, note, {m: x["requests_per_s"] for m, x in at.items()}


def _fleet8(af: dict) -> dict:
    """An agent_fleet result at its highest rate: requests/s within the SLO, requests/s and p95 TTFT, sharing over
    DROIDSPEAK_SHARE=0, and the KV held for one conversation."""
    top = max(af["gains"], key=float)
    g = af["gains"][top]
    models = ", ".join(dict.fromkeys(m for _, m in af["agents"]))
    out = {"throughput_gain_at_slo": g["goodput"], "requests_per_s_gain": g["requests_per_s"],
           "p95_ttft_gain": g["p95_ttft"], "kv_bytes_per_context": af["kv_bytes_per_context"],
           "workflows_per_s": float(top),
           "definition": (f"8 agents in turn over one {af['tokens']}-token document, each reading the whole "
                          f"conversation ({af.get('fleet', 'mixed')} fleet: {models}); at {top} workflows/s: "
                          f"requests/s within the TTFT SLO of {af['slo_s']}s, and p95 TTFT, sharing over "
                          "DROIDSPEAK_SHARE=0; KV bytes in the in-process tier after one workflow"),
           "command": af["command"]}
    if g["goodput"] is None:
        out["throughput_gain_at_slo_note"] = _no_gain_note(af["modes"]["sharing"][top]["goodput_rps"])
    return out


def headline() -> dict:
    """The profiled path's headline, one receiver and one plan: the held-out evaluation of HEADLINE's shipped
    profile at ~4K tokens (quality drop with its interval, and the TTFT speedup of the same plan on the same rows,
    one run), then the peers' TTFT and the load test where they ran that same receiver and plan (else left out)."""
    sender, receiver = HEADLINE
    prof = ROOT / "profiles" / f"{sender}__{receiver}.json"
    plan = json.loads(prof.read_text()).get("chosen_plan") if prof.is_file() else None
    ev = _load(f"eval_{sender}__{receiver}.json")
    out: dict = {"sender": sender, "receiver": receiver, "plan": plan}
    if not ev or ev.get("plan") != plan:
        return out | {"headline_note": f"no held-out evaluation of {receiver}'s shipped plan {plan}: run "
                                       "bench/profile_all.sh (its eval step)"}
    ci = (ev.get("intervals") or {}).get("relative_drop")
    out.update({"context_tokens_4k": ev["context_tokens"]["mean"], "ttft_speedup_4k": ev["ttft_speedup"],
                "ttft_s_4k": {"full_prefill": ev["ttft_full_s_mean"], "plan": ev["ttft_plan_s_mean"]},
                "relative_quality_drop_4k": ev["relative_drop"], "relative_quality_drop_4k_ci95": ci,
                "quality_metric": ev["metric"], "quality_rows": ev["rows"],
                "quality_4k": {"full_prefill": ev["quality_full"], "plan": ev["quality_plan"]},
                "headline_command": ev.get("command")})
    t = _load("ttft_peers.json")
    if t and (t["sender"], t["receiver"]) == HEADLINE:
        e = min(t["results"], key=lambda r: abs(r["context_tokens"] - 4096))
        if e["plan"] == plan:
            out.update({"limit_ratio_4k": e["plan_over_limit"], "llamacpp_ratio_4k": e.get("plan_over_llamacpp"),
                        "peers_ttft_s_4k": e["ttft_s"], "ttft_command": t["command"]})
    lo = _load("serve_load_headline.json")
    if lo and tuple(lo["models"]) == HEADLINE:
        top, gain, note, rps = _load_gains(lo)
        out["throughput_gain_at_slo"] = gain
        if note:
            out["throughput_gain_at_slo_note"] = note
        out["throughput_requests_per_s_gain"] = rps["sharing"] / rps["no_sharing"]
        out["throughput_definition"] = (f"requests/s that met the TTFT SLO of {lo['slo_s']}s at {top} workflows/s, "
                                        f"with sharing over without ({sender} then {receiver} on each context)")
        out["throughput_command"] = lo["command"]
    return out


def summary(mode: str, command: str) -> dict:
    out: dict = {"command": command, "mode": mode, "date": time.strftime("%Y-%m-%d %H:%M"),
                 "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "python": platform.python_version()}}
    out.update(headline())
    ex = _load("exact_ttft.json")
    if ex:
        act = [e for e in ex["results"] if e["exactness"]["kind"] == "activated"] or ex["results"]
        out["exact_ttft_speedup_4k"] = sum(e["ttft_speedup"] for e in act) / len(act)
        out["exact_ttft_speedup_4k_by_variant"] = {e["variant"]: e["ttft_speedup"] for e in ex["results"]}
        out["exact_answer_agreement_4k"] = min(e["answer_agreement"] for e in ex["results"])
        out["exact_definition"] = ("a cache-compatible variant's own full prefill over its exact reuse of the base's "
                                   "capture, held-out rows of its task at ~4K tokens (mean over activated variants); "
                                   "agreement: the share of rows whose answers are identical (min over variants)")
        out["exact_command"] = ex["command"]
    ratios, unfair, cis, rows = {}, {}, {}, {}
    for f in sorted(RES.glob("variants_*.json")):
        v = json.loads(f.read_text())
        lora, alora, _ = variant_kinds(v["variants"], v)
        if lora and alora and v["scores"].get(lora) and v["rows"] > rows.get(v["task"], 0):  # the most rows of a task
            rows[v["task"]] = v["rows"]
            ratios[v["task"]] = v["scores"][alora] / v["scores"][lora]
            q = paired_ratio_ci([x[alora] for x in v["per_row"]], [x[lora] for x in v["per_row"]])
            cis[v["task"]] = q.to_dict() | {"context_tokens": [v["min_tokens"], v["max_tokens"]]} if q else None
            own, ref = trained_with(lora, v), trained_with(alora, v)
            if (own or ref) and not same_recipe(own, ref):
                unfair[v["task"]] = (f"{lora} is from another recipe ({recipe_words(own)}) than {alora} "
                                     f"({recipe_words(ref)}): "
                                     "not like for like")
    if unfair:
        out["exact_quality_vs_lora_caveats"] = unfair
    if ratios:
        out["exact_quality_vs_lora"] = sum(ratios.values()) / len(ratios)
        out["exact_quality_vs_lora_by_task"] = ratios
        out["exact_quality_vs_lora_ci95_by_task"] = cis  # paired bootstrap over the same rows
        out["exact_quality_definition"] = ("held-out quality of the activated variant over the standard LoRA's, same "
                                           "rows, same training data and steps (mean over tasks, each from its "
                                           "evaluation with the most rows; "
                                           "exact_quality_vs_lora_caveats names "
                                           "any task whose standard LoRA came from another recipe)")
    fl = _load("fleet_load.json")
    if fl:
        top, gain, note, rps = _load_gains(fl)
        out["fleet_throughput_gain_at_slo"] = gain
        if note:
            out["fleet_throughput_gain_at_slo_note"] = note
        out["fleet_requests_per_s"] = rps
        out["fleet_throughput_gain"] = rps["sharing"] / rps["no_sharing"]
        ttft = {m: fl["modes"][m][top].get("per_model_ttft_p50_s", {}) for m in ("sharing", "no_sharing")}
        out["fleet_variant_ttft_p50_speedup"] = {v: ttft["no_sharing"][v] / ttft["sharing"][v]
                                                 for v in fl["models"][1:] if v in ttft["sharing"] and v in ttft["no_sharing"]}
        out["fleet_slo_attainment"] = {m: fl["modes"][m][top]["slo_attainment"] for m in ("sharing", "no_sharing")}
        out["fleet_definition"] = (f"requests/s that met the TTFT SLO of {fl['slo_s']}s at {top} workflows/s "
                                   f"({' -> '.join(fl['models'])} per context), sharing over not sharing")
        out["fleet_command"] = fl["command"]
    exact, mixed = _load("agent_fleet_exact.json"), _load("agent_fleet.json")
    if exact or mixed:  # the headline is the fleet built to share (the base and its activated variants)
        out.update({f"fleet8_{k}": v for k, v in _fleet8(exact or mixed).items()})
        if exact and mixed:
            out["fleet8_mixed"] = _fleet8(mixed)
    fe = _load("fleet_engine.json")
    if fe:
        out.update({"server_exact_hit_over_direct": fe["exact_hit_over_direct"],
                    "server_miss_over_full_prefill": fe["miss_over_full_prefill"],
                    "decode_alone_over_weight_read_bound": fe["decode_alone_over_bound"],
                    "decode_four_models_over_one": fe["decode_four_over_alone"],
                    "engine_command": fe["command"]})
        if "variant_step_over_base_step" in fe:  # results from before the router's lean path lack it
            out["decode_variant_step_over_base_step"] = fe["variant_step_over_base_step"]
        if fe.get("decode_four_packed_over_not_packed"):
            out["decode_four_models_packed_over_not_packed"] = fe["decode_four_packed_over_not_packed"]
    gc = _load("grammar_cost.json")
    if gc:
        out["grammar_overhead_per_token"] = gc["served"]["overhead_fraction"]
        out["grammar_command"] = gc["command"]
    va = _load("vllm_alora.json")  # make bench-vllm (vLLM's own venv): not run by this script
    if va:
        out.update({"vllm_alora_ttft_gain_with_connector": va["vllm_alora_ttft_gain_with_connector"],
                    "vllm_alora_connector_answer_equals_peft": va["connector_answer_equals_peft"],
                    "vllm_alora_command": va["command"]})
    fleets = [json.loads(p.read_text()) for p in sorted(RES.glob("vllm_fleet*.json"))]
    fleets = [f for f in fleets if f.get("fleet_gain_vs_vllm")]
    if fleets:  # per arrival rate: each server over vLLM with standard LoRAs
        out["fleet_gain_vs_vllm"] = {str(f["rate"]): f["fleet_gain_vs_vllm"] for f in fleets}
        out["vllm_fleet_commands"] = [f["command"] for f in fleets]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--full", action="store_true")
    g.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    mode = "full" if args.full else "summary" if args.summary_only else "quick"
    if mode != "summary":
        for name, cmd in (FULL if mode == "full" else QUICK).items():
            print(f"== {name}: {' '.join(cmd)}", flush=True)
            r = subprocess.run([PY, *cmd], cwd=ROOT)
            if r.returncode != 0:
                print(f"bench step {name} failed ({r.returncode})", file=sys.stderr)
                return r.returncode
    s = summary(mode, "python " + " ".join(["bench/run.py", *sys.argv[1:]]))
    RES.mkdir(parents=True, exist_ok=True)
    (RES / "summary.json").write_text(json.dumps(s, indent=1))
    print(json.dumps({k: v for k, v in s.items() if not isinstance(v, dict)}, indent=1))
    return subprocess.run([PY, "bench/report.py"], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
