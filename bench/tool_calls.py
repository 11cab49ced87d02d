"""How well tool calls come out through the OpenAI API: the tools block and constrained decoding, measured.

Held-out toolcall rows (an order log and a request naming a customer; wording never trained on), sent
to a running `droidspeak serve` as chat completions by the openai client, greedy, for each model:

- ``plain``: the request as the tool-call variants were trained on it, no ``tools`` (the call is
  parsed from the text);
- ``tools_auto``: the same request with the three order tools offered (``tool_choice`` auto): the
  tools block goes into the prompt, the call comes back as ``message.tool_calls`` or not at all;
- ``tools_named``: the gold function named in ``tool_choice``: decoding constrained to its schema.

The base is asked in ``tools_named`` only (free, it writes no call: see the variants table, where it
scores 0 on this task).

Scores per row: ``exact`` (name and every argument right) and ``fields`` (the share of name and
arguments right, :func:`droidspeak.quality.call_fields`); means with 95% confidence intervals
(bootstrap over rows, :mod:`droidspeak.stats`), and paired differences against ``plain`` on the same
rows; every answer is saved per row.

    .venv/bin/python bench/tool_calls.py --rows 100 --out bench/results/tool_calls.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import provenance, write_result  # noqa: E402
from serve_load import start_server  # noqa: E402

from droidspeak.quality import call_fields, first_json_object  # noqa: E402
from droidspeak.stats import mean_ci, paired_diff_ci  # noqa: E402
from droidspeak.tasks import toolcall  # noqa: E402

PARAMS = {"type": "object", "properties": {"order_id": {"type": "string"}, "product": {"type": "string"},
                                           "quantity": {"type": "integer"}, "city": {"type": "string"}},
          "required": ["order_id", "product", "quantity", "city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": n, "description": f"{v} an order", "parameters": PARAMS}}
         for n, v in toolcall.ACTIONS.items()]
MODES = ("plain", "tools_auto", "tools_named")


def ask(client, model: str, mode: str, row) -> str:
    """The model's call as JSON text (from ``tool_calls`` when there is one, else the answer's text)."""
    kw = {}
    if mode != "plain":
        kw["tools"] = TOOLS
    if mode == "tools_named":
        kw["tool_choice"] = {"type": "function", "function": {"name": json.loads(row.reference)["name"]}}
    r = client.chat.completions.create(model=model, temperature=0, max_tokens=64, **kw,
                                       messages=[{"role": "user", "content": row.context},
                                                 {"role": "user", "content": row.prompt}])
    m = r.choices[0].message
    if m.tool_calls:
        c = m.tool_calls[0].function
        return json.dumps({"name": c.name, "arguments": json.loads(c.arguments)})
    return m.content or ""


def exact(prediction: str, reference: str) -> float:
    pred, ref = first_json_object(prediction) or {}, json.loads(reference)
    args = pred.get("arguments") if isinstance(pred.get("arguments"), dict) else {}
    return float(pred.get("name") == ref["name"] and set(args) == set(ref["arguments"])
                 and all(str(args[k]).strip().lower() == str(v).strip().lower() for k, v in ref["arguments"].items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-toolcall,smollm2-toolcall-alora")
    ap.add_argument("--base", default="smollm2-135m-instruct", help="asked in tools_named only ('' for none)")
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--lengths", type=int, nargs=2, default=(500, 700), help="context tokens, min max")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", default="bench/results/tool_calls.json")
    args = ap.parse_args()
    from openai import OpenAI

    models = args.models.split(",")
    rows = toolcall.generate("heldout", args.rows, lengths=tuple(args.lengths), seed=7)
    proc, url = start_server(",".join(([args.base] if args.base else []) + models))
    client = OpenAI(base_url=url + "/v1", api_key="none", timeout=900, max_retries=0)
    t0 = time.time()
    try:
        jobs = [(m, mode, i) for i in range(len(rows)) for m in models for mode in MODES]
        jobs += [(args.base, "tools_named", i) for i in range(len(rows))] if args.base else []
        with ThreadPoolExecutor(args.concurrency) as pool:
            answers = list(pool.map(lambda j: ask(client, j[0], j[1], rows[j[2]]), jobs))
    finally:
        proc.terminate()
        proc.wait(30)
    got = {(m, mode, i): a for (m, mode, i), a in zip(jobs, answers)}
    res: dict = {"rows": len(rows), "context_tokens": list(args.lengths), "split": "heldout", "seed": 7,
                 "wall_s": time.time() - t0, "models": {}}
    for m in models:
        per = {mode: {"exact": [exact(got[(m, mode, i)], r.reference) for i, r in enumerate(rows)],
                      "fields": [call_fields(got[(m, mode, i)], r.reference) for i, r in enumerate(rows)]}
               for mode in MODES}
        res["models"][m] = {mode: {k: mean_ci(v).to_dict() for k, v in per[mode].items()} for mode in MODES}
        for mode in MODES[1:]:
            res["models"][m][mode]["exact_minus_plain"] = paired_diff_ci(per[mode]["exact"], per["plain"]["exact"]).to_dict()
            res["models"][m][mode]["fields_minus_plain"] = paired_diff_ci(per[mode]["fields"],
                                                                          per["plain"]["fields"]).to_dict()
        print(m, json.dumps({mode: round(res["models"][m][mode]["fields"]["value"], 3) for mode in MODES}), flush=True)
    if args.base:
        res["base"] = {"model": args.base, "tools_named": {
            k: mean_ci([f(got[(args.base, "tools_named", i)], r.reference) for i, r in enumerate(rows)]).to_dict()
            for k, f in (("exact", exact), ("fields", call_fields))}}
    res["per_row"] = [{"reference": r.reference, **{f"{m}/{mode}": a for (m, mode, j), a in got.items() if j == i}}
                      for i, r in enumerate(rows)]
    write_result(args.out, provenance() | res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
