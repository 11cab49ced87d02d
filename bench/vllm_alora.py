"""An activated adapter's time to first token in vLLM, with and without the droidspeak connector.

One ~3K-token document (the demo's: a staff registry, an order log and a Python file) and one QA
request about it; the activated QA variant (smollm2-qa-alora) answers it. Two vLLM instances (CPU
build, fp32, prefix caching on), one after the other on the same machine:

* **own**: vLLM without the connector. It has no activated-adapter semantics, so it serves the
  variant as a plain LoRA and computes the whole prompt with the adapter on (its CPU LoRA path).
  Then the same request again: the adapter's own prefix hit in vLLM's cache.
* **connector**: vLLM with the droidspeak connector over an empty disk store. The base answers a
  request over the same document first (the sender: its prompt goes into the store); then the
  variant's request loads the base's K/V for every token before its activation point and computes
  the rest. Then the same request again (vLLM's own prefix cache).

TTFT is the time of a one-token request (``max_tokens=1``) alone on the engine. The answers (16 tokens,
greedy) are compared with PEFT's ``generate`` for the activated adapter (its own semantics). Runs in the
vLLM venv:

    make bench-vllm        # = .venv-vllm/bin/python bench/vllm_alora.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import binder_document, provenance, write_result  # noqa: E402

VARIANT = "smollm2-qa-alora"


def peft_answer(model_dir: str, adapter: Path, ids: list[int], n: int) -> list[int]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), str(adapter))
    with torch.no_grad():
        out = m.eval().generate(input_ids=torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=3000, help="document length")
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--out", default="bench/results/vllm_alora.json")
    args = ap.parse_args()
    import vllm
    from transformers import AutoTokenizer

    from droidspeak.core.prompt import layout
    from droidspeak.integrations.vllm import check_vllm
    from droidspeak.integrations.vllm.adapters import export_for_vllm
    from droidspeak.integrations.vllm.run import spawn
    from droidspeak.models.exact import activation_point
    from droidspeak.models.gguf import converted_dir
    from droidspeak.models.registry import BASES
    from droidspeak.paths import adapters_dir

    check_vllm()
    model = str(converted_dir(BASES["smollm2-135m-instruct"]))
    tok = AutoTokenizer.from_pretrained(model)
    doc, requests = binder_document(tok, args.tokens, seed=500)
    p = layout(tok, doc, requests["qa"].prompt)
    ids = list(p.prefix) + list(p.suffix)
    pb = layout(tok, doc, "In one line: what are the parts of this document?")
    base_ids = list(pb.prefix) + list(pb.suffix)
    work = Path(tempfile.mkdtemp(prefix="vllm-alora-"))
    lora_dir = export_for_vllm(adapters_dir() / VARIANT, work / VARIANT)
    inv = json.loads((lora_dir / "adapter_config.json").read_text())["droidspeak_alora_invocation_tokens"]
    act = activation_point(ids, tuple(inv))
    n = args.answer_tokens

    def spec(store: str | None) -> dict:
        return {"model": model, "store": store, "loras": {VARIANT: str(lora_dir)},
                "requests": [{"lora": None, "ids": base_ids, "max_tokens": 1},
                             {"lora": VARIANT, "ids": ids, "max_tokens": 1},
                             {"lora": VARIANT, "ids": ids, "max_tokens": 1},
                             {"lora": VARIANT, "ids": ids, "max_tokens": n}]}

    print(f"prompt {len(ids)} tokens, activation at {act}; vLLM without the connector ...", flush=True)
    own = spawn(spec(None), work, "own")
    print(f"  base {own[0]['seconds']:.2f}s, variant {own[1]['seconds']:.2f}s, again {own[2]['seconds']:.2f}s", flush=True)
    con = spawn(spec(f"disk:{work / 'store'}"), work, "connector")
    print(f"  with the connector: base {con[0]['seconds']:.2f}s, variant {con[1]['seconds']:.3f}s "
          f"(loaded {con[1]['cached']} tokens)", flush=True)
    ref = peft_answer(model, adapters_dir() / VARIANT, ids, n)
    result = provenance(vllm=vllm.__version__) | {
        "prompt_tokens": len(ids), "activation_at": act, "variant": VARIANT,
        "vllm_own": {"base_ttft_s": own[0]["seconds"], "variant_ttft_s": own[1]["seconds"],
                     "variant_again_ttft_s": own[2]["seconds"], "answer": own[3]["tokens"]},
        "vllm_connector": {"base_ttft_s": con[0]["seconds"], "variant_ttft_s": con[1]["seconds"],
                           "loaded_tokens": con[1]["cached"], "variant_again_ttft_s": con[2]["seconds"],
                           "answer": con[3]["tokens"]},
        "peft_answer": ref,
        "connector_answer_equals_peft": con[3]["tokens"] == ref,
        "own_answer_equals_peft": own[3]["tokens"] == ref,
        "vllm_alora_ttft_gain_with_connector": own[1]["seconds"] / con[1]["seconds"],
        "vllm_alora_ttft_gain_vs_base_prefill": own[0]["seconds"] / con[1]["seconds"],
    }
    print(json.dumps({k: v for k, v in result.items() if "gain" in k or "equals" in k}, indent=1))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
