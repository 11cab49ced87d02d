"""The shipped fine-tuned variants: how each is trained, and how it is judged against the base.

``droidspeak variants train NAME`` regenerates an adapter from scratch: the task's *train* split
(its own seeds and templates), a LoRA on every attention and MLP projection, a fixed seed. The
adapter is written as safetensors with a ``droidspeak.json`` that records the recipe, the base's
identity and family, the loss curve and the wall time. ``droidspeak variants eval NAME`` scores
the variant and the base on the task's *held-out* split.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import tasks
from .errors import DroidspeakError
from .metrics import score
from .models import BASE_NAME, load_model
from .paths import adapters_dir
from .prompt import answer_tokens, layout


@dataclass(frozen=True, slots=True)
class Recipe:
    """How one variant is trained."""

    task: str
    description: str
    steps: int = 160
    lr: float = 4e-4
    rank: int = 8
    alpha: int = 16
    seed: int = 0
    warmup: int = 10
    train_lengths: tuple[int, int] = (400, 1400)  # context tokens of training rows
    max_new_tokens: int = 24


RECIPES: dict[str, Recipe] = {
    "smollm2-qa": Recipe("qa", "extractive QA over long documents: answers with the exact span", max_new_tokens=16),
    "smollm2-code": Recipe("code", "Python next-line completion over long files", max_new_tokens=40),
    "smollm2-toolcall": Recipe("toolcall", "JSON tool calls extracted from long order logs", max_new_tokens=64),
}

# (sender, receiver) pairs that droidspeak ships profiles for. The last one has fine-tunes on both
# sides, like the paper's toolace -> evolcode pair.
PAIRS: list[tuple[str, str]] = [
    (BASE_NAME, "smollm2-qa"),
    (BASE_NAME, "smollm2-code"),
    (BASE_NAME, "smollm2-toolcall"),
    ("smollm2-toolcall", "smollm2-code"),
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def answer_length(name: str, default: int) -> int:
    """New tokens a shipped variant's answers need (its recipe's), else ``default``."""
    return RECIPES[name].max_new_tokens if name in RECIPES else default


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise DroidspeakError(f"no training recipe for '{name}'; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def train(name: str, out_dir: Path | None = None, steps: int | None = None, progress: bool = True) -> Path:
    """Train variant ``name`` as a LoRA on the base; returns the adapter folder."""
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm

    r = recipe(name)
    steps = steps or r.steps
    out = Path(out_dir) if out_dir else adapters_dir() / name
    torch.manual_seed(r.seed)
    base = load_model(BASE_NAME)
    tok = base.tokenizer
    rows = tasks.generate(r.task, "train", steps, tok, seed=r.seed, lengths=r.train_lengths)
    if len(rows) < steps:  # the code task can run out of files: cycle over what there is
        rows = [rows[i % len(rows)] for i in range(steps)]
    cfg = LoraConfig(r=r.rank, lora_alpha=r.alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                     task_type="CAUSAL_LM")
    model = get_peft_model(base.model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=r.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < r.warmup:
            return (step + 1) / r.warmup
        frac = (step - r.warmup) / max(1, steps - r.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses: list[float] = []
    t0 = time.time()
    bar = tqdm(range(steps), desc=f"train {name}", disable=not progress, file=sys.stderr)
    for step in bar:
        row = rows[step]
        prompt = layout(tok, row.context, row.prompt).ids
        answer = answer_tokens(tok, row.reference or "")
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    wall = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    meta = {
        "name": name, "parent": BASE_NAME, "task": r.task, "description": r.description,
        "recipe": asdict(r) | {"steps": steps}, "base_identity": base.identity,
        "family": base.family.digest, "train_wall_s": round(wall, 1), "loss_curve": losses,
        "command": f"droidspeak variants train {name}" + (f" --steps {steps}" if steps != r.steps else ""),
        "torch": torch.__version__,
    }
    (out / "droidspeak.json").write_text(json.dumps(meta, indent=1))
    # the README that PEFT writes names a hub model card; ours says where the adapter comes from
    (out / "README.md").write_text(
        f"# {name}\n\n{r.description}. LoRA r={r.rank} on SmolLM2-135M-Instruct, {steps} steps on the "
        f"'{r.task}' train split. Made by `{meta['command']}`; see droidspeak.json.\n"
    )
    return out


@torch.inference_mode()
def greedy_answer(model: Any, tok: Any, context: str, request: str, max_new_tokens: int) -> str:
    """The model's greedy answer to a request over a context, with its own full prefill."""
    ids = torch.tensor([layout(tok, context, request).ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def evaluate(name: str, n: int = 40, progress: bool = True, seed: int = 0) -> dict[str, Any]:
    """Score the variant and the base on the held-out split of the variant's task."""
    from tqdm import tqdm

    r = recipe(name)
    metric = tasks.METRIC_OF_TASK[r.task]
    variant = load_model(name)
    base = load_model(BASE_NAME)
    rows = tasks.generate(r.task, "heldout", n, variant.tokenizer, seed=seed)
    per_row = []
    for row in tqdm(rows, desc=f"eval {name}", disable=not progress, file=sys.stderr):
        a_var = greedy_answer(variant.model, variant.tokenizer, row.context, row.prompt, r.max_new_tokens)
        a_base = greedy_answer(base.model, base.tokenizer, row.context, row.prompt, r.max_new_tokens)
        per_row.append({
            "tokens": len(layout(variant.tokenizer, row.context, row.prompt).ids),
            "variant": score(metric, a_var, row.reference or ""),
            "base": score(metric, a_base, row.reference or ""),
            "variant_answer": a_var, "base_answer": a_base, "reference": row.reference,
        })
    mean = lambda k: sum(x[k] for x in per_row) / max(1, len(per_row))  # noqa: E731
    return {
        "variant": name, "task": r.task, "metric": metric, "rows": len(per_row),
        "variant_score": round(mean("variant"), 4), "base_score": round(mean("base"), 4),
        "min_tokens": min(x["tokens"] for x in per_row), "max_tokens": max(x["tokens"] for x in per_row),
        "command": "droidspeak variants eval " + shlex.quote(name) + f" --n {n}",
        "per_row": per_row,
    }


def profile_path(sender: str, receiver: str) -> Path:
    from .paths import REPO_DIR

    return REPO_DIR / "profiles" / f"{sender}__{receiver}.json"
