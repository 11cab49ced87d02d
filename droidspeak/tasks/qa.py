"""Extractive QA over long synthetic documents (gold answers known; metric: token F1).

A document is a long registry of invented people; the question asks for one attribute of one of
them, and the answer is a span of the document. Each split writes with its own sentence and
question templates, so what the held-out set measures is not memorised phrasing.
"""

from __future__ import annotations

import random
from typing import Any

from . import names
from .common import Example, Split, TokenCounter, distinct, fill, length_for, rng_for

ATTRS = ("city", "job", "org", "year")

_BIO = {
    "train": [
        "{name} was born in {city} in {year}. {Pron} works as a {job} for {org}.",
        "{name} is a {job} at {org}. {Pron} was born in {year} in {city}.",
    ],
    "calib": [
        "Born in {year} in the town of {city}, {name} later became a {job} at {org}.",
        "At {org}, {name} is known as a careful {job}; {pron} comes from {city} and was born in {year}.",
    ],
    "heldout": [
        "{name}, a {job} employed by {org}, grew up in {city}, where {pron} was born in {year}.",
        "Records list {name} (born {year}, {city}) as a {job} on the staff of {org}.",
    ],
}
_QUESTIONS = {
    "train": {"city": "Where was {name} born?", "job": "What is the job of {name}?",
              "org": "Which organization does {name} work for?", "year": "In what year was {name} born?"},
    "calib": {"city": "In which town was {name} born?", "job": "What does {name} do for a living?",
              "org": "Where is {name} employed?", "year": "When was {name} born?"},
    "heldout": {"city": "What is the birthplace of {name}?", "job": "What profession does {name} have?",
                "org": "Who employs {name}?", "year": "What is the year of birth of {name}?"},
}
_REQUEST = {
    "train": "Using only the document above, answer the question with the exact words from the document.\nQuestion: {q}",
    "calib": "Answer from the document with a short span.\nQuestion: {q}",
    "heldout": "Question about the document: {q}\nGive only the answer.",
}
_FILLER = {
    "train": ["The registry was updated after the spring census.", "Several entries were checked against parish books.",
              "Some names appear in older ledgers with other spellings."],
    "calib": ["Clerks copied these notes from the municipal archive.", "A few dates were confirmed by letters."],
    "heldout": ["This section follows the order of the original index cards.",
                "Entries marked as revised were corrected in the second edition."],
}


def _person(rng: random.Random) -> dict[str, Any]:
    female = rng.random() < 0.5
    return {
        "name": names.person(rng), "city": names.city(rng), "job": rng.choice(names.JOBS),
        "org": names.org(rng), "year": str(rng.randint(1921, 1999)),
        "pron": "she" if female else "he", "Pron": "She" if female else "He",
    }


def _bio(rng: random.Random, split: Split, p: dict[str, Any]) -> str:
    text = rng.choice(_BIO[split]).format(**p)
    return text + " " + rng.choice(_FILLER[split]) if rng.random() < 0.25 else text


def generate(split: Split, n: int, tokenizer: Any = None, seed: int = 0,
             lengths: tuple[int, int] | None = None, questions: int = 1) -> list[Example]:
    """``n`` contexts, each with ``questions`` questions about distinct people (consecutive rows share
    the context; with one question the rows are those of every earlier version)."""
    rng = rng_for(split, seed)
    count = TokenCounter(tokenizer)
    rows = []
    for i in range(n):
        people, paras, total = fill(length_for(split, rng, lengths), count, lambda: _person(rng),
                                    lambda p: _bio(rng, split, p), key=lambda p: p["name"])
        gold = rng.choice(people)
        attr = rng.choice(ATTRS)
        title = f"Registry of the {names.word(rng)} district"
        context = title + "\n\n" + "\n".join(paras)
        for j, gold in enumerate(distinct(rng, people, lambda p: p["name"], gold, questions)):
            if j:  # further questions draw after the first, so one-question rows never change
                attr = rng.choice(ATTRS)
            q = _QUESTIONS[split][attr].format(name=gold["name"])
            rows.append(Example(context, _REQUEST[split].format(q=q), gold[attr], "qa",
                                {"split": split, "attr": attr, "approx_tokens": total, "index": i, "question": j}))
    return rows
