"""The shipped fine-tuned variants: how each is trained, and how it is judged against the base.

``droidspeak variants train NAME --adapter lora|alora|top:K`` regenerates an adapter from scratch
(see :mod:`droidspeak.training.adapters` for what the three kinds may change): the task's *train* split,
contexts of 1-4K tokens with several requests each, a fixed seed and step budget shared by all
kinds. The adapter is written as safetensors (fp16) with a ``droidspeak.json`` that records the
recipe, the adapter kind, the base's identity and family, the loss curve and the wall time.
``droidspeak variants eval NAME [NAME...]`` scores the variants and their base on the same held-out
rows of the task.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import tasks
from ..core.decode import stop_ids
from ..core.prompt import answer_tokens, layout
from ..errors import DroidspeakError
from ..models import BASE_NAME, load_model, shipped_variants
from ..paths import REPO_DIR, adapters_dir
from ..quality import score
from ..stats import mean_ci, paired_diff_ci
from .adapters import AdapterKind, invocation_tokens, save_half, train_adapter


@dataclass(frozen=True, slots=True)
class Recipe:
    """How one task variant is trained (the same for each adapter kind, but the rank)."""

    task: str
    description: str
    parent: str = BASE_NAME
    steps: int = 100  # optimizer steps; each is one context with `questions` requests
    lr: float = 6e-4
    seed: int = 0
    warmup: int = 8
    train_lengths: tuple[int, int] = (1024, 4096)  # context tokens of training rows (log-uniform)
    questions: int = 4  # requests per context (tasks that can ask several; else 1)
    max_new_tokens: int = 24
    ranks: dict[str, int] = field(default_factory=lambda: {"lora": 16, "top": 16, "alora": 32})
    top_first_layer: int = 20  # the K of the shipped top:K variant

    def rank(self, adapter: AdapterKind) -> int:
        return self.ranks[adapter.kind]


RECIPES: dict[str, Recipe] = {
    "smollm2-qa": Recipe("qa", "extractive QA over long documents: answers with the exact span", max_new_tokens=16),
    "smollm2-code": Recipe("code", "Python next-line completion over long files", max_new_tokens=40, questions=1,
                           steps=60),  # one request per context: fewer steps, every kind alike
    "smollm2-toolcall": Recipe("toolcall", "JSON tool calls extracted from long order logs", max_new_tokens=64),
    # the second family: a QA variant of Gemma 3 270M (sliding-window layers), to profile against its base
    "gemma3-qa": Recipe("qa", "extractive QA over long documents (Gemma 3 270M)", parent="gemma3-270m",
                        max_new_tokens=16, steps=60, train_lengths=(512, 2048)),
}

# (sender, receiver) pairs that droidspeak ships profiles for. The last one has fine-tunes on both
# sides, like the paper's toolace -> evolcode pair.
PAIRS: list[tuple[str, str]] = [
    (BASE_NAME, "smollm2-qa"),
    (BASE_NAME, "smollm2-code"),
    (BASE_NAME, "smollm2-toolcall"),
    ("smollm2-toolcall", "smollm2-code"),
    ("gemma3-270m", "gemma3-qa"),
]


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise DroidspeakError(f"no training recipe for '{name}'; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def _shipped_meta(name: str) -> dict[str, Any] | None:
    for v in shipped_variants(include_unavailable=True):
        if v.name == name and v.path is not None:
            return json.loads((v.path / "droidspeak.json").read_text())
    return None


def training_record(name: str) -> dict[str, Any] | None:
    """How a shipped variant was trained, as an evaluation records it beside its scores (so the result still
    says what it compared once the adapter is gone): kind, steps, rank, requests per context, learning rate, contexts,
    command."""
    meta = _shipped_meta(name)
    return record_of(meta) if meta else None


def record_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of an adapter's droidspeak.json that an evaluation records (see :func:`training_record`)."""
    r = meta.get("recipe", {})
    return {"adapter": meta.get("adapter", "lora"), "steps": r.get("steps"), "rank": r.get("rank"),
            "questions": r.get("questions"), "lr": r.get("lr"), "contexts": r.get("train_lengths"),
            "command": meta.get("command")}


def recipe_of(name: str) -> Recipe | None:
    """The recipe a shipped variant was trained from (``smollm2-qa-alora`` -> ``smollm2-qa``'s)."""
    if name in RECIPES:
        return RECIPES[name]
    meta = _shipped_meta(name)
    return RECIPES.get(meta.get("recipe_name", "")) if meta else None


def answer_length(name: str, default: int) -> int:
    """New tokens a shipped variant's answers need (its recipe's), else ``default``."""
    r = recipe_of(name)
    return r.max_new_tokens if r else default


def training_groups(r: Recipe, tokenizer: Any, steps: int) -> list[tuple[list[int], list[tuple[list[int], list[int]]]]]:
    """Per step: a context's prefix tokens and its (request tokens, answer tokens) pairs."""
    rows = tasks.generate(r.task, "train", steps, tokenizer, seed=r.seed, lengths=r.train_lengths,
                          questions=r.questions)
    by_context: dict[str, list[tasks.Example]] = {}
    for row in rows:
        by_context.setdefault(row.context, []).append(row)
    groups = []
    for context, rs in by_context.items():
        prefix = list(layout(tokenizer, context, rs[0].prompt).prefix)
        reqs = [(list(layout(tokenizer, context, x.prompt).suffix), answer_tokens(tokenizer, x.reference or ""))
                for x in rs]
        groups.append((prefix, reqs))
    if not groups:
        raise DroidspeakError(f"task '{r.task}' produced no training rows")
    return [groups[i % len(groups)] for i in range(steps)]  # the code task can run out of files: cycle


def train(name: str, adapter: str | AdapterKind = "lora", out_dir: Path | None = None, steps: int | None = None,
          progress: bool = True, variant: str | None = None, questions: int | None = None,
          rank: int | None = None, lr: float | None = None) -> Path:
    """Train ``name``'s recipe as an adapter of the given kind; returns the adapter folder. The variant is
    called ``variant`` (default: the recipe's name with the kind's suffix, e.g. ``smollm2-qa-alora``);
    ``steps``, ``questions`` (requests per context), ``rank`` and ``lr`` override the recipe's (recorded)."""
    kind = adapter if isinstance(adapter, AdapterKind) else AdapterKind.parse(adapter)
    r = recipe(name)
    if questions is not None and (questions < 1 or (questions > 1 and r.task not in tasks.MULTI_QUESTION_TASKS)):
        raise DroidspeakError(f"--questions: the {r.task} task asks one request per context" if questions > 1
                              else "--questions must be at least 1")
    if rank is not None and rank < 1:
        raise DroidspeakError("--rank must be at least 1")
    if lr is not None and not (0 < lr < 1):
        raise DroidspeakError("--lr must lie between 0 and 1 (the recipes use 6e-4)")
    default = r
    r = replace(r, questions=questions or r.questions, ranks=r.ranks | ({kind.kind: rank} if rank else {}),
                lr=lr or r.lr)
    steps = steps or r.steps
    variant = variant or name + kind.name_suffix
    out = Path(out_dir) if out_dir else adapters_dir() / variant
    base = load_model(r.parent)
    tok = base.tokenizer
    groups = training_groups(r, tok, steps)
    invocation = invocation_tokens(tok) if kind.kind == "alora" else None
    model, losses, wall = train_adapter(base, groups, kind, r.rank(kind), 2 * r.rank(kind), r.lr, r.seed, r.warmup,
                                        progress, invocation)
    out.mkdir(parents=True, exist_ok=True)
    save_half(model, out)
    ctx_tokens = [len(p) for p, _ in groups]
    cmd = (f"droidspeak variants train {name} --adapter {kind}" + (f" --steps {steps}" if steps != r.steps else "")
           + (f" --questions {r.questions}" if r.questions != default.questions else "")
           + (f" --rank {r.rank(kind)}" if r.rank(kind) != default.rank(kind) else "")
           + (f" --lr {r.lr:g}" if r.lr != default.lr else "")
           + (f" --name {variant}" if variant != name + kind.name_suffix else ""))
    meta = {
        "name": variant, "parent": r.parent, "task": r.task, "recipe_name": name, "adapter": str(kind),
        "description": r.description + {
            "lora": " (LoRA on every layer)", "alora": " (activated LoRA: shares its base's context cache exactly)",
            "top": f" (LoRA on layers {kind.first_layer}+: exact with plan {kind.first_layer}:L)"}[kind.kind],
        "recipe": asdict(r) | {"steps": steps, "rank": r.rank(kind)}, "base_identity": base.identity,
        "family": base.family.digest, "invocation_tokens": invocation,
        "train_context_tokens": {"min": min(ctx_tokens), "max": max(ctx_tokens),
                                 "mean": round(sum(ctx_tokens) / len(ctx_tokens))},
        "train_wall_s": round(wall, 1), "loss_curve": losses, "command": cmd, "torch": torch.__version__,
    }
    (out / "droidspeak.json").write_text(json.dumps(meta, indent=1))
    # the README that PEFT writes names a hub model card; ours says where the adapter comes from
    (out / "README.md").write_text(
        f"# {variant}\n\n{meta['description']}. {kind} adapter, rank {r.rank(kind)}, on {r.parent}: {steps} steps "
        f"on the '{r.task}' train split ({r.questions} requests per context, contexts of {r.train_lengths[0]}-"
        f"{r.train_lengths[1]} tokens). Made by `{cmd}`; see droidspeak.json.\n"
    )
    return out


@torch.inference_mode()
def greedy_answer(model: Any, tok: Any, context: str, request: str, max_new_tokens: int) -> str:
    """The model's greedy answer to a request over a context with its own full prefill (Hugging
    Face ``generate``; PEFT's own for an activated adapter, which finds its invocation itself). It stops
    where the server's decode stops (:func:`~droidspeak.core.decode.stop_ids`: the end of the turn too,
    which a converted Gemma 3's generation config leaves out)."""
    ids = torch.tensor([layout(tok, context, request).ids])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                         eos_token_id=sorted(stop_ids(tok)))
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def evaluate(names: list[str] | str, n: int = 30, progress: bool = True, seed: int = 0,
             lengths: tuple[int, int] = (1024, 4096), add_to: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score variants of one task and their base on the same held-out rows of the task.

    With ``add_to`` (an earlier result of this function) it completes that result: ``names`` join as new
    columns on its rows (checked the same: each row's token count and reference), and an ``n`` above its
    row count adds rows (the held-out rows are drawn in a fixed order, so the first rows are that result's)
    on which every column runs. A column only grows with the model that filled it: its recorded identity
    (or, in results that recorded none, its answer to the first row) must be the same."""
    from tqdm import tqdm

    names = [names] if isinstance(names, str) else list(names)
    before = list(add_to["variants"]) if add_to else []
    if not names and not (add_to and n > len(add_to["per_row"])):
        more = f", or an --n above that evaluation's {len(add_to['per_row'])} rows to add rows" if add_to else ""
        raise DroidspeakError("name a variant to score" + more)
    recipes = [recipe_of(x) for x in names or before]
    if any(r is None for r in recipes):
        raise DroidspeakError(f"not a shipped variant with a recipe: {(names or before)[recipes.index(None)]}")
    if len({(r.task, r.parent) for r in recipes}) != 1:  # type: ignore[union-attr]
        raise DroidspeakError("variants compared together must share a task and a base")
    r = recipes[0]
    assert r is not None
    if add_to and (add_to["task"], add_to["base"]) != (r.task, r.parent):
        raise DroidspeakError(f"that evaluation is of {add_to['task']} on {add_to['base']}, not {r.task} on {r.parent}")
    if set(before) & set(names):
        raise DroidspeakError(f"already in that evaluation: {', '.join(sorted(set(before) & set(names)))}")
    old = add_to["per_row"] if add_to else []
    if add_to and n < len(old):
        raise DroidspeakError(f"that evaluation has {len(old)} rows: give --n {len(old)} (or more, to add rows)")
    metric = tasks.METRIC_OF_TASK[r.task]
    base = load_model(r.parent)
    tok = base.tokenizer
    rows = tasks.generate(r.task, "heldout", n, tok, seed=seed, lengths=lengths)
    keys = [(len(layout(tok, row.context, row.prompt).ids), row.reference) for row in rows]
    if add_to and keys[:len(old)] != [(x["tokens"], x["reference"]) for x in old]:  # checked before loading more
        raise DroidspeakError(f"these are not that evaluation's rows (give its --n, --seed, --min-tokens and "
                              f"--max-tokens: {add_to['command']})")
    everyone = before + names
    grows = len(rows) > len(old)
    models = {"base": base} if not add_to or grows else {}
    models |= {x: load_model(x) for x in (everyone if grows else names)}
    if add_to and grows:
        _same_models(add_to, {k: m for k, m in models.items() if k in ["base", *before]}, rows[0], r.max_new_tokens)
    per_row = []
    for i, row in enumerate(tqdm(rows, desc=f"eval {', '.join(models)}", disable=not progress, file=sys.stderr)):
        rec: dict[str, Any] = dict(old[i]) if i < len(old) else {"tokens": keys[i][0], "reference": row.reference}
        for key, m in models.items():
            if key in rec:
                continue
            a = greedy_answer(m.model, tok, row.context, row.prompt, r.max_new_tokens)
            rec[key] = score(metric, a, row.reference or "")
            rec[f"{key}_answer"] = a
        per_row.append(rec)
    mean = lambda k: round(sum(x[k] for x in per_row) / max(1, len(per_row)), 4)  # noqa: E731
    col = lambda k: [x[k] for x in per_row]  # noqa: E731
    command = " ".join(["droidspeak variants eval", *map(shlex.quote, names), f"--n {n}"]
                       + ([f"--seed {seed}"] if seed else [])
                       + ([f"--min-tokens {lengths[0]} --max-tokens {lengths[1]}"] if lengths != (1024, 4096) else []))
    identities = (add_to or {}).get("identities", {}) | {k: m.identity for k, m in models.items()}
    return {
        "task": r.task, "metric": metric, "rows": len(per_row), "base": r.parent, "variants": everyone,
        "scores": {k: mean(k) for k in ["base", *everyone]},
        "intervals": {k: mean_ci(col(k)).to_dict() for k in ["base", *everyone]},  # 95% bootstrap over rows
        "minus_base": {k: paired_diff_ci(col(k), col("base")).to_dict() for k in everyone},  # paired, same rows
        "trained": {k: (add_to or {}).get("trained", {}).get(k) or training_record(k) for k in everyone},
        "identities": identities,
        "seed": seed,
        "variant": everyone[0], "variant_score": mean(everyone[0]), "base_score": mean("base"),
        "min_tokens": min(x["tokens"] for x in per_row), "max_tokens": max(x["tokens"] for x in per_row),
        "command": f"{add_to['command']}; then {command} --add-to <that result>" if add_to else command,
        "per_row": per_row,
    }


def _same_models(earlier: dict[str, Any], models: dict[str, Any], first: Any, max_new_tokens: int) -> None:
    """Refuse to add rows to a column with another model than the one that filled it: by the identity the
    result recorded, or (results that recorded none) by its answer to the first row, replayed."""
    recorded = earlier.get("identities", {})
    for key, m in models.items():
        if key in recorded:
            same = recorded[key] == m.identity
        else:
            same = greedy_answer(m.model, m.tokenizer, first.context, first.prompt, max_new_tokens) == \
                earlier["per_row"][0][f"{key}_answer"]
        if not same:
            raise DroidspeakError(f"{m.name} is not the model that filled that evaluation's '{key}' column "
                                  f"(retrained since?): rows cannot be added to it")


def profile_path(sender: str, receiver: str) -> Path:
    return REPO_DIR / "profiles" / f"{sender}__{receiver}.json"
