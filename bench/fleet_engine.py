"""The serving path against the direct path and the limit: what a request costs in the server.

Measured side by side in one run on this machine (the issue's goals, as ratios):

* **exact hit**: an activated variant's TTFT over the base's stored context, in the server (its own
  ``droidspeak.ttft_s``, from arrival to first token) against the CLI's direct exact reuse of the
  same prompt (a capture in memory, ``partial_prefill`` with nothing recomputed);
* **miss**: the base's TTFT on a fresh context in the server against the CLI's plain full prefill
  of the same prompt;
* **decode**: tokens/s of one request alone (streamed, ``ignore_eos``) against the weight-read
  bound (the base's weight bytes over this machine's read bandwidth, measured here), and of four
  models of one base decoding at once (the base and three activated variants, all exact or
  same-model hits of one context) against one alone, as pairs measured back to back (three by
  default; the figures are their medians, since the machine drifts), each pair followed by the same
  pair on a second server that keeps oneDNN-packed weights too (``DROIDSPEAK_PACKED_WEIGHTS=true``,
  ``--no-compare-packed`` skips it); and, to say where a step goes,
  a plain step and the step's linears alone (each projection's module on one token, nothing else),
  with the CLI's weight layout and then with the server's.

    .venv/bin/python bench/fleet_engine.py --out bench/results/fleet_engine.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402
from serve_load import start_server, stream_chunks  # noqa: E402

BASE = "smollm2-135m-instruct"
VARIANTS = ["smollm2-qa-alora", "smollm2-code-alora", "smollm2-toolcall-alora"]


def read_bandwidth() -> float:
    """Bytes/s of reading memory once (a sum over 1 GiB of floats, the best of five)."""
    import torch

    x = torch.ones(1 << 28)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def projections(model) -> list:
    """Every linear of one decode step, in order: each layer's projections, then the LM head."""
    import torch

    mods = [m for layer in model.surface.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    return mods + [model.surface.lm.get_output_embeddings()]


def time_projections(mods: list, rows: int, repeats: int, warmup: int = 2) -> float:
    """Seconds for every module of ``mods`` applied to ``rows`` tokens by itself and nothing else, over the model's
    own weights (so each is read from memory as a step reads it); the median of ``repeats`` after ``warmup``."""
    import torch

    xs = {m.in_features: torch.randn(rows, 1, m.in_features) for m in mods}
    ts = []
    with torch.inference_mode():
        for _ in range(warmup + repeats):
            t0 = time.perf_counter()
            for m in mods:
                m(xs[m.in_features])
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts[warmup:])


class Direct:
    """The CLI's direct paths, in this process's main thread, on the same prompts the server answers."""

    def __init__(self):
        from droidspeak.harness.reuse import warm_up
        from droidspeak.models import load_model

        self.base, self.qa = load_model(BASE), load_model(VARIANTS[0])
        warm_up(self.base, self.qa)
        self.weight_bytes = sum({p.data_ptr(): p.numel() * p.element_size() for p in self.base.model.parameters()}
                                .values())

    def exact(self, context: str, q: str) -> float:
        from droidspeak import RecomputePlan, capture, layout, partial_prefill

        p = layout(self.qa.tokenizer, context, q)
        cap = capture(self.base, list(p.prefix))
        return min(partial_prefill(self.qa, cap, RecomputePlan.none(30), p.suffix, room=2).timings.prefill_s
                   for _ in range(2))

    def full(self, context: str, q: str) -> float:
        from droidspeak import full_prefill, layout

        return full_prefill(self.base, layout(self.base.tokenizer, context, q).ids, room=2).timings.prefill_s

    def step(self, context: str, model, peft: bool = False) -> float:
        """A plain transformers decode step (one token on the prompt's cache), the median of 20; ``peft``: the
        adapter's LoRA layers run PEFT's own forward (as before the router's lean path) instead of the lean one."""
        import torch

        from droidspeak import full_prefill, layout

        res = full_prefill(model, layout(model.tokenizer, context, "Go on.").ids, room=32)
        router = model.surface.router
        router.lean = not peft
        ts = []
        try:
            with torch.inference_mode():
                for _ in range(20):
                    t0 = time.perf_counter()
                    model.surface.forward(torch.tensor([[1000]]), res.cache, 1, res.activation_at)
                    ts.append(time.perf_counter() - t0)
        finally:
            router.lean = True
        return statistics.median(ts)

    def linear_floor(self) -> float:
        """The matrix-vector kernels' own floor: :func:`time_projections` of one token; the median of 20."""
        return time_projections(projections(self.base), 1, 20, warmup=3)

    def server_layout(self, context: str) -> dict[str, float]:
        """:meth:`linear_floor` and the activated variant's plain step (:meth:`step`) with the CLI's weight layout,
        then both again with the server's (``relayout``, which this applies to both models in place: the last
        thing a run measures), so the server's decode compares with a plain step on the kernels it runs."""
        from droidspeak.models.layout import relayout

        out = {"linear_floor_default_s": self.linear_floor(), "plain_step_default_s": self.step(context, self.qa)}
        relayout(self.base.model)
        relayout(self.qa.model)
        return out | {"linear_floor_server_s": self.linear_floor(), "plain_step_server_s": self.step(context, self.qa)}


def chat(url: str, model: str, context: str, q: str, max_tokens: int, stream: bool = False, times=None) -> dict:
    """One chat completion; streamed, ``times`` gets (arrival, tokens in it) per chunk with text.

    NOTE: a chunk is not a token: a token whose text is empty (a special token past the end of the
    answer, with ``ignore_eos``) sends nothing and rides with the next text. The chunk's logprobs list
    every token it covers, so tokens are counted from them."""
    body = {"model": model, "temperature": 0, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream,
            "messages": [{"role": "user", "content": context}, {"role": "user", "content": q}]}
    if not stream:
        return httpx.post(url + "/v1/chat/completions", json=body, timeout=900).json()
    out = None
    for d in stream_chunks(url, body | {"logprobs": True}, 900):
        c = d["choices"][0] if d.get("choices") else None
        if c and c["delta"].get("content"):
            times.append((time.perf_counter(), len(c["logprobs"]["content"])))
        if d.get("droidspeak"):
            out = d
    return out


def tokens_per_s(times: list[tuple[float, int]], start: float | None = None, end: float | None = None) -> float:
    """Tokens/s that arrived in ``(start, end]`` (default: after the first chunk, up to the last)."""
    start = times[0][0] if start is None else start
    end = times[-1][0] if end is None else end
    return sum(n for t, n in times if start < t <= end) / (end - start)


def decode_pair(url: str, ctx: str, decode_tokens: int, rep: int) -> tuple[float, float, float]:
    """Tokens/s of one request decoding alone, then of four models decoding at once (summed over the window in
    which all four decode), and that window's length."""
    alone: list[tuple[float, int]] = []
    chat(url, VARIANTS[0], ctx, f"Write at length about everyone in this registry ({rep}).", decode_tokens, True, alone)
    streams: dict[str, list[tuple[float, int]]] = {m: [] for m in [BASE] + VARIANTS}
    threads = [threading.Thread(target=chat, args=(url, m, ctx, f"Write at length, as {m}, about everyone here "
                                                   f"({rep}).", decode_tokens, True, streams[m])) for m in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start = max(ts[0][0] for ts in streams.values())  # every request decoding from here on ...
    end = min(ts[-1][0] for ts in streams.values())  # ... until the first one ends
    return tokens_per_s(alone), sum(tokens_per_s(ts, start, end) for ts in streams.values()), end - start


def measure(url: str, direct: Direct, rows, decode_tokens: int, repeats: int, packed: str | None = None) -> dict:
    """Each figure beside its direct counterpart, one after the other (the machine drifts); the decode
    figures are the medians of ``repeats`` pairs (one alone, then four at once); ``packed``: a server
    with ``DROIDSPEAK_PACKED_WEIGHTS=true``, whose decode pairs alternate with this one's."""
    out: dict[str, list] = {"hit_ttft_s": [], "exact_direct_s": [], "miss_ttft_s": [], "full_direct_s": []}
    q_base = "Summarize the document in one sentence."
    for row in rows:
        ctx = row.context + " (fresh)"
        m = chat(url, BASE, ctx, q_base, 1)
        assert m["droidspeak"]["kind"] == "miss", m["droidspeak"]
        out["miss_ttft_s"].append(m["droidspeak"]["ttft_s"])
        out["full_direct_s"].append(direct.full(ctx, q_base))
        h = chat(url, VARIANTS[0], ctx, row.prompt, 1)
        assert h["droidspeak"]["kind"] == "exact-cross-model", h["droidspeak"]
        out["hit_ttft_s"].append(h["droidspeak"]["ttft_s"])
        out["exact_direct_s"].append(direct.exact(ctx, row.prompt))
    # decode: one alone, then the base and three variants at once over one stored context, as pairs back to back;
    # with a second server keeping packed weights, its pair right after each (both servers see the same drift)
    ctx = rows[0].context + " (fresh)"
    if packed:
        chat(packed, BASE, ctx, q_base, 1)  # its copy of the context, stored before any pair
    alone_runs, four_runs, windows, pk = [], [], [], {"alone": [], "four": []}
    for rep in range(repeats):
        a, f, w = decode_pair(url, ctx, decode_tokens, rep)
        alone_runs.append(a)
        four_runs.append(f)
        windows.append(w)
        if packed:
            a, f, _ = decode_pair(packed, ctx, decode_tokens, rep)
            pk["alone"].append(a)
            pk["four"].append(f)
    med = statistics.median
    rate_alone, together = med(alone_runs), med(four_runs)
    return out | {"decode_alone_tokens_s": rate_alone, "decode_four_tokens_s": together,
                  "decode_alone_runs": alone_runs, "decode_four_runs": four_runs, "decode_window_s": windows,
                  "decode_four_over_alone_runs": [f / a for f, a in zip(four_runs, alone_runs)],
                  "packed": ({"decode_alone_runs": pk["alone"], "decode_four_runs": pk["four"],
                              "decode_four_over_alone_runs": [f / a for f, a in zip(pk["four"], pk["alone"])]}
                             if packed else None),
                  "plain_step_s": {"base": direct.step(ctx, direct.base), VARIANTS[0]: direct.step(ctx, direct.qa),
                                   VARIANTS[0] + " (PEFT's forward)": direct.step(ctx, direct.qa, peft=True)},
                  "layouts": direct.server_layout(ctx)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--decode-tokens", type=int, default=48)
    ap.add_argument("--decode-repeats", type=int, default=3, help="pairs of decode measurements (one alone, four "
                    "at once), back to back; the figures are their medians")
    ap.add_argument("--compare-packed", action=argparse.BooleanOptionalAction, default=True,
                    help="also a server keeping oneDNN-packed weights (DROIDSPEAK_PACKED_WEIGHTS=true); its decode "
                    "pairs alternate with the default server's")
    ap.add_argument("--out", default="bench/results/fleet_engine.json")
    args = ap.parse_args()
    from droidspeak.models import load_model
    from droidspeak.tasks import generate

    tok = load_model(BASE).tokenizer
    rows = generate("qa", "heldout", args.n, tok, seed=41, lengths=(args.tokens, args.tokens))
    bw = read_bandwidth()
    direct = Direct()
    proc, url = start_server(",".join([BASE] + VARIANTS))
    other = start_server(",".join([BASE] + VARIANTS), DROIDSPEAK_PACKED_WEIGHTS="true") if args.compare_packed \
        else None
    try:
        s = measure(url, direct, rows, args.decode_tokens, args.decode_repeats, other[1] if other else None)
    finally:
        for p in [proc] + ([other[0]] if other else []):
            p.terminate()
            p.wait(60)
    med = statistics.median
    bound_s = direct.weight_bytes / bw
    out = provenance(dtype="float32") | {
        "context_tokens": args.tokens, "rows": args.n, "read_bandwidth_gb_s": bw / 1e9,
        "weight_bytes": direct.weight_bytes, "weight_read_bound_s": bound_s, "measured": s,
        "exact_hit_over_direct": med(s["hit_ttft_s"]) / med(s["exact_direct_s"]),
        "miss_over_full_prefill": med(s["miss_ttft_s"]) / med(s["full_direct_s"]),
        "decode_alone_over_bound": (1 / s["decode_alone_tokens_s"]) / bound_s,
        "decode_alone_over_plain_step": (1 / s["decode_alone_tokens_s"]) / s["plain_step_s"][VARIANTS[0]],
        "decode_four_over_alone": med(s["decode_four_over_alone_runs"]),
        "decode_four_over_alone_packed": med(s["packed"]["decode_four_over_alone_runs"]) if s["packed"] else None,
        "decode_four_packed_over_not_packed": med(s["packed"]["decode_four_runs"]) / med(s["decode_four_runs"])
        if s["packed"] else None,
        "variant_step_over_base_step": s["plain_step_s"][VARIANTS[0]] / s["plain_step_s"]["base"],
        "peft_step_over_lean_step": s["plain_step_s"][VARIANTS[0] + " (PEFT's forward)"] / s["plain_step_s"][VARIANTS[0]],
        "linear_floor_over_bound": s["layouts"]["linear_floor_server_s"] / bound_s,
        "decode_alone_over_plain_step_server_layout": (1 / s["decode_alone_tokens_s"])
        / s["layouts"]["plain_step_server_s"],
    }
    print(f"exact hit: server {med(s['hit_ttft_s']):.3f}s vs direct {med(s['exact_direct_s']):.3f}s = "
          f"{out['exact_hit_over_direct']:.2f}x; miss: server {med(s['miss_ttft_s']):.3f}s vs full prefill "
          f"{med(s['full_direct_s']):.3f}s = {out['miss_over_full_prefill']:.2f}x")
    print(f"decode: alone {s['decode_alone_tokens_s']:.1f} tokens/s ({out['decode_alone_over_bound']:.2f}x the "
          f"weight-read bound of {bound_s * 1000:.1f} ms, {out['decode_alone_over_plain_step']:.2f}x a plain "
          f"transformers step of {s['plain_step_s'][VARIANTS[0]] * 1000:.1f} ms); four models "
          f"{s['decode_four_tokens_s']:.1f} tokens/s = {out['decode_four_over_alone']:.2f}x one alone")
    if s["packed"]:
        print(f"with packed weights (pairs alternating with the above): four models "
              f"{out['decode_four_over_alone_packed']:.2f}x one alone; four models' tokens/s packed over not "
              f"{out['decode_four_packed_over_not_packed']:.2f}x")
    print(f"a plain step: the base {s['plain_step_s']['base'] * 1000:.1f} ms, the variant "
          f"{out['variant_step_over_base_step']:.2f}x it; through PEFT's own LoRA forward "
          f"{out['peft_step_over_lean_step']:.2f}x the lean path")
    lay = s["layouts"]
    print(f"in the server's weight layout: a plain step {lay['plain_step_server_s'] * 1000:.1f} ms (the server's decode "
          f"{out['decode_alone_over_plain_step_server_layout']:.2f}x it), the step's linears alone "
          f"{lay['linear_floor_server_s'] * 1000:.1f} ms ({out['linear_floor_over_bound']:.2f}x the bound; "
          f"{lay['linear_floor_default_s'] * 1000:.1f} ms in the CLI's layout)")
    write_result(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
