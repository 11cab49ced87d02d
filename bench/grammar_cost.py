"""The grammar library for structured output, chosen by measurement: llguidance against xgrammar.

For SmolLM2's tokenizer (49152 tokens), on this machine, one after the other: the one-time cost of
reading the tokenizer, the cost of compiling a grammar (any JSON object; a tool call's JSON schema),
and the cost per generated token of the allowed-token mask (computing it, applying it to the logits,
advancing the matcher) while a valid JSON answer is fed token by token; the median of several runs.
The served path (droidspeak's matcher: mask, apply, advance) is timed beside one SmolLM2 decode step in
the same run: the ratio is what constrained decoding adds to a token.

    .venv/bin/python bench/grammar_cost.py --out bench/results/grammar_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402

CALL = {"type": "object", "properties": {
    "name": {"enum": ["refund_order", "cancel_order"]},
    "arguments": {"type": "object", "properties": {"order_id": {"type": "string"}, "quantity": {"type": "integer"},
                                                   "city": {"type": "string"}},
                  "required": ["order_id", "quantity", "city"], "additionalProperties": False}},
    "required": ["name", "arguments"], "additionalProperties": False}
ANSWER = '{"name": "refund_order", "arguments": {"order_id": "A-1187", "quantity": 2, "city": "Vellmar"}}'


def timed(fn, n: int = 5) -> tuple[float, object]:
    ts, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def llguidance_cost(tok, ids: list[int], vocab: int) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.torch
    import torch

    t_tok, lltok = timed(lambda: llguidance.hf.from_tokenizer(tok), 1)
    from droidspeak.serving.constraints import JSON_STYLE

    grammars = {"json_object": llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=JSON_STYLE),
                "tool_call": llguidance.LLMatcher.grammar_from_json_schema(CALL, overrides=JSON_STYLE)}
    out = {"tokenizer_s": t_tok}
    for name, g in grammars.items():
        t_compile, _ = timed(lambda: llguidance.LLMatcher(lltok, g))
        mask = llguidance.torch.allocate_token_bitmask(1, lltok.vocab_size)
        logits = torch.zeros(vocab)
        per = []
        for _ in range(3):
            m = llguidance.LLMatcher(lltok, g)
            t0 = time.perf_counter()
            for t in ids:
                llguidance.torch.fill_next_token_bitmask(m, mask, 0)
                llguidance.torch.apply_token_bitmask_inplace(logits[None, :lltok.vocab_size], mask)
                assert m.consume_token(t), m.get_error()
            llguidance.torch.fill_next_token_bitmask(m, mask, 0)
            per.append((time.perf_counter() - t0) / (len(ids) + 1))
            accepted = m.is_accepting()
        out[name] = {"compile_s": t_compile, "per_token_s": statistics.median(per), "accepts_answer": accepted}
    return out


def xgrammar_cost(tok, ids: list[int], vocab: int) -> dict:
    import torch
    import xgrammar as xgr

    t_tok, info = timed(lambda: xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab), 1)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    style = {"any_whitespace": False, "separators": (", ", ": ")}  # as the served llguidance grammar
    makers = {"json_object": lambda: compiler.compile_json_schema(json.dumps({"type": "object"}), **style),
              "tool_call": lambda: compiler.compile_json_schema(json.dumps(CALL), **style)}
    out = {"tokenizer_s": t_tok}
    for name, make in makers.items():
        t_compile, compiled = timed(make)
        mask = xgr.allocate_token_bitmask(1, info.vocab_size)
        logits = torch.zeros(1, vocab)
        per = []
        for _ in range(3):
            m = xgr.GrammarMatcher(compiled)
            t0 = time.perf_counter()
            for t in ids:
                m.fill_next_token_bitmask(mask)
                xgr.apply_token_bitmask_inplace(logits, mask)
                assert m.accept_token(t)
            m.fill_next_token_bitmask(mask)
            per.append((time.perf_counter() - t0) / (len(ids) + 1))
            accepted = m.is_terminated() or m.accept_token(tok.eos_token_id)
        out[name] = {"compile_s": t_compile, "per_token_s": statistics.median(per), "accepts_answer": accepted}
    return out


def served_cost(model, ids: list[int]) -> dict:
    """What the server pays: droidspeak's Matcher (mask + advance) per token, beside one decode step of
    the model (a 1-token forward over a 512-token cache), measured in the same run."""
    import torch

    from droidspeak.serving.constraints import Grammars

    g = Grammars(model.tokenizer)
    g.matcher(CALL)  # compile and cache once
    vocab = model.model.config.vocab_size
    per = []
    for _ in range(3):
        m = g.matcher(CALL)
        t0 = time.perf_counter()
        for t in ids:
            m.mask(torch.zeros(vocab))
            m.advance(t)
        per.append((time.perf_counter() - t0) / len(ids))
    with torch.inference_mode():
        out = model.model(torch.randint(0, 1000, (1, 512)), use_cache=True)
        cache, steps = out.past_key_values, []
        for i in range(20):
            t0 = time.perf_counter()
            model.model(torch.tensor([[i + 5]]), past_key_values=cache, use_cache=True)
            steps.append(time.perf_counter() - t0)
    step = statistics.median(steps)
    mask = statistics.median(per)
    return {"mask_and_advance_per_token_s": mask, "decode_step_s": step, "overhead_fraction": mask / step}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/grammar_cost.json")
    args = ap.parse_args()
    from droidspeak.models import load_model

    model = load_model("base")
    tok = model.tokenizer
    ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    vocab = len(tok)
    res = {"tokens_fed": len(ids), "answer": ANSWER}
    for name, fn in (("llguidance", llguidance_cost), ("xgrammar", xgrammar_cost)):
        try:
            res[name] = fn(tok, ids, vocab)
        except Exception as e:  # noqa: BLE001 - a library that does not run here is a result too
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps(res[name]), flush=True)
    res["served"] = served_cost(model, ids)
    print("served", json.dumps(res["served"]), flush=True)
    write_result(args.out, provenance() | res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
