"""The sharing decision: which stored prefix a request reuses, and with which plan.

For every producer that stored a prefix of the prompt (longest first), :func:`decide` asks the
weights first (:func:`~droidspeak.models.exact.exactness`: the same model, or a provably exact
pair with its proven plan), then the profiles (one made for exactly those weights, its plan chosen
by policy and never narrower than the quality guard's floor); with neither, a miss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..core.plan import RecomputePlan
from ..core.prompt import PromptTokens
from ..errors import DroidspeakError
from ..kinds import ExactKind, ShareKind
from ..models.exact import WeightSummary, activation_point, exact_after, exactness
from ..models.loaded import LoadedModel
from ..store.cache import CacheStore, Hit
from .index import ProfileIndex
from .options import ShareOptions
from .profile import Profile

log = logging.getLogger("droidspeak.sharing")


@dataclass(frozen=True, slots=True)
class Decision:
    """What :func:`decide` found for one request."""

    kind: ShareKind
    hit: Hit | None
    plan: RecomputePlan
    reason: str
    profile: Profile | None = None
    refused: tuple[str, ...] = ()  # stored values a sealed tier refused on the way (a miss that fell back)


class PlanFloor:
    """The narrowest plan allowed per profile (the online quality guard widens it); none by default."""

    def floor(self, profile: Profile, num_layers: int) -> RecomputePlan | None:
        return None


def _choose(prof: Profile, opts: ShareOptions, hit: Hit, L: int, bandwidth: float | None,
            floor: RecomputePlan | None) -> RecomputePlan:
    if opts.policy == "profile":
        plan = prof.plan(L)
        if not plan.covers(floor):
            plan = floor
        return plan
    if opts.policy == "bandwidth":
        return prof.fastest(L, hit.tokens, bandwidth, hit.e_layers, floor)
    return prof.by_load(L, hit.tokens, bandwidth, hit.e_layers, opts.waiting, opts.slo_s, floor)


def decide(receiver: LoadedModel, store: CacheStore, prompt: PromptTokens, opts: ShareOptions = ShareOptions(),
           profiles: ProfileIndex | None = None, guard: PlanFloor | None = None) -> Decision:
    """Pick the hit and plan for a request (see the module docstring)."""
    L = receiver.num_layers
    ids = prompt.ids
    at = activation_point(ids, receiver.activation)
    refused: list[str] = []
    hits = store.lookup(receiver.family, ids[:-1], num_layers=L, refused=refused)  # one token is the receiver's own
    own = {receiver.identity, receiver.context_identity}
    if not opts.share:
        hits = [h for h in hits if h.sender == receiver.identity]
    hits = [h for h in hits if h.tokens >= opts.min_hit_fraction * len(ids)]
    hits.sort(key=lambda h: (-h.tokens, h.sender not in own))  # longest first; at equal length, its own
    profiles = profiles or ProfileIndex()
    bandwidth = opts.bandwidth_bytes_s if opts.bandwidth_bytes_s is not None else store.stats.bandwidth_bytes_s
    for h in hits:
        producer = h.producer or WeightSummary(h.sender, "?", ())
        ex = exactness(producer, receiver.weights)
        if ex.kind == ExactKind.IDENTICAL:
            return Decision(ShareKind.SAME_MODEL, h, RecomputePlan.none(L), "the receiver's own stored prefix")
        if ex.exact:
            if ex.needs_activation_after_context and not exact_after(at, h.tokens):
                # the stored prefix runs past where the adapter starts acting: only what precedes it is exact
                # (every block boundary of a stored context is a stored prefix too, and so is a context's
                # partial last block, often ending right there: a turn's start is a common invocation)
                cut = store.cut(h, receiver.family, ids[:at]) if at else None
                if cut is None or cut.tokens < max(1, opts.min_hit_fraction * len(ids)):
                    log.info("exact reuse refused: the activation point (%s) lies inside the stored prefix "
                             "(%d tokens)", at, h.tokens)
                    continue
                h = cut
            plan = RecomputePlan.parse(ex.plan or "none", L)
            if plan.fits(h.e_layers):
                return Decision(ShareKind.EXACT, h, plan, ex.reason)
        if not opts.share:
            continue
        prof = profiles.find(receiver.family.digest, h.sender, receiver.identity)
        if prof is None:
            continue
        plan = _choose(prof, opts, h, L, bandwidth, guard.floor(prof, L) if guard else None)
        if not plan.fits(h.e_layers):
            continue
        if plan.is_full_recompute():
            return Decision(ShareKind.MISS, None, plan, "recomputing every layer is predicted fastest over this link")
        return Decision(ShareKind.PROFILED, h, plan, f"profile {prof.name}", prof)
    if refused:
        return Decision(ShareKind.MISS, None, RecomputePlan.all(L), "stored values refused: not authenticated under "
                        "this node's store secret", refused=tuple(refused))
    return Decision(ShareKind.MISS, None, RecomputePlan.all(L), "no usable stored prefix")


def decide_safely(receiver: LoadedModel, store: CacheStore, prompt: PromptTokens, opts: ShareOptions = ShareOptions(),
                  profiles: ProfileIndex | None = None, guard: PlanFloor | None = None) -> Decision:
    """:func:`decide`, but a bad profile or plan makes a miss (full prefill), never a failed request."""
    try:
        return decide(receiver, store, prompt, opts, profiles, guard)
    except DroidspeakError as e:
        log.warning("sharing decision failed (%s); full prefill", e)
        return Decision(ShareKind.MISS, None, RecomputePlan.all(receiver.num_layers), f"decision failed: {e}")
