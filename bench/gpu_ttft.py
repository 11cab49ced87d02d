"""TTFT on a GPU, when one is lent: full prefill vs partial prefill vs full reuse, Llama-3-8B shape.

The weights are random (timing needs the shape, not the knowledge): 32 layers, 4096 hidden, 32
heads, 8 KV heads, 14336 MLP, 128256 vocabulary, bf16. A second model perturbs the first (a
"fine-tune"). Both fit an H100 (about 32 GB). Runs in well under 5 minutes.

    python bench/gpu_ttft.py --out bench/results/gpu_ttft.json          # on the GPU machine
    python bench/gpu_ttft.py --device cpu --tiny                        # a CPU smoke run of the script
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from droidspeak import RecomputePlan, capture, full_prefill, partial_prefill  # noqa: E402
from droidspeak.family import fingerprint  # noqa: E402
from droidspeak.models import LoadedModel, ModelSpec  # noqa: E402
from droidspeak.tiny import tiny_config  # noqa: E402

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                 vocab_size=128256, max_position_embeddings=32768, rope_theta=500000.0, tie_word_embeddings=False)


def build(layers: int, shape: dict, dtype: torch.dtype, dev: torch.device) -> tuple[LoadedModel, LoadedModel]:
    """A random model and a perturbed copy ("fine-tune"), built on the device (no CPU round trip)."""
    import copy

    from transformers import AutoModelForCausalLM

    cfg = tiny_config(layers, "llama", **shape)
    torch.manual_seed(0)
    with torch.device(dev):
        a = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
        b = copy.deepcopy(a)
        with torch.no_grad():
            for p in b.parameters():
                if p.dim() >= 2:
                    p.add_(torch.randn_like(p) * p.std() * 0.05)
    fam = fingerprint(cfg, "random-weights")
    return (LoadedModel(ModelSpec("random-sender", "full", None), a, None, "random-sender", fam),
            LoadedModel(ModelSpec("random-receiver", "full", None), b, None, "random-receiver", fam))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a small model (smoke test of the script)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--plans", nargs="+", default=["none", "8:16", "4:16", "0:11", "all"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench/results/gpu_ttft.json")
    args = ap.parse_args()
    dev = torch.device(args.device)
    layers, shape = (4, dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=16, vocab_size=512, max_position_embeddings=32768)) if args.tiny else (32, LLAMA3_8B)
    if args.tiny:
        args.lengths, args.plans = [256, 512], ["none", "1:3", "all"]
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    sender, receiver = build(layers, shape, dtype, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    results = []
    for n in args.lengths:
        ids = torch.randint(3, shape["vocab_size"], (n + 32,), generator=g).tolist()
        prefix, suffix = ids[:n], ids[n:]
        plans = [RecomputePlan.parse(p, layers) for p in args.plans]
        cap = capture(sender, prefix, e_layers=sorted({s for p in plans for s in p.transition_layers}))
        for _ in range(2):  # warm-up
            full_prefill(receiver, ids)
        times = {"full_prefill": []} | {str(p): [] for p in plans}
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            full_prefill(receiver, ids)
            sync()
            times["full_prefill"].append(time.perf_counter() - t0)
            for p in plans:
                sync()
                t0 = time.perf_counter()
                partial_prefill(receiver, cap, p, suffix)
                sync()
                times[str(p)].append(time.perf_counter() - t0)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        full = med["full_prefill"]
        entry = {"context_tokens": n, "ttft_s": med,
                 "speedup": {str(p): full / med[str(p)] for p in plans},
                 "limit_ratio": {str(p): med[str(p)] / (p.recomputed_fraction * full) for p in plans if p.groups}}
        print(f"{n} tokens: full {full * 1e3:.1f} ms; " + ", ".join(
            f"{p} {med[str(p)] * 1e3:.1f} ms ({full / med[str(p)]:.2f}x)" for p in plans), flush=True)
        results.append(entry)
    info = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "dtype": str(dtype),
            "model": "Llama-3-8B shape, random weights" if not args.tiny else "tiny smoke model",
            "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
