"""Evaluation rows and their JSONL form.

A row is ``{"context", "prompt", "reference"?, "task"?, "meta"?}``: the shared long context, the
receiver's own request, and (optionally) the gold answer. Users can bring their own files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import DroidspeakError

Split = Literal["train", "calib", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "calib", "heldout")
# NOTE: each split owns its own seed offset and template set; no two splits share either.
SPLIT_SEEDS = {"train": 1_000, "calib": 2_000, "heldout": 3_000}


@dataclass(slots=True)
class Example:
    context: str
    prompt: str
    reference: str | None = None
    task: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, {})}, ensure_ascii=False)


def read_jsonl(path: str | Path) -> list[Example]:
    """Read rows; a malformed line is a one-line error naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise DroidspeakError(f"data file not found: {p}")
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            rows.append(Example(d["context"], d["prompt"], d.get("reference"), d.get("task"), d.get("meta", {})))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DroidspeakError(f"{p}:{i}: not a row with 'context' and 'prompt' ({e})") from None
    return rows


def write_jsonl(rows: list[Example], path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(r.to_json() + "\n" for r in rows))


def rng_for(split: Split, seed: int) -> random.Random:
    return random.Random(SPLIT_SEEDS[split] + seed)


def length_for(split: Split, rng: random.Random, lengths: tuple[int, int] | None) -> int:
    """Target context length in tokens: short for training, 1K-8K (log-uniform) for evaluation."""
    lo, hi = lengths or ((400, 1400) if split == "train" else (1024, 8000))
    return int(round(lo * (hi / lo) ** rng.random()))


def fill(target: int, count: "TokenCounter", make: Callable[[], Any], render: Callable[[Any], str],
         key: Callable[[Any], str] | None = None) -> tuple[list[Any], list[str], int]:
    """Records drawn by ``make`` and their texts (``render``), until the texts reach ``target`` tokens;
    with ``key``, a record whose key was drawn before is drawn again. Returns the records, their texts
    and the token count (one separator token per text)."""
    items: list[Any] = []
    texts: list[str] = []
    used: set[str] = set()
    total = 0
    while total < target:
        item = make()
        if key is not None:
            if key(item) in used:
                continue
            used.add(key(item))
        text = render(item)
        items.append(item)
        texts.append(text)
        total += count(text) + 1
    return items, texts, total


def distinct(rng: random.Random, items: list[Any], key: Callable[[Any], str], first: Any, n: int) -> Iterator[Any]:
    """``first``, then ``n - 1`` more of ``items``, each drawn among those not drawn yet (among all once
    every one has been): the records several questions about one context ask about."""
    asked = {key(first)}
    yield first
    for _ in range(n - 1):
        pick = rng.choice([x for x in items if key(x) not in asked] or items)
        asked.add(key(pick))
        yield pick


class TokenCounter:
    """Counts tokens of text pieces with the family tokenizer, caching nothing (pieces are unique)."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer

    def __call__(self, text: str) -> int:
        if self.tok is None:
            return max(1, len(text) // 4)
        return len(self.tok(text, add_special_tokens=False)["input_ids"])
