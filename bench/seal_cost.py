"""What sealing the shared tier costs: MB/s of sealing and opening values, and a shared-tier hit's TTFT.

Two measurements, side by side in one run on this machine:

* throughput: seal and open (HMAC-SHA256, and AES-256-GCM with ``--encrypt``) on values the size
  of one stored K/V entry, beside the codec's own encode/decode (what a shared-tier hit pays anyway);
* a shared-tier hit: the base stores a context in a real Redis server on loopback (the bundled
  valkey-server when no redis-server is installed), then an activated variant answers it through a
  store with no memory tier (every value comes from Redis) three ways: unsealed, MAC, AES-GCM.
  Medians of ``--repeats`` interleaved runs; the in-process tier is not involved (it is never sealed).

    .venv/bin/python bench/seal_cost.py --out bench/results/seal_cost.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402

from droidspeak import layout  # noqa: E402
from droidspeak.harness.reuse import warm_up  # noqa: E402
from droidspeak.models import BASE_NAME, load_model  # noqa: E402
from droidspeak.sharing import ShareOptions, serve_prefill  # noqa: E402
from droidspeak.store import Sealer, decode, encode, open_store  # noqa: E402
from droidspeak.store.server import server_command  # noqa: E402
from droidspeak.tasks import generate  # noqa: E402

SECRET = "bench-secret-" + "0" * 20


def throughput(tokens: int, repeats: int) -> dict:
    """On one SmolLM2 layer's K/V entry (3 KV heads x 64, fp32) for ``tokens`` context tokens."""
    import torch

    k, v = torch.randn(1, 3, tokens, 64), torch.randn(1, 3, tokens, 64)
    key = "ds1:bench:f:s:c:kv:3"
    value = encode(key, {"k": k, "v": v})
    size_mb = len(value) / (1 << 20)

    def rate(fn) -> float:
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return size_mb / statistics.median(ts)

    out = {"value_mb": round(size_mb, 2), "codec_encode_mb_s": rate(lambda: encode(key, {"k": k, "v": v})),
           "codec_decode_mb_s": rate(lambda: decode(value, key))}
    for name, enc in (("mac", False), ("aead", True)):
        s = Sealer(SECRET, "bench", enc)
        sealed = s.seal(key, value)
        out[f"{name}_seal_mb_s"] = rate(lambda: s.seal(key, value))
        out[f"{name}_open_mb_s"] = rate(lambda: s.open(key, sealed))
        out[f"{name}_overhead_bytes"] = len(sealed) - len(value)
    return out


def shared_hit(args) -> dict:
    import redis

    port = 6400 + int(time.time()) % 500
    proc = subprocess.Popen(server_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        base, variant = load_model(BASE_NAME), load_model(args.receiver)
        warm_up(base, variant)
        row = generate("qa", "heldout", 1, base.tokenizer, seed=5, lengths=(args.tokens, args.tokens))[0]
        prompt = layout(variant.tokenizer, row.context, row.prompt)
        modes = {"unsealed": {}, "mac": {"secret": SECRET}, "aead": {"secret": SECRET, "encrypt": True}}
        times: dict[str, list[float]] = {m: [] for m in modes}
        bytes_read: dict[str, int] = {}
        for m, kw in modes.items():  # one stored copy per mode, each in its own namespace
            serve_prefill(base, open_store(url, namespace=f"seal-{m}", **kw), prompt)
        for _ in range(args.repeats):
            for m, kw in modes.items():
                store = open_store(url, namespace=f"seal-{m}", **kw)
                res = serve_prefill(variant, store, prompt, ShareOptions(store_on_miss=False))
                assert res.info.kind.value == "exact-cross-model" and not res.info.fallback, res.info
                times[m].append(res.timings.prefill_s)
                bytes_read[m] = store.stats.fetched_bytes
        med = {m: statistics.median(t) for m, t in times.items()}
        return {"receiver": variant.name, "context_tokens": len(prompt.prefix), "repeats": args.repeats,
                "ttft_s": med, "samples": times, "bytes_read": bytes_read,
                "mac_over_unsealed": med["mac"] / med["unsealed"], "aead_over_unsealed": med["aead"] / med["unsealed"],
                "mac_added_s": med["mac"] - med["unsealed"], "aead_added_s": med["aead"] - med["unsealed"]}
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--receiver", default="smollm2-qa-alora")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench/results/seal_cost.json")
    args = ap.parse_args()
    tp = throughput(args.tokens, 7)
    print(", ".join(f"{k} {v:.0f}" for k, v in tp.items() if k.endswith("mb_s")) + " (MB/s)", flush=True)
    hit = shared_hit(args)
    print(f"shared-tier hit, {hit['context_tokens']} tokens: " + ", ".join(f"{m} {t:.3f}s" for m, t in
                                                                        hit["ttft_s"].items()))
    write_result(args.out, provenance(dtype="float32") | {"throughput": tp, "shared_hit": hit})
    return 0


if __name__ == "__main__":
    sys.exit(main())
