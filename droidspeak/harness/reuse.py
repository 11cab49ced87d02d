"""One receiver request over a context a sender prefilled: with a plan, and with full prefill.

This is what ``droidspeak reuse`` and the demo run, and what tests compare: the same request
answered from the receiver's own full prefill and from the partial prefill over the sender's
capture, with TTFT, first-token KL and agreement of the two answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..core.capture import SenderCapture, capture
from ..core.decode import greedy, stop_ids
from ..core.plan import RecomputePlan
from ..core.prefill import full_prefill, partial_prefill
from ..core.prompt import PromptTokens, layout
from ..errors import DroidspeakError, IncompatibleModelsError
from ..kinds import ShareKind
from ..models.exact import Exactness, activation_point, exact_after, exactness
from ..models.family import require_compatible
from ..models.loaded import LoadedModel
from ..quality import agreement, kl_divergence
from ..sharing.profile import Profile


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
    exactness: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pair_exactness(sender: LoadedModel, receiver: LoadedModel) -> Exactness:
    """What the weights prove about the receiver reusing the sender's captures."""
    return exactness(sender.capture_weights, receiver.weights)


def pair_profile(path: str, sender: LoadedModel, receiver: LoadedModel) -> Profile:
    """A profile file, refused (one line) unless it was made for exactly this pair of weights."""
    profile = Profile.load(path)
    profile.check(sender.capture_weights.identity, receiver.identity, receiver.family.digest, sender.name,
                  receiver.name)
    return profile


def parse_plan(text: str, sender: LoadedModel, receiver: LoadedModel) -> RecomputePlan:
    """A plan as the CLI takes it: ``none | all | S:E[,S:E]``, ``profile:PATH`` (the plan a profile of
    this very pair chose) or ``exact`` (the plan the weights prove exact for this pair)."""
    t = text.strip()
    if t.lower() == "exact":
        ex = pair_exactness(sender, receiver)
        if not ex.plan:
            raise DroidspeakError(f"{sender.name} -> {receiver.name}: no exact plan ({ex.reason}); profile the pair "
                                  "and use profile:PATH")
        return RecomputePlan.parse(ex.plan, receiver.num_layers)
    if t.startswith("profile:"):
        return pair_profile(t[len("profile:"):], sender, receiver).plan(receiver.num_layers)
    return RecomputePlan.parse(t, receiver.num_layers)


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
        full_prefill(m, list(range(3, 35)), room=1)


def run_reuse(sender: LoadedModel, receiver: LoadedModel, prompt: PromptTokens, plan: RecomputePlan,
              max_new_tokens: int = 32, cap: SenderCapture | None = None) -> ReuseReport:
    """Answer with the plan over the sender's capture and with the receiver's own full prefill."""
    require_compatible(sender.family, receiver.family, sender.name, receiver.name)
    if cap is None:
        cap = capture(sender, list(prompt.prefix), e_layers=plan.transition_layers)
    stops = stop_ids(receiver.tokenizer)
    full = full_prefill(receiver, prompt.ids, room=max_new_tokens)
    full_answer = receiver.detokenize(greedy(receiver, full, max_new_tokens, stops))
    ex = pair_exactness(sender, receiver)
    holds = bool(ex.plan) and (not ex.needs_activation_after_context
                               or exact_after(activation_point(prompt.ids, receiver.activation), len(prompt.prefix)))
    exact_plan = holds and str(plan) == str(RecomputePlan.parse(ex.plan or "all", receiver.num_layers))
    kind = ShareKind.EXACT if exact_plan else ShareKind.PROFILED
    part = partial_prefill(receiver, cap, plan, prompt.suffix, room=max_new_tokens, kind=kind)
    answer = receiver.detokenize(greedy(receiver, part, max_new_tokens, stops))
    return ReuseReport(
        answer=answer, full_answer=full_answer, ttft_s=part.timings.prefill_s,
        full_ttft_s=full.timings.prefill_s, recomputed_layers=part.recomputed_layers,
        first_token_kl=kl_divergence(full.logits, part.logits),
        answer_f1_vs_full=agreement(answer, full_answer),
        plan=str(plan), context_tokens=len(prompt.prefix), prompt_tokens=len(prompt.ids),
        sender=sender.name, receiver=receiver.name,
        exactness=ex.to_dict() | {"holds_for_this_prompt": holds, "plan_is_the_proven_one": exact_plan},
    )
