"""Commands about the shipped variants and their data: ``variants list|train|eval``, ``data``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import DroidspeakError
from .common import emit, table


def read_result(path: str) -> dict:
    """An earlier ``variants eval --out`` result (a one-line error when it is not one)."""
    try:
        res = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DroidspeakError(f"cannot read {path}: {e}") from None
    rows = res.get("per_row") if isinstance(res, dict) else None
    if (not isinstance(res, dict) or not {"task", "base", "variants", "per_row", "command"} <= res.keys()
            or not isinstance(rows, list) or not all(isinstance(x, dict) and {"tokens", "reference"} <= x.keys()
                                                     for x in rows)):
        raise DroidspeakError(f"{path} is not the result of `droidspeak variants eval --out`")
    return res


def cmd_variants(args: argparse.Namespace) -> int:
    if args.variants_cmd == "export-vllm":
        return _export_vllm(args)
    from ..training import variants

    if args.variants_cmd == "list":
        rows = [{"name": n, "base": r.parent, "task": r.task, "description": r.description, "steps": r.steps,
                 "questions_per_context": r.questions, "context_tokens": list(r.train_lengths), "ranks": r.ranks}
                for n, r in variants.RECIPES.items()]
        emit(args, {"recipes": rows, "pairs": variants.PAIRS},
             table([[r["name"], r["base"], r["task"], str(r["steps"]), r["description"]] for r in rows],
                   ["recipe", "base", "task", "steps", "description"])
             + "\nadapter kinds: --adapter lora (NAME), alora (NAME-alora), top:K (NAME-topK)"
             + "\nprofiled pairs (sender -> receiver): " + ", ".join(f"{s} -> {r}" for s, r in variants.PAIRS))
        return 0
    if args.variants_cmd == "train":
        out = variants.train(args.name, args.adapter, Path(args.out) if args.out else None, args.steps,
                             progress=not args.json, variant=args.variant,
                             questions=args.questions, rank=args.rank, lr=args.lr)
        meta = json.loads((out / "droidspeak.json").read_text())
        emit(args, {"adapter": str(out), "train_wall_s": meta["train_wall_s"], "final_loss": meta["loss_curve"][-1]},
             f"wrote {out} in {meta['train_wall_s']}s (final loss {meta['loss_curve'][-1]})")
        return 0
    if args.variants_cmd == "eval":
        earlier = read_result(args.add_to) if args.add_to else None
        res = variants.evaluate(args.names, args.n, progress=not args.json, seed=args.seed,
                                lengths=(args.min_tokens, args.max_tokens), add_to=earlier)
        out = args.out or args.add_to
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(res, indent=1))
        summary = {k: v for k, v in res.items() if k != "per_row"}
        emit(args, summary, f"held-out {res['task']} ({res['rows']} rows, {res['min_tokens']}-{res['max_tokens']} "
             f"tokens), {res['metric']}, 95% CI over rows: "
             + ", ".join(f"{k} {v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" for k, v in res["intervals"].items())
             + "".join(f"\n  {k} - base (paired): {v['value']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"
                       for k, v in res["minus_base"].items()))
        return 0
    raise DroidspeakError("use: droidspeak variants {list,train,eval,export-vllm}")


def _export_vllm(args: argparse.Namespace) -> int:
    """``variants export-vllm``: without the training stack (a missing folder is refused before the models')."""
    from ..models import registry

    spec = registry().get(args.name)
    src = spec.path if spec is not None and spec.path is not None else Path(args.name)
    if not (src / "adapter_config.json").is_file():
        raise DroidspeakError(f"'{args.name}' is neither a shipped variant nor an adapter folder")
    from ..integrations.vllm.adapters import export_for_vllm

    out = export_for_vllm(src, Path(args.out))
    cfg = json.loads((out / "adapter_config.json").read_text())
    activated = "droidspeak_alora_invocation_tokens" in cfg
    emit(args, {"adapter": str(out), "activated": activated},
         f"wrote {out}: " + ("an activated adapter; served by vLLM with the droidspeak connector it keeps its own "
                             "semantics (the base's cache before its invocation)" if activated else
                             "a plain LoRA (vLLM serves it as it is)"))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .. import tasks
    from ..models import load_model

    tok = load_model("base").tokenizer
    rows = tasks.generate(args.task, args.split, args.n, tok, seed=args.seed,
                          lengths=(args.min_tokens, args.max_tokens) if args.min_tokens else None)
    tasks.write_jsonl(rows, args.out)
    emit(args, {"rows": len(rows), "out": args.out}, f"wrote {len(rows)} rows to {args.out}")
    return 0


def register(add) -> None:
    sp = add("variants", "the shipped fine-tuned variants: list, train, eval", cmd_variants)
    vsub = sp.add_subparsers(dest="variants_cmd", metavar="ACTION")
    vl = vsub.add_parser("list", help="variants and the pairs that share")
    vl.add_argument("--json", action="store_true")
    vt = vsub.add_parser("train", help="train a variant's LoRA adapter from its recipe")
    vt.add_argument("name")
    vt.add_argument("--adapter", default="lora", help="lora (every layer), alora (activated: exact reuse of the base's "
                                                     "context), top:K (layers K+ only: exact with plan K:L)")
    vt.add_argument("--steps", type=int, help="override the recipe's step count")
    vt.add_argument("--questions", type=int, help="override the recipe's requests per training context (qa, toolcall)")
    vt.add_argument("--rank", type=int, help="override the recipe's LoRA rank for this adapter kind")
    vt.add_argument("--lr", type=float, help="override the recipe's learning rate (6e-4)")
    vt.add_argument("--name", dest="variant", help="the variant's name (default NAME, NAME-alora or NAME-topK)")
    vt.add_argument("--out", help="adapter folder (default adapters/<the variant's name>)")
    vt.add_argument("--json", action="store_true")
    ve = vsub.add_parser("eval", help="score variants of one task and their base on the same held-out rows")
    ve.add_argument("names", nargs="*", metavar="NAME")
    ve.add_argument("--n", type=int, default=30)
    ve.add_argument("--min-tokens", type=int, default=1024)
    ve.add_argument("--max-tokens", type=int, default=4096)
    ve.add_argument("--seed", type=int, default=0, help="which held-out rows (recorded in the result)")
    ve.add_argument("--out", help="write the full result (per row) as JSON here")
    ve.add_argument("--add-to", metavar="FILE", help="an earlier evaluation's result, completed and written back (or "
                    "to --out): NAMEs run on its rows (checked the same) as new columns; an --n above its row count "
                    "adds rows, on which every column runs (each with the model that filled it, checked)")
    ve.add_argument("--json", action="store_true")

    vx = vsub.add_parser("export-vllm", help="write an adapter as vLLM loads it (an activated one keeps its invocation "
                                             "for the droidspeak connector)")
    vx.add_argument("name", help="a shipped variant's name or an adapter folder")
    vx.add_argument("--out", required=True, help="the folder to write (give it to vllm serve --lora-modules NAME=DIR)")
    vx.add_argument("--json", action="store_true")

    sp = add("data", "generate task rows as JSONL (context, prompt, reference)", cmd_data)
    sp.add_argument("--task", required=True, choices=["qa", "code", "toolcall", "summary"])
    sp.add_argument("--split", required=True, choices=["train", "calib", "heldout"])
    sp.add_argument("--n", type=int, default=20)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--min-tokens", type=int)
    sp.add_argument("--max-tokens", type=int)
    sp.add_argument("--out", required=True)
