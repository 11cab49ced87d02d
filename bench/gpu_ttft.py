"""TTFT and decode speed on a GPU, when one is lent: full prefill vs partial prefill, Llama-3-8B shape.

The weights are random (timing needs the shape, not the knowledge): 32 layers, 4096 hidden, 32
heads, 8 KV heads, 14336 MLP, 128256 vocabulary, bf16. A second model perturbs the first (a
"fine-tune"). Both fit an H100 (about 32 GB). One command, well under 5 minutes:

    python bench/gpu_ttft.py --out bench/results/gpu_ttft.json            # on the GPU machine
    python bench/gpu_ttft.py --device cpu --tiny --out /tmp/gpu_smoke.json # a CPU smoke run of the script

Per context length it prints and records, medians of ``--repeats`` (all paths interleaved):

* the receiver's own full prefill of context + 32-token suffix (the model's own forward);
* partial prefill for each plan (``none``, ``22:32`` = 10/32 layers, ``all``), eager, on the
  preallocated in-place cache; with ``--compile`` also the suffix under ``torch.compile(mode=
  "reduce-overhead")`` (CUDA graphs), whose greedy continuation is checked against eager;
* plan / limit (limit = recomputed fraction x full prefill), and ``all`` against the own forward;
* decode: the engine's batched decode (B requests, one left-padded in-place cache) in tokens/s
  against a plain Hugging Face ``generate`` loop of the same model and batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from droidspeak import RecomputePlan, capture, full_prefill, partial_prefill  # noqa: E402
from droidspeak.core.decode import greedy  # noqa: E402
from droidspeak.kinds import ModelKind  # noqa: E402
from droidspeak.models import LoadedModel, ModelSpec  # noqa: E402
from droidspeak.models.exact import WeightSummary  # noqa: E402
from droidspeak.models.family import fingerprint  # noqa: E402
from droidspeak.testing.tiny import tiny_config  # noqa: E402

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                 vocab_size=128256, max_position_embeddings=40960, rope_theta=500000.0, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            vocab_size=512, max_position_embeddings=40960)
SUFFIX = 32


def build(layers: int, shape: dict, dtype: torch.dtype, dev: torch.device) -> tuple[LoadedModel, LoadedModel]:
    """A random model and a perturbed copy ("fine-tune"), built on the device (no CPU round trip)."""
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
    out = []
    for name, m in (("random-sender", a), ("random-receiver", b)):
        # hashing 16 GB of random weights would dominate the run: names stand in for the digests
        stand_in = WeightSummary(name, name, (name,) * fam.num_layers)
        out.append(LoadedModel(ModelSpec(name, ModelKind.FULL, None), m.eval(), None, fam, stand_in))
    return out[0], out[1]


def timed(fn, sync) -> tuple[float, object]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def decode_speed(model: LoadedModel, n_ctx: int, batch: int, steps: int, vocab: int, sync) -> dict:
    """tokens/s: the engine's batched decode (stack + decode_step) vs Hugging Face generate, same batch."""
    g = torch.Generator().manual_seed(1)
    dev = model.surface.device
    prompts = [torch.randint(3, vocab, (n_ctx,), generator=g).tolist() for _ in range(batch)]
    surface = model.surface
    with torch.inference_mode():
        parts = [surface.request_kv(full_prefill(model, p, room=1).cache) for p in prompts]
        cache, mask = surface.stack(parts, [n_ctx] * batch, steps + 1)
        ids = torch.randint(3, vocab, (batch, 1), generator=g).to(dev)

        def engine():
            nonlocal mask
            m = mask
            for i in range(steps):
                pos = torch.full((batch, 1), n_ctx + i, device=dev)
                m = torch.cat([m, torch.ones(batch, 1, dtype=m.dtype, device=m.device)], dim=1)
                logits = surface.decode_step(ids, pos, m.to(dev), cache, None)
                ids.copy_(logits.argmax(-1, keepdim=True))

        t_engine, _ = timed(engine, sync)
        inp = torch.tensor(prompts, device=dev)

        def hf():
            model.model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=steps,
                                 min_new_tokens=steps, do_sample=False, pad_token_id=0)

        hf()  # warm-up
        t_hf, _ = timed(hf, sync)
    return {"batch": batch, "context_tokens": n_ctx, "steps": steps,
            "engine_tokens_s": batch * steps / t_engine, "hf_generate_tokens_s": batch * steps / t_hf}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a small model (smoke test of the script)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--plans", nargs="+", default=["none", "22:32", "all"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also the suffix under torch.compile (CUDA graphs)")
    ap.add_argument("--decode-batch", type=int, default=8)
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--out", default="bench/results/gpu_ttft.json")
    args = ap.parse_args()
    dev = torch.device(args.device)
    layers, shape = (4, TINY) if args.tiny else (32, LLAMA3_8B)
    if args.tiny:
        args.lengths, args.plans = [256, 512], ["none", "2:4", "all"]
        args.decode_steps = min(args.decode_steps, 8)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    sender, receiver = build(layers, shape, dtype, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    results = []
    for n in args.lengths:
        ids = torch.randint(3, shape["vocab_size"], (n + SUFFIX,), generator=g).tolist()
        prefix, suffix = ids[:n], ids[n:]
        plans = [RecomputePlan.parse(p, layers) for p in args.plans]
        cap = capture(sender, prefix, e_layers=sorted({s for p in plans for s in p.transition_layers}))
        for _ in range(2):  # warm-up
            full_prefill(receiver, ids, room=8)
            for p in plans:
                partial_prefill(receiver, cap, p, suffix, room=8)
        times: dict[str, list[float]] = {"full_prefill": []} | {str(p): [] for p in plans}
        for _ in range(args.repeats):
            times["full_prefill"].append(timed(lambda: full_prefill(receiver, ids, room=8), sync)[0])
            for p in plans:
                times[str(p)].append(timed(lambda p=p: partial_prefill(receiver, cap, p, suffix, room=8), sync)[0])
        med = {k: median(v) for k, v in times.items()}
        full = med["full_prefill"]
        entry = {"context_tokens": n, "ttft_s": med, "speedup": {str(p): full / med[str(p)] for p in plans},
                 "plan_over_limit": {str(p): med[str(p)] / (p.recomputed_fraction * full) for p in plans if p.groups},
                 "none_over_full": med.get("none", float("nan")) / full}
        if args.compile:
            entry |= compiled_plans(receiver, cap, suffix, [p for p in plans if str(p) != "all"], full, sync,
                                    args.repeats)
        print(f"{n} tokens: full {full * 1e3:.1f} ms; " + ", ".join(
            f"{p} {med[str(p)] * 1e3:.1f} ms ({full / med[str(p)]:.2f}x"
            + (f", {entry['plan_over_limit'][str(p)]:.2f} of its limit" if p.groups else f", {med[str(p)] / full:.1%} of full")
            + ")" for p in plans)
            + ("; compiled: " + ", ".join(f"{k} {v * 1e3:.1f} ms (greedy agrees: {entry['compiled_greedy_agrees'][k]})"
                                          for k, v in entry["compiled_ttft_s"].items()) if args.compile else ""),
            flush=True)
        results.append(entry)
    dec = decode_speed(receiver, min(args.lengths), args.decode_batch, args.decode_steps, shape["vocab_size"], sync)
    print(f"decode, batch {dec['batch']} at {dec['context_tokens']} tokens: engine {dec['engine_tokens_s']:.1f} tok/s, "
          f"HF generate {dec['hf_generate_tokens_s']:.1f} tok/s", flush=True)
    info = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "dtype": str(dtype),
            "torch": torch.__version__, "model": "Llama-3-8B shape, random weights" if not args.tiny else "tiny smoke model",
            "suffix_tokens": SUFFIX, "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
            "results": results, "decode": dec}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=1))
    return 0


def compiled_plans(receiver: LoadedModel, cap, suffix: list[int], plans: list[RecomputePlan], full: float, sync,
                   repeats: int) -> dict:
    """The plans again with the suffix (and decode steps) under torch.compile(mode="reduce-overhead")
    on one fixed-shape cache reused across calls (CUDA graphs need fixed addresses); the recomputed
    groups run eagerly (compute-bound). Each plan's greedy continuation is checked against eager's
    (bf16 logits may differ slightly)."""
    surface = receiver.surface
    lm = surface.lm
    want = {str(p): greedy(receiver, partial_prefill(receiver, cap, p, suffix, room=16), 8) for p in plans}
    surface.lm = torch.compile(lm, mode="reduce-overhead", dynamic=False)
    pool = surface.new_cache(cap.num_tokens + len(suffix) + 16, static=True)  # one fixed-shape cache, reused
    out: dict = {"compiled_ttft_s": {}, "compiled_greedy_agrees": {}, "compiled_plan_over_limit": {}}
    try:
        for p in plans:
            for _ in range(3):  # compile and capture the graphs
                res = partial_prefill(receiver, cap, p, suffix, room=16, cache=pool)
            out["compiled_greedy_agrees"][str(p)] = greedy(receiver, res, 8) == want[str(p)]
            t = median([timed(lambda p=p: partial_prefill(receiver, cap, p, suffix, room=16, cache=pool), sync)[0]
                        for _ in range(repeats)])
            out["compiled_ttft_s"][str(p)] = t
            if p.groups:
                out["compiled_plan_over_limit"][str(p)] = t / (p.recomputed_fraction * full)
    finally:
        surface.lm = lm
    return out


if __name__ == "__main__":
    sys.exit(main())
