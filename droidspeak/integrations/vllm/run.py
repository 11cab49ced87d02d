"""Run requests through one vLLM instance, with or without the droidspeak connector, and report each:
what the tests (tests/test_vllm.py) and the benchmark (bench/vllm_alora.py) drive vLLM with.

    python -m droidspeak.integrations.vllm.run SPEC.json OUT.json

SPEC: ``{"model": DIR, "store": "disk:PATH" | null (no connector), "loras": {NAME: DIR},
"requests": [{"lora": NAME | null, "ids": [...], "max_tokens": N}], "extra": {...connector settings}}``.
OUT: one record per request, in order: ``tokens`` (greedy), ``cached`` (prompt tokens vLLM did not
compute: its own prefix cache and the connector's loads), ``seconds`` (the request alone, to its
last token). Requests run one at a time. vLLM spawns its engine process, hence the ``__main__`` guard.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run(spec: dict) -> list[dict]:
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.lora.request import LoRARequest

    kw = {}
    if spec.get("store"):
        from . import check_vllm

        check_vllm()
        kw["kv_transfer_config"] = KVTransferConfig(
            kv_connector="DroidspeakConnector", kv_connector_module_path="droidspeak.integrations.vllm",
            kv_role="kv_both", kv_load_failure_policy="recompute",
            kv_connector_extra_config={"store": spec["store"], **spec.get("extra", {})})
    loras = spec.get("loras", {})
    llm = LLM(model=spec["model"], dtype="float32", enforce_eager=True, enable_prefix_caching=True,
              max_model_len=int(spec.get("max_model_len", 4096)), gpu_memory_utilization=float(spec.get("memory", 0.2)),
              enable_lora=bool(loras), max_lora_rank=64 if loras else 16, max_loras=max(1, len(loras)), **kw)
    lora_req = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(sorted(loras.items()))}
    out = []
    for r in spec["requests"]:
        sp = SamplingParams(max_tokens=int(r.get("max_tokens", 16)), temperature=0.0)
        t0 = time.perf_counter()
        res = llm.generate([{"prompt_token_ids": list(r["ids"])}], sp, lora_request=lora_req.get(r.get("lora")),
                           use_tqdm=False)[0]
        out.append({"lora": r.get("lora"), "tokens": list(res.outputs[0].token_ids),
                    "cached": int(res.num_cached_tokens or 0), "prompt": len(r["ids"]),
                    "seconds": time.perf_counter() - t0})
    return out


def spawn(spec: dict, workdir: Path, name: str, timeout_s: float = 1800) -> list[dict]:
    """:func:`run` in a process of its own (one vLLM instance, gone when it returns); a failure raises with the
    end of its stderr."""
    spec_file, out = workdir / f"{name}.json", workdir / f"{name}.out.json"
    spec_file.write_text(json.dumps(spec))
    p = subprocess.run([sys.executable, "-m", "droidspeak.integrations.vllm.run", str(spec_file), str(out)],
                       capture_output=True, text=True, timeout=timeout_s)
    if p.returncode != 0:
        raise RuntimeError(f"vLLM run '{name}' failed: {p.stderr[-3000:]}")
    return json.loads(out.read_text())


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[0]).read())
    records = run(spec)
    with open(argv[1], "w") as f:
        json.dump(records, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
