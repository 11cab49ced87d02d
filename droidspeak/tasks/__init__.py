"""The shipped tasks: generators of train / calibration / held-out rows, and their metrics."""

from __future__ import annotations

from typing import Any, Callable

from . import code, qa, summary, toolcall
from .common import SPLITS, Example, Split, read_jsonl, write_jsonl

GENERATORS: dict[str, Callable[..., list[Example]]] = {
    "qa": qa.generate,
    "code": code.generate,
    "toolcall": toolcall.generate,
    "summary": summary.generate,  # label-free: no references
}
METRIC_OF_TASK: dict[str, str | None] = {"qa": "f1", "code": "edit_sim", "toolcall": "call_fields", "summary": None}


MULTI_QUESTION_TASKS = ("qa", "toolcall")  # tasks that can ask several questions about one context


def generate(task: str, split: Split, n: int, tokenizer: Any, seed: int = 0,
             lengths: tuple[int, int] | None = None, questions: int = 1) -> list[Example]:
    """``n`` contexts of ``task``'s ``split``; with ``questions`` > 1 (qa, toolcall), that many
    consecutive rows per context."""
    from ..errors import DroidspeakError

    if task not in GENERATORS:
        raise DroidspeakError(f"unknown task '{task}'; known: {', '.join(GENERATORS)}")
    if split not in SPLITS:
        raise DroidspeakError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")
    if questions > 1 and task in MULTI_QUESTION_TASKS:
        return GENERATORS[task](split, n, tokenizer=tokenizer, seed=seed, lengths=lengths, questions=questions)
    return GENERATORS[task](split, n, tokenizer=tokenizer, seed=seed, lengths=lengths)


__all__ = ["GENERATORS", "METRIC_OF_TASK", "MULTI_QUESTION_TASKS", "Example", "SPLITS", "Split", "generate",
           "read_jsonl", "write_jsonl"]
