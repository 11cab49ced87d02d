"""One receiver request over a context a sender prefilled: with a plan, and with full prefill.

This is what ``droidspeak reuse`` and the demo run, and what tests compare: the same request
answered from the receiver's own full prefill and from the partial prefill over the sender's
capture, with TTFT, first-token KL and agreement of the two answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .sender import SenderCapture, capture
from .decode import greedy, stop_ids
from .errors import DroidspeakError, IncompatibleModelsError
from .family import compatibility
from .metrics import agreement, kl_divergence
from .models import LoadedModel
from .partial import full_prefill, partial_prefill
from .plan import RecomputePlan
from .prompt import PromptTokens, layout


@dataclass(slots=True)
class ReuseReport:
    answer: str
    full_answer: str
    ttft_s: float
    full_ttft_s: float
    recomputed_layers: list[int]
    first_token_kl: float
    answer_f1_vs_full: float
    plan: str
    context_tokens: int
    prompt_tokens: int
    sender: str
    receiver: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_shareable(sender: LoadedModel, receiver: LoadedModel) -> None:
    verdict = compatibility(sender.family, receiver.family)
    if not verdict.ok:
        raise IncompatibleModelsError(f"{sender.name} and {receiver.name} may not share caches: {verdict.reason}")


def profile_checker(sender: LoadedModel, receiver: LoadedModel):
    """A check that a profile belongs to exactly this (sender, receiver) pair of weights."""

    def check(profile: dict[str, Any]) -> None:
        if profile.get("family") != receiver.family.digest:
            raise DroidspeakError(
                f"profile was made for model family {str(profile.get('family'))[:16]}, not {receiver.name}'s "
                f"({receiver.family.digest[:16]}): its layers do not correspond"
            )
        for role, model in (("sender", sender), ("receiver", receiver)):
            want = profile.get(f"{role}_identity")
            if want != model.identity:
                named = profile.get(role)
                raise DroidspeakError(
                    f"profile was made for {role} {named or '?'} ({str(want)[:12]}), not {model.name} "
                    f"({model.identity[:12]}): another pair or changed weights; re-run `droidspeak profile` for this pair"
                )

    return check


def prompt_for(sender: LoadedModel, receiver: LoadedModel, context: str, request: str) -> PromptTokens:
    """Lay out the prompt; the sender must see exactly the receiver's prefix tokens."""
    p = layout(receiver.tokenizer, context, request)
    if sender.tokenizer is not None and sender.tokenizer is not receiver.tokenizer:
        if tuple(layout(sender.tokenizer, context, request).prefix) != p.prefix:
            raise IncompatibleModelsError("sender and receiver tokenize the shared context differently")
    return p


@torch.inference_mode()
def warm_up(*models: LoadedModel) -> None:
    """One short forward per model, so one-time costs do not land in the first timed prefill."""
    for m in models:
        full_prefill(m, list(range(3, 35)))


def run_reuse(sender: LoadedModel, receiver: LoadedModel, prompt: PromptTokens, plan: RecomputePlan,
              max_new_tokens: int = 32, cap: SenderCapture | None = None) -> ReuseReport:
    """Answer with the plan over the sender's capture and with the receiver's own full prefill."""
    require_shareable(sender, receiver)
    if cap is None:
        cap = capture(sender, list(prompt.prefix), e_layers=plan.transition_layers)
    stops = stop_ids(receiver.tokenizer)
    full = full_prefill(receiver, prompt.ids)
    full_tokens = greedy(receiver.model, full.cache, full.logits, max_new_tokens, stops)
    part = partial_prefill(receiver, cap, plan, prompt.suffix)
    part_tokens = greedy(receiver.model, part.cache, part.logits, max_new_tokens, stops)
    dec = (lambda t: receiver.tokenizer.decode(t, skip_special_tokens=True)) if receiver.tokenizer else str
    answer, full_answer = dec(part_tokens), dec(full_tokens)
    return ReuseReport(
        answer=answer, full_answer=full_answer, ttft_s=part.timings["prefill_s"],
        full_ttft_s=full.timings["prefill_s"], recomputed_layers=part.recomputed_layers,
        first_token_kl=kl_divergence(full.logits, part.logits),
        answer_f1_vs_full=agreement(answer, full_answer),
        plan=str(plan), context_tokens=len(prompt.prefix), prompt_tokens=len(prompt.ids),
        sender=sender.name, receiver=receiver.name,
    )
