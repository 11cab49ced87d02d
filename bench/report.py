"""Render BENCHMARKS.md from the JSON results in bench/results (every figure names its command).

    .venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import recipe_words, same_recipe, trained_with, variant_kinds  # noqa: E402

from droidspeak.harness.study import critical_block  # noqa: E402
from droidspeak.stats import mean_ci, paired_ratio_ci, relative_drop_ci  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RES = ROOT / "bench" / "results"


def _load(name: str):
    p = RES / name
    return json.loads(p.read_text()) if p.is_file() else None


def _recipe_note(name: str, ref: dict | None, notes: list[str], result: dict) -> str:
    """A footnote mark when ``name`` was not trained with the exact variants' data budget (the
    comparison is then not like for like, and the table must say so)."""
    own = trained_with(name, result)
    if not own or not ref or same_recipe(own, ref):
        return ""
    notes.append(f"- \\* {name}: another recipe than the exact variants' ({recipe_words(own)}, rank {own['rank']}, "
                 f"against {recipe_words(ref)}): not a like-for-like comparison.")
    return "\\*"


def _column_of(name: str, result: dict) -> str:
    """The table column an adapter of ``name``'s kind would sit in."""
    kind = (trained_with(name, result) or {}).get("adapter", "lora")
    return {"lora": "LoRA", "alora": "activated LoRA"}.get(kind, f"LoRA on layers {kind.split(':')[-1]}+")


def _other_note(name: str, columns: dict[str, str | None], score: float, interval: str, mark: str, col,
                result: dict) -> str:
    """A variant evaluated on a row's rows but not in its columns: an earlier recipe of a kind (kept because the
    profiled path uses it) or another recipe of the same kind (a point of a recipe search), with how it differs
    from its column's variant and, for an activated one, its paired ratio to the LoRA column."""
    own = trained_with(name, result) or {}
    kind = own.get("adapter", "lora")
    peer = columns.get(kind)
    theirs = trained_with(peer, result) or {}
    diff = ", ".join(f"{k} {own[k]} against {theirs[k]}" for k in ("steps", "rank", "questions", "lr")
                     if own.get(k) is not None and theirs.get(k) is not None and own[k] != theirs[k])
    text = f"{name}{f' ({diff})' if diff and not mark else ''} {score:.3f}{interval}{mark}"
    if any(not json.loads(f.read_text()).get("exact") for f in (ROOT / "profiles").glob(f"*__{name}.json")):
        text += " (a receiver of the profiled path)"  # a calibrated profile, not one the weights prove exact
    if kind == "alora" and columns.get("lora"):
        q = paired_ratio_ci(col(name), col(columns["lora"]))
        if q:
            text += f", {q.value:.2f} [{q.low:.2f}, {q.high:.2f}] of the LoRA column (paired)"
    for twin in result.get("variants", []):  # another recipe's like-for-like pair (same data budget, other kind)
        other = trained_with(twin, result)
        if twin not in (name, *columns.values()) and other and {kind, other["adapter"]} == {"lora", "alora"} \
                and same_recipe(own, other):
            a, b = (name, twin) if kind == "alora" else (twin, name)
            q = paired_ratio_ci(col(a), col(b))
            if q:
                text += f"; {a} over {b}, trained alike: {q.value:.2f} [{q.low:.2f}, {q.high:.2f}] (paired)"
    if own.get("command") and not (ROOT / "adapters" / name).is_dir():
        text += f" (made by `{own['command']}`, not shipped)"
    tail = ", trained like the activated variant." if mark and kind == "lora" else "."
    return text + f"; the {_column_of(name, result)} column is {peer}{tail}"


def _command(cmd: str, path: str) -> str:
    """An evaluation's command line writing ``path`` (one grown by ``variants eval --add-to`` writes it first,
    then adds to it)."""
    if "<that result>" not in cmd:
        return f"{cmd} --out {path}"
    first, rest = cmd.split("; then ", 1)
    return f"{first} --out {path}; then {rest.replace('<that result>', path)}"


def variants_section() -> list[str]:
    """Held-out quality of the base and every kind of variant of a task, on the same rows."""
    out = ["## Variants against the base on their own held-out task: what exactness costs in quality", ""]
    files = sorted(RES.glob("variants_*.json"))
    if not files:
        return out + ["(not measured yet)", ""]
    out += ["| task | metric | rows | context tokens | base | LoRA (every layer) | activated LoRA (exact, plan none) | "
            "LoRA on layers 20-29 (exact, plan 20:30) | activated / LoRA | command |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for f in files:
        r = json.loads(f.read_text())
        sc = r["scores"]
        names = r["variants"]
        lora, alora, top = variant_kinds(names, r)
        ref = trained_with(alora or top, r)
        col = lambda n: [x[n] for x in r["per_row"]]  # noqa: E731
        ci = lambda n: f" [{mean_ci(col(n)).low:.2f}, {mean_ci(col(n)).high:.2f}]"  # noqa: E731
        cell = lambda n: (f"{sc[n]:.3f}{ci(n)} ({n}{_recipe_note(n, ref, notes, r)})" if n else "-")  # noqa: E731
        q = paired_ratio_ci(col(alora), col(lora)) if lora and alora else None
        ratio = f"{q.value:.2f} [{q.low:.2f}, {q.high:.2f}]" if q else "-"
        asked = r["command"].rsplit("--n ", 1)[1].split()[0] if "--n " in r["command"] else None
        if asked and asked.isdigit() and int(asked) > r["rows"]:
            notes.append(f"- {r['task']} at {r['min_tokens']}-{r['max_tokens']} tokens: {r['rows']} rows of the {asked} "
                         "asked: the task's held-out split has no more sources of that length (one row per source).")
        for other in (n for n in names if n not in (lora, alora, top)):
            notes.append(f"- {r['task']} at {r['min_tokens']}-{r['max_tokens']} tokens, on the same rows: "
                         + _other_note(other, {"lora": lora, "alora": alora, "top:20": top}, sc[other], ci(other),
                                       _recipe_note(other, ref, notes, r), col, r))
        out.append(f"| {r['task']} ({r['base']}) | {r['metric']} | {r['rows']} | {r['min_tokens']}-{r['max_tokens']} | "
                   f"{sc['base']:.3f} | {cell(lora)} | {cell(alora)} | {cell(top)} | {ratio} | "
                   f"`{_command(r['command'], f'bench/results/{f.name}')}` |")
    return out + ["", "Greedy decoding with each model's own full prefill (Hugging Face `generate`; PEFT's for the "
                      "activated adapter, which finds its invocation itself), the same held-out rows for every "
                      "column. Every kind is trained by `droidspeak variants train NAME --adapter KIND` with its task's "
                      "rows, contexts (1-4K tokens) and step budget (see each adapter's droidspeak.json), except "
                      "where a mark below says otherwise. In brackets: 95% bootstrap intervals over the rows "
                      "(`droidspeak.stats`; the ratio's paired, on the same rows).",
                  *([""] + list(dict.fromkeys(notes)) if notes else []), ""]


def exact_section() -> list[str]:
    r = _load("exact_ttft.json")
    out = ["## Exact sharing: cache-compatible variants over their base's cache", ""]
    if not r:
        return out + ["(not measured yet)", ""]
    m = r["machine"]
    out += [f"The base prefills each held-out context once (not timed); the variant answers with its own full "
            f"prefill and over the base's capture with the plan the weights prove exact, side by side in one process. "
            f"{m['cpu']}, {m['threads']} threads, fp32, {r['date']}. Command: `{r['command']}`.", "",
            "| variant | exact because | plan | rows (tokens) | own prefill | exact reuse | TTFT speedup | "
            "identical answers | max first-token KL |", "|---|---|---|---|---|---|---|---|---|"]
    for e in r["results"]:
        ct = e["context_tokens"]
        out.append(f"| {e['variant']} | {e['exactness']['kind']} | {e['plan']} | {e['rows']} ({min(ct)}-{max(ct)}) | "
                   f"{e['ttft_own_s_mean']:.2f}s | {e['ttft_exact_s_mean']:.3f}s | **{e['ttft_speedup']:.1f}x** | "
                   f"{e['answer_agreement']:.0%} | {e['max_first_token_kl']:.1e} |")
    return out + [""]


def fleet_section() -> list[str]:
    r = _load("fleet_load.json")
    out = ["## A fleet over one document under load: the base and its activated variants", ""]
    if not r:
        return out + ["(not measured yet)", ""]
    out += [f"Each workflow: {' -> '.join(r['models'])} over one fresh {r['tokens']}-token context, each model asking "
            f"its own question after the previous one answered; Poisson arrivals; the real server on loopback, with "
            f"sharing and without (`DROIDSPEAK_SHARE=0`: every model prefills the context itself). TTFT SLO "
            f"{r['slo_s']}s. Command: `{r['command']}` ({r['date']}).", "",
            "| workflows/s | mode | requests/s | TTFT p50 | TTFT p90 | SLO met | good requests/s | cached tokens (mean) | "
            "TTFT p50 per model |", "|---|---|---|---|---|---|---|---|---|"]
    for rate in sorted(r["modes"]["sharing"], key=float):
        for mode in ("sharing", "no_sharing"):
            x = r["modes"][mode][rate]
            per = ", ".join(f"{m} {t:.2f}s" for m, t in (x.get("per_model_ttft_p50_s") or {}).items())
            out.append(f"| {rate} | {mode.replace('_', ' ')} | {x['requests_per_s']:.3f} | {x['ttft_p50_s']:.2f}s | "
                       f"{x['ttft_p90_s']:.2f}s | {x['slo_attainment']:.0%} | "
                       f"{x['requests_per_s'] * x['slo_attainment']:.3f} | {x['cached_tokens_mean']:.0f} | {per} |")
    return out + [""]


def engine_section() -> list[str]:
    r = _load("fleet_engine.json")
    out = ["## The serving path against the direct path and the limit", ""]
    if not r:
        return out + ["(not measured yet: `python bench/fleet_engine.py`)", ""]
    m = r["measured"]
    med = statistics.median
    out += [f"The real server (base + three activated variants, in-process tier) beside the CLI's direct path on the "
            f"same prompts, one after the other, {r['context_tokens']}-token contexts, {r['rows']} rows; "
            f"{r['machine']['cpu']}, {r['date']}. Command: `{r['command']}`.", "",
            "| what | server | direct / limit | ratio |", "|---|---|---|---|",
            f"| exact hit TTFT (activated variant over the base's context) | {med(m['hit_ttft_s']):.3f}s | "
            f"{med(m['exact_direct_s']):.3f}s (CLI exact reuse) | {r['exact_hit_over_direct']:.2f}x |",
            f"| miss TTFT (the base, a fresh context) | {med(m['miss_ttft_s']):.3f}s | "
            f"{med(m['full_direct_s']):.3f}s (CLI full prefill) | {r['miss_over_full_prefill']:.2f}x |",
            f"| one request decoding alone | {1000 / m['decode_alone_tokens_s']:.1f} ms/token | "
            f"{r['weight_read_bound_s'] * 1000:.1f} ms (weights {r['weight_bytes'] / 1e6:.0f} MB at the measured "
            f"{r['read_bandwidth_gb_s']:.0f} GB/s); a plain transformers step "
            f"{m['plain_step_s']['smollm2-qa-alora'] * 1000:.1f} ms | "
            f"{r['decode_alone_over_bound']:.2f}x the bound, {r['decode_alone_over_plain_step']:.2f}x the plain step |",
            f"| four models of one base decoding at once | {m['decode_four_tokens_s']:.1f} tokens/s | "
            f"{m['decode_alone_tokens_s']:.1f} tokens/s one alone | {r['decode_four_over_alone']:.2f}x"
            + (f" (median of {len(m['decode_four_over_alone_runs'])} pairs back to back: "
               + ", ".join(f"{x:.2f}" for x in m["decode_four_over_alone_runs"]) + ")"
               if "decode_four_over_alone_runs" in m else "") + " |"]
    if m.get("packed"):  # results from before the packed weights lack it
        pk = m["packed"]
        out += [f"| the same, on a second server keeping packed weights too (`DROIDSPEAK_PACKED_WEIGHTS=true`), "
                f"its pairs alternating with the above | {med(pk['decode_four_runs']):.1f} tokens/s four at once | "
                f"{med(pk['decode_alone_runs']):.1f} tokens/s one alone | {r['decode_four_over_alone_packed']:.2f}x ("
                + ", ".join(f"{x:.2f}" for x in pk["decode_four_over_alone_runs"])
                + f"); four at once, packed over not: {r['decode_four_packed_over_not_packed']:.2f}x |"]
    if "peft_step_over_lean_step" in r:  # results from before the router's lean path lack it
        ps = m["plain_step_s"]
        via_peft = ps["smollm2-qa-alora (PEFT's forward)"]
        out += [f"| a plain step of the variant, its LoRA layers on the router's lean path | "
                f"{ps['smollm2-qa-alora'] * 1000:.1f} ms | {ps['base'] * 1000:.1f} ms (the base's plain step) | "
                f"{r['variant_step_over_base_step']:.2f}x the base |",
                f"| the same step through PEFT's own LoRA forward | "
                f"{via_peft * 1000:.1f} ms | "
                f"{ps['smollm2-qa-alora'] * 1000:.1f} ms (the lean path) | {r['peft_step_over_lean_step']:.2f}x |"]
    if "layouts" in m:  # results from before the layouts were measured lack them
        lay = m["layouts"]
        out += [f"| a plain step of the same variant in the server's weight layout | "
                f"{1000 / m['decode_alone_tokens_s']:.1f} ms/token | {lay['plain_step_server_s'] * 1000:.1f} ms "
                f"({lay['plain_step_default_s'] * 1000:.1f} ms in the CLI's, measured beside it) | "
                f"{r['decode_alone_over_plain_step_server_layout']:.2f}x the plain step |",
                f"| the step's linears alone (each projection's module on one token, nothing else) | - | "
                f"{lay['linear_floor_server_s'] * 1000:.1f} ms in the server's layout "
                f"({lay['linear_floor_default_s'] * 1000:.1f} ms in the CLI's) | {r['linear_floor_over_bound']:.2f}x "
                "the bound |"]
    return out + [""]


def kernels_section() -> list[str]:
    r = _load("decode_kernels.json")
    if not r:
        return []
    ms, rows = r["projections_ms"], [str(x) for x in r["rows"]]
    out = ["### A decode step's projections by batch rows", "",
           f"Every projection of SmolLM2 ({r['weight_bytes'] / 1e6:.0f} MB) applied by its own module to that many rows, "
           f"nothing else, in each weight layout, side by side in one run; the weight-read bound "
           f"{r['weight_read_bound_ms']:.1f} ms ({r['read_bandwidth_gb_s']:.0f} GB/s measured). {r['machine']['cpu']}, "
           f"{r['date']}. Command: `{r['command']}`.", "",
           "| layout | " + " | ".join(f"{x} row" + ("s" if x != "1" else "") for x in rows) + " |", "|---|" + "---|" * len(rows)]
    names = {"cli": "CLI (nn.Linear, MKL)", "server": "server (default: every few-row product split over the threads)",
             "server, packed": "server with `DROIDSPEAK_PACKED_WEIGHTS=true` (one row split, 2-16 rows packed for oneDNN)"}
    for k, name in names.items():
        out.append(f"| {name} | " + " | ".join(f"{ms[k][x]:.1f} ms" for x in rows) + " |")
    out.append("| packed / split | " + " | ".join(f"{r['packed_over_split'][x]:.2f}x" for x in rows) + " |")
    return out + [""]


def fleet8_section() -> list[str]:
    out = ["## An agentic fleet of eight over one document", ""]
    runs = [r for r in (_load("agent_fleet_exact.json"), _load("agent_fleet.json")) if r]
    if not runs:
        return out + ["(not measured yet: `python bench/agent_fleet.py`)", ""]
    for r in runs:
        out += _fleet8_run(r)
    return out


FLEET_KIND = {"exact": "The base and its activated variants (the fleet built to share one cache)",
              "mixed": "Every kind of variant we ship (activated, top-20 LoRA, a LoRA on every layer)"}


def _fleet8_run(r: dict) -> list[str]:
    agents = ", ".join(f"{role} ({model})" for role, model in r["agents"])
    out = [f"### {FLEET_KIND[r.get('fleet', 'mixed')]}", "",
           f"Each workflow: one {r['tokens']}-token document, then eight agents in turn, each reading the whole "
           f"conversation so far: {agents}. Poisson arrivals; the real server on loopback, with sharing and with "
           f"`DROIDSPEAK_SHARE=0` (each model reuses only what it stored itself). TTFT SLO {r['slo_s']}s. Command: "
           f"`{r['command']}` ({r['date']}).", "",
           "| workflows/s | mode | requests/s | TTFT p50 | TTFT p95 | SLO met | good requests/s | prompt tokens cached |",
           "|---|---|---|---|---|---|---|---|"]
    rates = [k for k in r["modes"]["sharing"] if k not in ("kv_bytes_one_workflow", "one_workflow")]
    for rate in sorted(rates, key=float):
        for mode in ("sharing", "no_sharing"):
            x = r["modes"][mode][rate]
            n = f" ({len(x['raw']) // len(r['agents'])} workflows)" if x.get("raw") else ""
            out.append(f"| {rate}{n} | {mode.replace('_', ' ')} | {x['requests_per_s']:.3f} | {x['ttft_p50_s']:.2f}s | "
                       f"{x['ttft_p95_s']:.2f}s | {x['slo_attainment']:.0%} | {x['goodput_rps']:.3f} | "
                       f"{x['cached_fraction']:.0%} |")
    kv = r["kv_bytes_per_context"]
    out += ["", "Gains (sharing over not): " + "; ".join(
        f"at {rate}/s requests/s {g['requests_per_s']:.2f}x, p95 TTFT {g['p95_ttft']:.2f}x, good requests/s "
        + (f"{g['goodput']:.2f}x" if g["goodput"] else "unbounded (none met the SLO without sharing)")
        for rate, g in r["gains"].items()) + f". KV held after one workflow: {kv['sharing'] / 2**20:.0f} MiB with "
        f"sharing, {kv['no_sharing'] / 2**20:.0f} MiB without" + (
            "" if kv["no_sharing"] > 1.05 * kv["sharing"] else
            f" (the same: without sharing an activated variant still writes its context's blocks under its base's keys, "
            f"so it prefills again but stores nothing new; a prefix cache keyed by model would hold one copy per model, "
            f"{len({m for _, m in r['agents']})} here)") + ".",
            "", "TTFT p50 per role with sharing (one workflow alone): " + ", ".join(
                f"{role} {t:.2f}s" for role, t in r["modes"]["sharing"]["one_workflow"]["per_role_ttft_p50_s"].items())]
    own, alone = r["modes"]["sharing"]["one_workflow"]["per_role_ttft_p50_s"], \
        r["modes"]["no_sharing"]["one_workflow"]["per_role_ttft_p50_s"]
    full = [role for role in own if own[role] >= 0.8 * alone[role] and alone[role] > 2 * min(alone.values())]
    if full:
        out[-1] += (f". {len(full)} of {len(own)} requests per workflow {'prefills' if len(full) == 1 else 'prefill'} "
                    "the whole conversation in both modes "
                    f"({', '.join(full)}), so "
                    "the p95 TTFT is a full prefill's with or without sharing; sharing moves it only by the queueing it saves.")
    return out + [""]


def guard_section() -> list[str]:
    out = ["## The online quality guard under drifting traffic", ""]
    files = sorted(RES.glob("guard_drift*.json"))
    if not files:
        return out + ["(not measured yet)", ""]
    for f in files:
        out += _guard_run(json.loads(f.read_text()))
    return out


def _guard_run(r: dict) -> list[str]:
    out = [f"### {r.get('sender', 'smollm2-135m-instruct')} -> {r['receiver']}", ""]
    tl = r["timeline"]
    n = r["n"]
    widen = [t for t in tl if t["widened"]]
    first = widen[0]["i"] if widen else None
    out += [f"Receiver {r['receiver']} (profiled) over contexts {r.get('sender', 'the base')} read first; "
            f"{n} workflows of its own task "
            f"({r['tasks'][0]}, calibration-like), then {n} of another task ({r['tasks'][1]}); every profiled hit "
            f"shadow-checked for the run (window {r['window']}, at least {r['min_samples']} checks). "
            f"Command: `{r['command']}` ({r['date']}).", "",
            f"![live agreement and plan over time](bench/results/{r['plot']})", ""]
    if widen:
        det = tl[-1].get("widened_detail") or []
        steps = "; ".join(f"{d['from']} -> {d['to']} at live agreement {d['live_agreement']:.2f} "
                          f"(verified {d['verified']:.2f}, {d['checks']} checks)" for d in det)
        out += [f"First widening after request {first} ({'after' if first >= n else 'before'} the switch at {n}): {steps}.", ""]
    else:
        out += ["The guard never widened the plan in this run.", ""]
    out += ["| phase | requests | live agreement at its end | lowest live agreement | verified by the profile | "
            "plan in force at its end |", "|---|---|---|---|---|---|"]
    for p in r["tasks"]:
        rows = [t for t in tl if t["phase"] == p]
        live = [t["live_agreement"] for t in rows if t["live_agreement"] is not None]
        fmt = (lambda x: "-" if x is None else f"{x:.3f}")
        out.append(f"| {p} | {len(rows)} | {fmt(rows[-1]['live_agreement'])} | {fmt(min(live) if live else None)} | "
                   f"{fmt(rows[-1]['verified_agreement'])} | {rows[-1]['plan_now']} |")
    if r.get("overhead"):
        o = r["overhead"]
        out += ["", f"Overhead, side by side on fresh servers ({o['0']['requests']} requests each): "
                f"{o['0']['requests_per_s']:.3f} req/s with `shadow_fraction` 0 against {o['0.02']['requests_per_s']:.3f} "
                f"with 0.02 ({o['0.02']['checks']} checks ran): a ratio of {o['throughput_ratio']:.3f}."]
    return out + [""]


def gpu_section() -> list[str]:
    r = _load("gpu_ttft.json")
    out = ["## On a GPU", ""]
    if not r or r.get("device") == "cpu":
        out += ["Not run in this round (no GPU was lent). `python bench/gpu_ttft.py --compile --out "
                "bench/results/gpu_ttft.json` runs it in one command (Llama-3-8B shape, random bf16 weights, "
                "eager and with the suffix under CUDA graphs, decode against HF generate); "
                "`python bench/gpu_ttft.py --device cpu --tiny --compile` is its smoke test."]
        smoke = _load("gpu_smoke.json")
        if smoke:
            agrees = all(all(e.get("compiled_greedy_agrees", {}).values()) for e in smoke["results"])
            out += ["", f"Its smoke test ran on this CPU (`{smoke['command']}`, {smoke['date']}): every path completed"
                    + (f", compiled greedy answers {'agree' if agrees else 'DIFFER'} with eager"
                       if any("compiled_greedy_agrees" in e for e in smoke["results"]) else "")
                    + " (tiny model: the timings say nothing about a GPU)."]
        return out + [""]
    plans = [p for p in r["results"][0]["ttft_s"] if p != "full_prefill"]
    out += [f"{r['device']}, {r['dtype']}, torch {r['torch']}, {r['model']}, {r['suffix_tokens']}-token suffix. "
            f"Command: `{r['command']}` ({r['date']}).", "",
            "| context | full prefill | " + " | ".join(f"{p} (speedup; of its limit)" for p in plans) + " | compiled |",
            "|---|---|" + "---|" * len(plans) + "---|"]
    for e in r["results"]:
        t, full = e["ttft_s"], e["ttft_s"]["full_prefill"]
        cells = []
        for p in plans:
            lim = e["plan_over_limit"].get(p)
            cells.append(f"{t[p] * 1e3:.1f} ms ({full / t[p]:.2f}x" + (f"; {lim:.2f}" if lim else f"; {t[p] / full:.1%} of full")
                         + ")")
        comp = ", ".join(f"{p} {v * 1e3:.1f} ms" for p, v in e.get("compiled_ttft_s", {}).items()) or "-"
        out.append(f"| {e['context_tokens']} | {full * 1e3:.1f} ms | " + " | ".join(cells) + f" | {comp} |")
    d = r.get("decode")
    if d:
        out += ["", f"Decode, batch {d['batch']} at {d['context_tokens']} tokens: the engine's batched decode "
                f"{d['engine_tokens_s']:.0f} tokens/s, Hugging Face generate {d['hf_generate_tokens_s']:.0f} tokens/s."]
    return out + [""]


def _earlier_weights(sender: str, receiver: str, receiver_identity: str | None) -> str:
    """' (earlier weights)' when a result was measured on a receiver the shipped profile no longer names."""
    p = ROOT / "profiles" / f"{sender}__{receiver}.json"
    if not p.is_file() or not receiver_identity:
        return ""
    return "" if json.loads(p.read_text()).get("receiver_identity") == receiver_identity else " (earlier weights)"


def sensitivity_section() -> list[str]:
    files = sorted(RES.glob("sensitivity_*.json"))
    out = ["## Layer sensitivity (the paper's Fig. 7)", "",
           "Reuse one layer of the sender, recompute all the others; quality against the receiver's own "
           "full prefill. A layer is critical when reusing it alone costs more than 10% (relative).", ""]
    if not files:
        return out + ["(not measured yet)", ""]
    out += ["| sender -> receiver | layers | rows | metric | full prefill | full reuse (drop) | critical layers | "
            "fraction | block | block as depth | KL-heaviest layers | plot |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        r = json.loads(f.read_text())
        crit = r["critical_layers"]
        L = len(r["layers"])
        blk = critical_block(r)
        depth = "-" if blk == "none" else "{:.0%}-{:.0%}".format(*(int(x) / L for x in blk.split(":")))
        top = sorted(r["layers"], key=lambda x: -x["first_token_kl"])[:max(2, L // 6)]
        sliding = set(r.get("sliding_layers") or [])
        heavy = ", ".join(f"{x['layer']}{'s' if x['layer'] in sliding else ''}"
                          for x in sorted(top, key=lambda x: x["layer"]))
        old = _earlier_weights(r["sender"], r["receiver"], r.get("receiver_identity"))
        out.append(f"| {r['sender']} -> {r['receiver']}{old} | {L} | {r['rows']} | {r['quality_metric']} | "
                   f"{r['quality_full_prefill']:.3f} | {r['full_reuse']['quality']:.3f} "
                   f"({r['full_reuse']['relative_drop']:+.0%}) | {crit} | {r['critical_fraction']:.0%} | {blk} | {depth} | "
                   f"{heavy} | [{f.stem}.png](bench/results/{f.stem}.png) |")
    out += ["", "Command: `droidspeak study sensitivity --sender SENDER --receiver RECEIVER --n ROWS "
            "--profile-out profiles/SENDER__RECEIVER.json` (ROWS as in the table; calibration rows of the receiver's "
            "task, 1024-1536 context tokens; first-token KL per layer is in the JSON and the plot's lower panel). "
            "`block` is the provisional plan the profile carries: the span of the critical layers, or, where none "
            "is critical, of the layers whose reuse alone costs at least half the largest single-layer KL. "
            "`block as depth` puts it on the same scale for models of different depth; `KL-heaviest layers` are the "
            "sixth of the layers whose reuse alone moves the first token most (`s`: a sliding-window layer). "
            "`(earlier weights)`: measured on an earlier version of that variant than the one shipped now.", ""]
    return out


def ttft_section() -> list[str]:
    r = _load("ttft_partial.json")
    out = ["## Receiver TTFT: full prefill vs partial prefill", ""]
    if not r:
        return out + ["(not measured yet)", ""]
    m = r["machine"]
    out += [f"Sender {r['sender']}, receiver {r['receiver']}, fp32, {m['threads']} torch threads on {m['cpu']}, "
            f"torch {m['torch']}, {r['date']}. Median of the repeats, all plans interleaved in one run. "
            "Limit = recomputed fraction x full-prefill time. Plan `none` is the fixed cost every plan pays (the "
            "request's own tokens over the reused cache); a one-token forward is its floor on this machine (reading "
            "every weight once); `(TTFT - none) / limit` is how close the recomputation itself comes to its limit.", "",
            f"Command: `{r['command']}`", "",
            "| context tokens | plan | layers recomputed | TTFT (s) | full prefill (s) | speedup | limit (s) | "
            "TTFT / limit | (TTFT - none) / limit | one-token forward (s) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for e in r["results"]:
        for p in e["plans"]:
            ratio = f"{p['ratio_to_limit']:.2f}" if p["ratio_to_limit"] else "-"
            rec = f"{p['recompute_over_limit']:.2f}" if p.get("recompute_over_limit") else "-"
            one = f"{e['one_token_s']:.3f}" if e.get("one_token_s") else "-"
            out.append(f"| {e['context_tokens']} | {p['plan']} | {p['recomputed_layers']}/30 | {p['ttft_s']:.3f} | "
                       f"{e['full_prefill_s']:.3f} | {p['speedup']:.2f}x | {p['limit_s']:.3f} | {ratio} | {rec} | {one} |")
    return out + [""]


def profiles_section() -> list[str]:
    out = ["## Profiles: the cheapest plan within the quality budget", "",
           "Label-free quality (agreement of the receiver's answer with its own full-prefill answer), 1% budget, "
           "granularity 2, calibration rows of the receiver's task. Every contiguous group is scored with the "
           "teacher-forced proxy; the frontier is verified by greedy decoding (bisection).", "",
           "| sender -> receiver | rows (tokens) | full reuse drop | chosen plan | layers recomputed | verified drop | "
           "candidates / decoded | multi-group on frontier | wall | plots | command |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    found = False
    for f in sorted((ROOT / "profiles").glob("*.json")):
        p = json.loads(f.read_text())
        if p.get("format") != "droidspeak-profile/1":
            continue
        found = True
        if p.get("exact"):
            out.append(f"| {p['sender']} -> {p['receiver']} | - | - | **{p['chosen_plan']}** (proven exact) | "
                       f"{p['chosen']['recomputed_layers']}/{p['exactness']['exact_layers']} | "
                       f"0 by construction ({p['exactness']['kind']}) | "
                       f"- | - | - | - | `{p.get('command', '')}` |")
            continue
        ch, fr, ct = p["chosen"], p["full_reuse"], p["context_tokens"]
        plots = " ".join(f"[{k}](profiles/{v})" for k, v in p.get("plots", {}).items())
        out.append(f"| {p['sender']} -> {p['receiver']} | {p['rows']} ({ct['min']}-{ct['max']}) | "
                   f"{fr['relative_drop']:.0%} | **{ch['plan']}** | {ch['recomputed_layers']}/{p['cost_model']['num_layers']} | "
                   f"{ch['relative_drop']:.1%} | {p['search']['evaluated']} / {p['search']['verified']} | "
                   f"{p['search']['multi_group_on_frontier']} | {p['wall_s'] / 60:.1f} min | {plots} | "
                   f"`{p.get('command', '')}` |")
    if not found:
        out.append("| (no profile written yet) |")
    return out + [""]


def scattered_section() -> list[str]:
    """Contiguous vs scattered recomputation at equal cost, from the profiles' measured candidates."""
    out = ["## Contiguous vs scattered recomputation at equal cost", "",
           "From the profiles above: every scattered plan the search measured (the k most sensitive 2-layer units, "
           "wherever they lie) against the best contiguous group recomputing the same number of layers. Mean KL over "
           "the receiver's own answer (teacher-forced, lower is better).", "",
           "| pair | layers recomputed | scattered plan | its KL | best contiguous | its KL | winner |",
           "|---|---|---|---|---|---|---|"]
    n = 0
    for f in sorted((ROOT / "profiles").glob("*.json")):
        p = json.loads(f.read_text())
        if p.get("format") != "droidspeak-profile/1" or p.get("exact"):
            continue
        cands = p["candidates"]
        single = {}
        for c in cands:
            if c["groups"] == 1 and c["kind"] != "all":
                k = c["recomputed_layers"]
                if k not in single or c["mean_kl"] < single[k]["mean_kl"]:
                    single[k] = c
        for c in sorted((c for c in cands if c["kind"] == "scattered"), key=lambda c: c["recomputed_layers"]):
            best = single.get(c["recomputed_layers"])
            if not best:
                continue
            n += 1
            win = "scattered" if c["mean_kl"] < best["mean_kl"] else "contiguous"
            out.append(f"| {p['sender']} -> {p['receiver']} | {c['recomputed_layers']} | {c['plan']} | {c['mean_kl']:.4f} | "
                       f"{best['plan']} | {best['mean_kl']:.4f} | {win} |")
    if not n:
        out.append("| (no scattered plan measured yet) |")
    return out + [""]


def eval_section() -> list[str]:
    files = sorted(RES.glob("eval_*.json"))
    out = ["## Held-out evaluation of the chosen plans", "",
           "About 4K context tokens, but where a receiver is competent only at shorter contexts (the rows' token "
           "range says which).", ""]
    if not files:
        return out + ["(not measured yet)", ""]
    out += ["| sender -> receiver | plan | rows (tokens) | metric | full prefill | plan (drop) | full reuse (drop) | "
            "agreement plan / full reuse | TTFT plan | TTFT full reuse | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    full = []  # pairs whose plan recomputes every layer
    for f in files:
        r = json.loads(f.read_text())
        if r["recomputed_layers"] == r["num_layers"]:
            full.append(f"{r['sender']} -> {r['receiver']}")
        ct = r["context_tokens"]
        col = lambda k: [x[k] for x in r["per_row"]]  # noqa: E731

        def drop(k):
            d = relative_drop_ci(col("quality_full"), col(k))
            return f"{d.value:+.1%} [{d.low:+.0%}, {d.high:+.0%}]" if d else "n/a"
        out.append(f"| {r['sender']} -> {r['receiver']} | {r['plan']} ({r['recomputed_layers']}/{r['num_layers']}) | "
                   f"{r['rows']} ({ct['min']}-{ct['max']}) | {r['metric']} | {r['quality_full']:.3f} | "
                   f"{r['quality_plan']:.3f} ({drop('quality_plan')}) | {r['quality_full_reuse']:.3f} "
                   f"({drop('quality_full_reuse')}) | {r['agreement_plan']:.2f} / {r['agreement_full_reuse']:.2f} | "
                   f"**{r['ttft_speedup']:.2f}x** | {r['ttft_speedup_full_reuse']:.1f}x | `{r['command']}` |")
    out += ["", "TTFT columns: the receiver's own full-prefill time over the plan's (sum over rows, "
                "measured side by side per row). Drops are relative to the full prefill's quality, with 95% "
                "bootstrap intervals paired over the rows (n/a: the full prefill scores 0)."]
    if full:
        out.append(f"A plan that recomputes every layer ({', '.join(full)}: the profile found no layer the receiver "
                   "can take from the sender within the 1% budget) is the receiver's own prefill, equal to it up to rounding by "
                   "construction (tests/test_partial.py): its drop is zero on any rows and it saves no time, so "
                   "those rows were not extended to 100.")
    return out + [""]


def pipeline_section() -> list[str]:
    r = _load("pipeline.json")
    out = ["## Pipelined (E-first) vs sequential loading, and bandwidth-aware plans", ""]
    if not r:
        return out + ["(not measured yet)", ""]
    out += [f"Receiver {r['receiver']} over a {r['context_tokens']}-token context stored by {r['sender']}, read "
            "through a throttled connector. Orders as in the paper's toy example. Command: "
            f"`{r['command']}` ({r['date']}, {r['machine']['threads']} threads).", "",
            "| bandwidth (MB/s) | full prefill | all-then-compute | reused-then-compute | e-first | plan | "
            "bandwidth-aware plan | its TTFT | smallest plan's TTFT |", "|---|---|---|---|---|---|---|---|---|"]
    for e in r["results"]:
        o = e["orders"]
        out.append(f"| {e['bandwidth_mb_s']:g} | {e['full_prefill_s']:.2f}s | {o['all-then-compute']:.2f}s | "
                   f"{o['reused-then-compute']:.2f}s | **{o['e-first']:.2f}s** | {e['order_plan']} | {e['aware_plan']} | "
                   f"{e['aware_s']:.2f}s | {e['smallest_plan_s']:.2f}s ({r['profile_plan']}) |")
    return out + [""]


def aware_section() -> list[str]:
    r = _load("pipeline_gold.json")
    out = ["## Bandwidth-aware plan choice against always the cheapest plan", ""]
    if not r:
        return out + ["(not measured yet)", ""]
    out += [f"Plans from the gold-label base -> qa profile, whose cheapest plan within budget is "
            f"`{r['profile_plan']}` (it fetches every layer). Per link speed the bandwidth-aware rule picks, among that "
            "profile's plans within budget, the lowest predicted TTFT (E-first pipelining, measured compute speed). "
            f"Command: `{r['command']}` ({r['date']}).", "",
            "| bandwidth (MB/s) | full prefill | cheapest plan | its TTFT | bandwidth-aware plan | predicted | its TTFT |",
            "|---|---|---|---|---|---|---|"]
    for e in r["results"]:
        out.append(f"| {e['bandwidth_mb_s']:g} | {e['full_prefill_s']:.2f}s | {r['profile_plan']} | "
                   f"{e['smallest_plan_s']:.2f}s | "
                   f"{e['aware_plan']} | {e['aware_predicted_s']:.2f}s | **{e['aware_s']:.2f}s** |")
    return out + [""]


def formats_section() -> list[str]:
    r = _load("formats.json")
    out = ["## Transfer formats: bytes and quality", ""]
    if not r:
        return out + ["(not measured yet)", ""]
    out += [f"{r['sender']} -> {r['receiver']}, plan {r['plan']}, {r['rows']} calibration rows; KL and agreement "
            f"against the same plan over native fp32 entries. Command: `{r['command']}`.", "",
            "| format | bytes per token stored | first-token KL | answer agreement |", "|---|---|---|---|"]
    for f, d in r["formats"].items():
        out.append(f"| {f} | {d['bytes_per_token']:.0f} | {d['kl']:.2e} | {d['agree']:.3f} |")
    return out + [""]


def toolcalls_section() -> list[str]:
    r = _load("tool_calls.json")
    out = ["## Tool calls through the API: the tools block and constrained decoding", ""]
    if not r:
        return out + ["(not measured yet: `python bench/tool_calls.py`)", ""]
    out += [f"{r['rows']} held-out toolcall rows ({r['context_tokens'][0]}-{r['context_tokens'][1]}-token order logs, "
            "wording never trained on), greedy, through `droidspeak serve` and the openai client: `plain` is the "
            "request as the tool-call variants were trained on it (no `tools`), `tools_auto` offers the three "
            "order tools (the tools block in the prompt), `tools_named` names the gold function (decoding "
            "constrained to its schema). `exact`: name and all four arguments right; `fields`: the share of "
            f"them right. Means with 95% bootstrap intervals; on {r['machine']['cpu']}, {r['date']}. "
            f"Command: `{r['command']}`.", "",
            "| model | mode | exact | fields | exact minus plain (paired) | fields minus plain (paired) |",
            "|---|---|---|---|---|---|"]

    def ci(d, fmt="{:.2f}"):
        return f"{fmt.format(d['value'])} [{fmt.format(d['ci95'][0])}, {fmt.format(d['ci95'][1])}]" if d else "-"
    for m, modes in r["models"].items():
        for mode, d in modes.items():
            out.append(f"| {m} | {mode} | {ci(d['exact'])} | {ci(d['fields'])} | "
                       f"{ci(d.get('exact_minus_plain'), '{:+.2f}')} | {ci(d.get('fields_minus_plain'), '{:+.2f}')} |")
    if r.get("base"):
        b = r["base"]
        out.append(f"| {b['model']} (base) | tools_named | {ci(b['tools_named']['exact'])} | "
                   f"{ci(b['tools_named']['fields'])} | - | - |")
    return out + [""]


def grammar_section() -> list[str]:
    r = _load("grammar_cost.json")
    out = ["## Structured output: what the grammar costs", ""]
    if not r:
        return out + ["(not measured yet: `python bench/grammar_cost.py`)", ""]
    out += [f"The allowed-token mask for `tool_choice` required/named and `response_format` json_object/json_schema, "
            f"for SmolLM2's tokenizer, a {r['tokens_fed']}-token tool call fed token by token (mask, apply to the "
            f"logits, advance), the same JSON style for both libraries; on {r['machine']['cpu']}, {r['date']}. "
            f"Command: `{r['command']}`.", "",
            "| library | tokenizer setup | compile: any object | compile: tool-call schema "
            "| per token: any object | per token: tool call |", "|---|---|---|---|---|---|"]
    for lib in ("llguidance", "xgrammar"):
        d = r.get(lib, {})
        if "error" in d:
            out.append(f"| {lib} | did not run: {d['error']} | | | | |")
            continue
        out.append(f"| {lib} | {d['tokenizer_s'] * 1000:.0f} ms | {d['json_object']['compile_s'] * 1000:.2f} ms | "
                   f"{d['tool_call']['compile_s'] * 1000:.2f} ms | {d['json_object']['per_token_s'] * 1e6:.0f} us | "
                   f"{d['tool_call']['per_token_s'] * 1e6:.0f} us |")
    sv = r["served"]
    out += ["", f"Served (droidspeak's matcher on llguidance, mask and advance): "
            f"{sv['mask_and_advance_per_token_s'] * 1e6:.0f} us a token beside a SmolLM2 decode step of "
            f"{sv['decode_step_s'] * 1000:.1f} ms in the same run: constrained decoding adds "
            f"{sv['overhead_fraction'] * 100:.2f}% to a token."]
    return out + [""]


def train_step_section() -> list[str]:
    """What one training step costs by adapter kind, and what packing an activated step's requests saved."""
    r = _load("train_step.json")
    out = ["## Training cost: an activated step against a standard LoRA's, and packed requests", ""]
    if not r:
        return out + ["(not measured yet: `python bench/train_step.py`)", ""]
    out += [f"One training step on SmolLM2 over real QA training contexts, on {r['machine']['cpu']}, "
            f"{r['machine']['threads']} threads, {r['date']}; medians over {len(r['rows']) // len(r['median_by_questions'])} "
            "contexts per row, each timed every way in the "
            f"same run. Command: `{r['command']}`.", "",
            "| requests per context | context forward, no gradients (s) | requests, batched (s) | requests, packed (s) "
            "| packed over batched | activated step (s) | LoRA step (s) | LoRA step / activated step |",
            "|---|---|---|---|---|---|---|---|"]
    for q, m in r["median_by_questions"].items():
        out.append(f"| {q} | {m['context_forward_s']:.2f} | {m['batched_s']:.2f} | {m['packed_s']:.2f} | "
                   f"{m['requests_speedup']:.2f}x | {m['alora_step_s']:.2f} | {m['lora_step_s']:.2f} | "
                   f"{m['lora_over_alora_step']:.2f}x |")
    same = all(x["batched_loss"] == x["packed_loss"] for x in r["rows"])
    return out + ["", "Requests (forward and backward): *batched* is the layout training used before, one right-padded "
                      "row per request over the context's cache forked as an expanded view; *packed* is today's, every "
                      "request in one row behind a block-causal mask (each request sees the context and itself, at its "
                      f"own positions). Losses {'equal to 5 decimals on every context' if same else 'DIFFER'}; the "
                      "gradients' equality is tested (`tests/test_training.py`). The LoRA step runs the context with "
                      "gradients and back-propagates through it (`--adapter lora`); the activated step is the context "
                      "forward without gradients plus the packed requests.", ""]


def hybrid_section() -> list[str]:
    """Issue 23's hybrid recipe: an activated LoRA below layer K and a LoRA on layers K+, paired with the variants
    table's columns on the same rows (one row per K measured)."""
    runs = sorted((json.loads(f.read_text()) for f in RES.glob("alora_hybrid*.json")), key=lambda r: r["first_layer"])
    out = ["## An activated LoRA below layer K, a LoRA above it: the hybrid recipe", ""]
    if not runs:
        return out + ["(not measured yet: `python bench/alora_hybrid.py`)", ""]
    r = runs[0]
    ci = lambda c: f"{c['value']:.3f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]"  # noqa: E731
    rat = lambda c: f"{c['value']:.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]" if c else "-"  # noqa: E731
    out += [f"{r['recipe']}'s recipe ({r['steps']} steps, {r['questions']} requests per context, contexts of "
            f"{r['train_lengths'][0]}-{r['train_lengths'][1]} tokens, learning rate {r['lr']:g}, seed {r['seed']}): an "
            f"activated LoRA of rank {r['ranks']['activated']} on layers 0..K-1 and a LoRA of rank {r['ranks']['top']} "
            f"on layers K..{r['layers'] - 1}, trained together, scored on the held-out rows of an evaluation in the "
            "variants table (paired with its columns, row by row). Below layer K the hybrid's context cache is the "
            "base's, bit for bit (checked on each run's first rows), so it shares the base's cache exactly with plan "
            "K:L, recomputing the top layers over the context, where the activated LoRA recomputes none. Not a shipped "
            "kind: the server does not host two adapters as one model.", "",
            "| K (plan) | context recomputed | rows | context tokens | base | LoRA | activated LoRA | hybrid | "
            "hybrid / LoRA | hybrid / activated | training | machine, date | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        cols = r["columns"]
        lora, alora = (k for k in cols if k != "base")
        out.append(f"| {r['first_layer']} ({r['first_layer']}:{r['layers']}) | {r['recomputed_fraction']:.0%} | "
                   f"{r['rows']} | {r['tokens'][0]}-{r['tokens'][1]} | {ci(cols['base'])} | {ci(cols[lora])} ({lora}) | "
                   f"{ci(cols[alora])} ({alora}) | {ci(r['score'])} ({r['variant']}) | {rat(r['over_lora'])} | "
                   f"{rat(r['over_alora'])} | {r['train_wall_s'] / 60:.0f} min | {r['machine']['cpu']}, {r['date']} | "
                   f"`{r['command']}` |")
    return out + [""]


def seal_section() -> list[str]:
    r = _load("seal_cost.json")
    out = ["## What sealing the shared tier costs", ""]
    if not r:
        return out + ["(not measured yet: `python bench/seal_cost.py`)", ""]
    t, h = r["throughput"], r["shared_hit"]
    out += [f"Values sealed under the store secret in disk and Redis tiers (HMAC-SHA256; AES-256-GCM with "
            f"`store_encrypt`), on {r['machine']['cpu']}, {r['date']}. Command: `{r['command']}`.", "",
            f"Throughput on one {t['value_mb']} MB K/V entry, beside the codec every shared-tier hit runs anyway:", "",
            "| operation | MB/s | ms per MB |", "|---|---|---|"]
    for k, label in (("codec_encode_mb_s", "codec encode (safetensors + checksum)"),
                     ("codec_decode_mb_s", "codec decode (checks the checksum)"),
                     ("mac_seal_mb_s", "HMAC seal"), ("mac_open_mb_s", "HMAC open (verify)"),
                     ("aead_seal_mb_s", "AES-GCM seal (encrypt)"), ("aead_open_mb_s", "AES-GCM open (decrypt + verify)")):
        out.append(f"| {label} | {t[k]:.0f} | {1000 / t[k]:.2f} |")
    out += ["", f"A shared-tier hit ({h['receiver']} over the base's {h['context_tokens']}-token context, every value "
            f"read from Redis on loopback, median of {h['repeats']}): unsealed {h['ttft_s']['unsealed']:.3f}s, "
            f"HMAC {h['ttft_s']['mac']:.3f}s ({h['mac_over_unsealed']:.2f}x, {h['mac_added_s'] * 1000:+.0f} ms), "
            f"AES-GCM {h['ttft_s']['aead']:.3f}s ({h['aead_over_unsealed']:.2f}x, {h['aead_added_s'] * 1000:+.0f} ms). "
            "The in-process tier is never sealed: its hits are unchanged."]
    return out + [""]


def vllm_section() -> list[str]:
    out = ["## Inside vLLM: the droidspeak connector against vLLM alone", ""]
    a = _load("vllm_alora.json")
    fleets = [json.loads(p.read_text()) for p in sorted(RES.glob("vllm_fleet*.json"))]
    if not a and not fleets:
        return out + ["(not measured yet: `make bench-vllm`, `.venv/bin/python bench/vllm_fleet.py`)", ""]
    if a:
        o, c = a["vllm_own"], a["vllm_connector"]
        out += [f"An activated variant ({a['variant']}) in vLLM {a['machine'].get('vllm')} (CPU build, fp32, prefix "
                f"caching on), one {a['prompt_tokens']}-token prompt, activation point at token {a['activation_at']}; "
                f"TTFT of a one-token request alone on the engine; on {a['machine']['cpu']}, {a['date']}. "
                f"Command: `{a['command']}` (in `.venv-vllm`).", "",
                "| | base's own prefill | the variant's TTFT | the variant again (vLLM's prefix cache) "
                "| 16-token answer equals PEFT's |", "|---|---|---|---|---|",
                f"| vLLM alone (the variant as a plain LoRA) | {o['base_ttft_s']:.2f}s | {o['variant_ttft_s']:.2f}s | "
                f"{o['variant_again_ttft_s']:.2f}s | {'yes' if a['own_answer_equals_peft'] else 'no'} |",
                f"| vLLM + droidspeak connector ({c['loaded_tokens']} tokens loaded) | {c['base_ttft_s']:.2f}s | "
                f"{c['variant_ttft_s']:.3f}s | {c['variant_again_ttft_s']:.3f}s | "
                f"{'yes' if a['connector_answer_equals_peft'] else 'no'} |", "",
                f"The variant's TTFT with the connector over its own prefill in vLLM: "
                f"**{a['vllm_alora_ttft_gain_with_connector']:.0f}x**; over the base's own prefill "
                f"{a['vllm_alora_ttft_gain_vs_base_prefill']:.1f}x.", ""]
    for f in fleets:
        out += [f"The agentic fleet (eight agents in turn over one {f['tokens']}-token document, {f['workflows']} "
                f"workflows arriving at {f['rate']}/s, TTFT SLO {f['slo_s']}s), each server alone on this machine in "
                f"turn, {f['date']}. Command: `{f['command']}`.", "",
                "| server | requests/s | TTFT p50 | TTFT p95 | within SLO | goodput (req/s at SLO) |",
                "|---|---|---|---|---|---|"]
        labels = {"vllm_lora": "vLLM, standard LoRAs, prefix caching", "vllm_connector":
                  "vLLM + connector, the fleet's variants (activated ones primed by the base)",
                  "droidspeak": "droidspeak serve, the fleet's variants"}
        for m, s in f["modes"].items():
            out.append(f"| {labels.get(m, m)} | {s['requests_per_s']:.3f} | {s['ttft_p50_s']:.2f}s | "
                       f"{s['ttft_p95_s']:.2f}s | {s['slo_attainment']:.0%} | {s['goodput_rps']:.3f} |")
        for m, g in (f.get("fleet_gain_vs_vllm") or {}).items():
            gp = f"{g['goodput']:.1f}x" if g.get("goodput") is not None else "n/a (vLLM met the SLO for none)"
            out.append(f"\n{labels.get(m, m)} over vLLM with standard LoRAs: goodput {gp}, p50 TTFT "
                       f"{g['p50_ttft']:.1f}x lower, p95 {g['p95_ttft']:.1f}x lower, requests/s {g['requests_per_s']:.2f}x.")
        out.append("")
    return out


def _fleet8_rows(r: dict) -> list[str]:
    """The agentic fleet of eight: its p95 TTFT gain and requests/s within the SLO, sharing over not."""
    if "fleet8_p95_ttft_gain" not in r:
        return []
    at = f"at {r['fleet8_workflows_per_s']:g} workflows/s" if "fleet8_workflows_per_s" in r else ""
    g = r.get("fleet8_throughput_gain_at_slo")
    good = f"{g:.1f}x" if g is not None else r.get("fleet8_throughput_gain_at_slo_note", "n/a")
    met = "yes" if (g or 0) >= 3 or good.startswith("unbounded") else "no"
    return [f"| agentic fleet of eight, p95 TTFT without sharing over with ({at}) | {r['fleet8_p95_ttft_gain']:.2f}x | "
            f">= 5x | {'yes' if r['fleet8_p95_ttft_gain'] >= 5 else 'no'} |",
            f"| agentic fleet of eight, requests/s within the TTFT SLO ({at}) | {good} (requests/s: "
            f"{r['fleet8_requests_per_s_gain']:.2f}x) | >= 3x | {met} |"]


def _vllm_gain(r: dict) -> str:
    parts = [f"{g['droidspeak']['goodput']:.1f}x at {rate} workflows/s" for rate, g in
             sorted((r.get("fleet_gain_vs_vllm") or {}).items()) if (g.get("droidspeak") or {}).get("goodput")]
    return ", ".join(parts) or "n/a"


def _drop_met(r: dict) -> str:
    """Met only when the paired interval's upper end is within the 1% budget (the point estimate alone can be noise)."""
    v, c = r.get("relative_quality_drop_4k"), r.get("relative_quality_drop_4k_ci95")
    if not isinstance(v, (int, float)):
        return "n/a"
    if c and c["ci95"][1] > 0.01:
        return f"not shown: the interval reaches {c['ci95'][1]:+.1%}" if v <= 0.01 else "no"
    return "yes" if v <= 0.01 else "no"


def _q(r: dict, k: str) -> str:
    v = (r.get("quality_4k") or {}).get(k)
    return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"


def _ci(c: dict | None, fmt: str) -> str:
    return f" [{fmt.format(c['ci95'][0])}, {fmt.format(c['ci95'][1])}]" if c else ""


def summary_section() -> list[str]:
    r = _load("summary.json")
    out = ["## Summary (bench/results/summary.json)", ""]
    if not r:
        return out + ["(not measured yet: `make bench`)", ""]
    def met(k, ok, short="", target=None, ratio=False):
        v = r.get(k)
        if not isinstance(v, (int, float)):
            return "n/a"
        if ok(v):
            return "yes"
        return f"no (a factor {target / v:.1f} below)" if ratio and target else "no"

    def f(k, fmt="{:.2f}"):
        v = r.get(k)
        return fmt.format(v) if isinstance(v, (int, float)) else "n/a"
    out += [f"Produced by `{r['command']}` on {r['machine']['cores']} cores ({r['machine']['cpu']}), {r['date']}.", "",
            "| figure | value | ambition | met |", "|---|---|---|---|",
            f"| receiver TTFT speedup at ~4K tokens, plan {r.get('plan')} ({r.get('sender')} -> {r.get('receiver')}, "
            f"the held-out rows below) | {f('ttft_speedup_4k')}x | >= 4x | "
            f"{met('ttft_speedup_4k', lambda v: v >= 4, '', 4, True)} |",
            f"| relative quality drop at ~4K tokens, same plan and rows ({r.get('quality_metric')}, "
            f"{r.get('quality_rows')} held-out rows; full prefill {_q(r, 'full_prefill')}, plan {_q(r, 'plan')}) | "
            f"{f('relative_quality_drop_4k', '{:+.1%}')}{_ci(r.get('relative_quality_drop_4k_ci95'), '{:+.1%}')} | "
            f"<= 1% | {_drop_met(r)} |",
            f"| plan TTFT / physical limit | {f('limit_ratio_4k')} | <= 1.25 | {met('limit_ratio_4k', lambda v: v <= 1.25)} |",
            f"| plan TTFT / llama.cpp full-prefill TTFT | {f('llamacpp_ratio_4k')} | < 1 | "
            f"{met('llamacpp_ratio_4k', lambda v: v < 1)} |",
            "| throughput gain at the TTFT SLO (the same receiver and plan) | "
            + (f"{f('throughput_gain_at_slo')}x" if r.get("throughput_gain_at_slo") is not None
               else r.get("throughput_gain_at_slo_note", "n/a"))
            + f" (requests/s: {f('throughput_requests_per_s_gain')}x) | (paper: 2-4x) | see serving table |",
            f"| exact reuse TTFT speedup at ~4K tokens (activated variants) | {f('exact_ttft_speedup_4k', '{:.1f}')}x | "
            f"> 10x | {met('exact_ttft_speedup_4k', lambda v: v > 10)} |",
            f"| exact reuse: share of identical answers | {f('exact_answer_agreement_4k', '{:.0%}')} | 100% | "
            f"{met('exact_answer_agreement_4k', lambda v: v >= 1.0)} |",
            f"| activated variant's held-out quality over the standard LoRA's | {f('exact_quality_vs_lora')} | "
            f"(1.0: no cost) | see the variants table |",
            "| fleet throughput gain at the TTFT SLO (base + activated variants) | "
            + (f"{f('fleet_throughput_gain_at_slo')}x" if r.get("fleet_throughput_gain_at_slo") is not None
               else r.get("fleet_throughput_gain_at_slo_note", "n/a"))
            + f" (requests/s: {f('fleet_throughput_gain')}x) | - | see the fleet table |",
            f"| activated variant in vLLM: TTFT with the droidspeak connector over its own prefill | "
            f"{f('vllm_alora_ttft_gain_with_connector', '{:.0f}')}x | >= 50x | "
            f"{met('vllm_alora_ttft_gain_with_connector', lambda v: v >= 50)} |",
            *_fleet8_rows(r),
            "| agentic fleet, droidspeak serve over vLLM with standard LoRAs (requests/s within the TTFT SLO) | "
            + _vllm_gain(r) + " | >= 3x | see the vLLM table |", ""]
    notes = [f"- {k.removesuffix('_note').replace('_', ' ')}: {v}" for k, v in r.items()
             if k.endswith("_note") and k not in ("fleet_throughput_gain_at_slo_note", "throughput_gain_at_slo_note")]
    if notes:
        out += ["Where a figure comes from:", "", *notes, ""]
    return out


def ttft_peers_section() -> list[str]:
    r = _load("ttft_peers.json")
    out = ["## TTFT against context length, beside the peers", ""]
    if not r:
        return out + ["(not measured yet)", ""]
    m = r["machine"]
    out += [f"Receiver {r['receiver']}, sender {r['sender']}, plan {r['plan']} from `{r['profile']}`; "
            f"{m['threads']} torch threads, {m['cores']} cores, torch {m['torch']}, fp32; llama.cpp on the Q4_1 GGUF "
            f"with the same threads{'' if m.get('llamacpp') else ' (not installed for this run)'}. Medians, interleaved. "
            f"Command: `{r['command']}` ({r['date']}).", "",
            "| context tokens | full prefill | full reuse | plan | limit | plan / limit | same-model hit | HF generate | "
            "llama.cpp | plan speedup |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in r["results"]:
        t = e["ttft_s"]
        lc = f"{t['llamacpp']:.2f}s" if "llamacpp" in t else "n/a"
        out.append(f"| {e['context_tokens']} | {t['full_prefill']:.2f}s | {t['full_reuse']:.2f}s | {t['plan']:.2f}s | "
                   f"{e['limit_s']:.2f}s | {e['plan_over_limit']:.2f} | {t['same_model_hit']:.2f}s | "
                   f"{t['hf_generate']:.2f}s | {lc} | {e['speedup_vs_full']['plan']:.2f}x |")
    return out + [""]


def serve_section() -> list[str]:
    out = ["## Serving under load: with and without sharing", ""]
    found = False
    for name in ("serve_load.json", "serve_load_headline.json"):
        r = _load(name)
        if not r:
            continue
        found = True
        out += [f"Workflows {' -> '.join(r['models'])} on shared {r['tokens']}-token contexts (B asks after A answered), "
                f"Poisson arrivals, real server on loopback, TTFT SLO {r['slo_s']}s. Command: `{r['command']}` "
                f"({r['date']}, {r['machine']['cores']} cores).", "",
                "| workflows/s | mode | requests/s | TTFT p50 | TTFT p90 | TTFT p99 | SLO met | cached tokens (mean) |",
                "|---|---|---|---|---|---|---|---|"]
        for rate in sorted(r["modes"]["sharing"], key=float):
            for mode in ("sharing", "no_sharing"):
                x = r["modes"][mode][rate]
                out.append(f"| {rate} | {mode.replace('_', ' ')} | {x['requests_per_s']:.3f} | {x['ttft_p50_s']:.2f}s | "
                           f"{x['ttft_p90_s']:.2f}s | {x['ttft_p99_s']:.2f}s | {x['slo_attainment']:.0%} | "
                           f"{x['cached_tokens_mean']:.0f} |")
        out.append("")
    if not found:
        out.append("(not measured yet)")
    return out + [""]


def gold_section() -> list[str]:
    p = _load("profile_gold_smollm2-135m-instruct__smollm2-qa.json")
    ev = _load("evalgold_smollm2-135m-instruct__smollm2-qa.json")
    out = ["## Label-free against gold-label profiling (base -> qa)", ""]
    if not p:
        return out + ["(not measured yet)", ""]
    ch = p["chosen"]
    if _earlier_weights(p["sender"], p["receiver"], p.get("receiver_identity")):
        out += ["Measured on the earlier QA variant (LoRA r8, 160 steps on 400-1400-token contexts), before "
                "it was retrained; the shipped one's label-free profile recomputes every layer.", ""]
    out += [f"The same pair profiled the paper's way (gold F1 against references, 1% budget): chosen plan **{ch['plan']}** "
            f"({ch['recomputed_layers']}/30 layers, calibration drop {ch['relative_drop']:.1%}). "
            f"Command: `{p.get('command')}`."]
    if ev:
        out += ["", f"On the held-out rows at ~4K tokens (`{ev.get('command')}`): F1 {ev['quality_full']:.3f} -> "
                f"{ev['quality_plan']:.3f} ({ev['relative_drop']:+.1%}), agreement with the full-prefill answer "
                f"{ev['agreement_plan']:.2f}, TTFT {ev['ttft_speedup']:.2f}x."]
    return out + [""]


def refactor_section() -> list[str]:
    r = _load("refactor_check.json")
    out = ["## The refactor changed no figure: old and new request path side by side", ""]
    if not r:
        return out + ["(not measured yet)", ""]
    eo, en = r["eval"]["old"], r["eval"]["new"]
    same = all(eo[k] == en[k] for k in ("quality_full", "quality_plan", "quality_full_reuse", "agreement_plan",
                                         "first_token_kl_plan", "first_token_kl_full_reuse"))
    out += [f"{r['what']} ({r['machine']['cpu']}, {r['date']}). Old code: commit {r['old_code']}, new: "
            f"{r.get('new_code', 'this tree')}. Commands: `{r['commands']['ttft']}`; `{r['commands']['eval']}`"
            + (f"; the runner: `{r['command']}`" if r.get("command") else "") + ".", "",
            f"Held-out evaluation of the profiled plan {eo['plan']} ({eo['rows']} rows): quality, agreement and "
            f"first-token KLs {'identical to the last digit' if same else 'DIFFER'} (plan KL {en['first_token_kl_plan']:.6g}, "
            f"full reuse KL {en['first_token_kl_full_reuse']:.6g}); TTFT speedup {eo['ttft_speedup']:.2f}x old, "
            f"{en['ttft_speedup']:.2f}x new.", "",
            "| context tokens | plan | old TTFT | new TTFT | old / limit | new / limit |", "|---|---|---|---|---|---|"]
    for eo_, en_ in zip(r["ttft"]["old"], r["ttft"]["new"]):
        for plan, po in eo_["plans"].items():
            pn = en_["plans"][plan]
            f = lambda x: f"{x:.2f}" if x else "-"  # noqa: E731
            out.append(f"| {eo_['context_tokens']} | {plan} | {po['ttft_s']:.3f}s | {pn['ttft_s']:.3f}s | "
                       f"{f(po['ratio_to_limit'])} | {f(pn['ratio_to_limit'])} |")
    if r.get("suite"):
        so, sn = r["suite"]["old"], r["suite"]["new"]
        out += ["", f"Test suite (`pytest -m \"not slow\"`), one after the other on this machine: old {so['summary']}; "
                f"new {sn['summary']}."]
    return out + [""]


NOTES = ROOT / "bench" / "notes.md"  # hand-written reading of the figures, kept beside them


def main() -> int:
    lines = ["# droidspeak benchmarks", "",
             "Every figure below was produced by the command shown beside it, on the machine named there; "
             "the raw JSON lies in `bench/results/`. This file is regenerated by `python bench/report.py`.", ""]
    variants = variants_section()
    lines += (summary_section() + variants + train_step_section() + hybrid_section() + exact_section() + engine_section()
              + kernels_section()
              + fleet8_section()
              + fleet_section()
              + profiles_section() + eval_section()
              + guard_section() + gold_section() + scattered_section() + ttft_peers_section() + serve_section()
              + sensitivity_section() + ttft_section() + gpu_section() + pipeline_section() + aware_section()
              + formats_section() + toolcalls_section() + grammar_section() + seal_section() + vllm_section()
              + refactor_section())
    if NOTES.is_file():
        lines += [NOTES.read_text()]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines))
    # the README carries the variant table and the settings table too, between markers
    from droidspeak.serving.config import Settings

    readme = ROOT / "README.md"
    text = readme.read_text()
    for key, table in (("variants", "\n".join(variants[2:]).strip()), ("settings", Settings.markdown())):
        start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1]
    readme.write_text(text)
    print("wrote BENCHMARKS.md and the README's variant and settings tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
