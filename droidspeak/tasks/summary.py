"""Free-form summaries of long meeting notes: a label-free task (no gold answer).

The document is a long set of invented project meeting notes; the request asks for a short
summary or a free-form account of one project. There is no reference: quality is the answer's
agreement with the receiver's own full-prefill answer (what ``droidspeak profile`` uses by
default). Each split has its own note templates and requests.
"""

from __future__ import annotations

from typing import Any

from . import names
from .common import Example, Split, TokenCounter, fill, length_for, rng_for

_NOTE = {
    "train": [
        "{person} ({org}) reported that the {project} project is {status}; next step: {step}.",
        "Update on {project}: {person} of {org} says it is {status}. They will {step}.",
    ],
    "calib": [
        "Meeting item - {project}. Owner {person}, {org}. Status {status}. Action: {step}.",
        "{person} from {org} walked through {project}, which is {status}, and agreed to {step}.",
    ],
    "heldout": [
        "Re {project}: {status} according to {person} ({org}); agreed action is to {step}.",
        "Minutes note that {project}, led by {person} at {org}, is {status}. Follow-up: {step}.",
    ],
}
_STATUS = ["on schedule", "two weeks late", "blocked on a supplier", "over budget", "ahead of plan",
           "waiting for review", "paused until spring"]
_STEPS = ["hire a contractor", "order new parts", "rewrite the test plan", "meet the landlord", "file the permit",
          "update the budget", "call the supplier", "visit the site"]
_REQUEST = {
    "train": ["Summarize these notes in two sentences.", "What happened with the {project} project?"],
    "calib": ["Give a short summary of the meeting notes.", "Describe the state of the {project} project."],
    "heldout": ["In a few sentences, what do these notes say?", "Tell me about the {project} project and its owner."],
}


def generate(split: Split, n: int, tokenizer: Any = None, seed: int = 0,
             lengths: tuple[int, int] | None = None) -> list[Example]:
    rng = rng_for(split, seed)
    count = TokenCounter(tokenizer)
    rows = []
    for i in range(n):
        projects, lines, total = fill(
            length_for(split, rng, lengths), count, lambda: names.word(rng, (2, 3)),
            lambda project: rng.choice(_NOTE[split]).format(person=names.person(rng), org=names.org(rng),
                                                            project=project, status=rng.choice(_STATUS),
                                                            step=rng.choice(_STEPS)))
        context = f"Notes of the {names.word(rng)} planning meeting\n\n" + "\n".join(lines)
        prompt = rng.choice(_REQUEST[split]).format(project=rng.choice(projects))
        rows.append(Example(context, prompt, None, "summary", {"split": split, "approx_tokens": total, "index": i}))
    return rows
