"""Quality metrics: token F1 (QA), edit similarity (code), Rouge-L, tool-call fields, KL."""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import torch


def _normalize(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD/LongBench-style token F1 after normalisation."""
    p, r = _normalize(prediction), _normalize(reference)
    if not p or not r:
        return float(p == r)
    common = Counter(p) & Counter(r)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def agreement(answer: str, reference_answer: str) -> float:
    """Label-free quality: token F1 of an answer against the receiver's own full-prefill answer
    (exact match when that answer is empty)."""
    return token_f1(answer, reference_answer) if reference_answer.strip() else float(answer == reference_answer)


def first_code_line(text: str) -> str:
    """The first non-empty line of a completion, with code fences removed (as LCC scoring does)."""
    for line in text.replace("```python", "\n").replace("```", "\n").splitlines():
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()
    return ""


def edit_similarity(prediction: str, reference: str) -> float:
    """Levenshtein similarity in [0, 1] of the first code line against the reference line."""
    from rapidfuzz import fuzz

    return fuzz.ratio(first_code_line(prediction), reference.strip()) / 100.0


def rouge_l(prediction: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return scorer.score(reference, prediction)["rougeL"].fmeasure


def first_json_object(text: str) -> dict | None:
    """The first well-formed JSON object in a text (None when there is none)."""
    start = text.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(text[start : i + 1])
                        return obj if isinstance(obj, dict) else None
                    except json.JSONDecodeError:
                        break
        start = text.find("{", start + 1)
    return None


def call_fields(prediction: str, reference: str) -> float:
    """Fraction of a tool call's fields (name + each argument) that the prediction gets exactly right."""
    ref = json.loads(reference)
    pred = first_json_object(prediction) or {}
    args = pred.get("arguments") if isinstance(pred.get("arguments"), dict) else {}
    want = ref["arguments"]
    hits = int(pred.get("name") == ref["name"])
    hits += sum(str(args.get(k, "")).strip().lower() == str(v).strip().lower() for k, v in want.items())
    return hits / (1 + len(want))


METRICS = {"f1": token_f1, "edit_sim": edit_similarity, "rouge_l": rouge_l, "call_fields": call_fields}


def score(metric: str, prediction: str, reference: str) -> float:
    from .errors import DroidspeakError

    if metric not in METRICS:
        raise DroidspeakError(f"unknown metric '{metric}'; known: {', '.join(METRICS)}")
    return METRICS[metric](prediction, reference)


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """KL(P || Q) in nats between the softmaxes of two logit vectors (P: reference, Q: candidate)."""
    p = torch.log_softmax(p_logits.double().flatten(), -1)
    q = torch.log_softmax(q_logits.double().flatten(), -1)
    return float(torch.sum(p.exp() * (p - q)))
