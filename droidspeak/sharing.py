"""Where sharing happens: one entry point that serves a request's prefill, for the CLI and the server.

:func:`prefill_steps` is the only way a request's prefill is served. It looks up the longest stored
prefix of the prompt among every producer of the receiver's family (:func:`decide`) and uses it in
one of three ways:

* **same model**: the receiver's own weights wrote it: every layer is reused;
* **exact** (:mod:`droidspeak.exact`): another model's weights that provably give the receiver's
  own cache (an activated adapter and its base; a frozen-bottom fine-tune with plan ``K:L``): the
  proven plan, no profile, no quality check;
* **profiled**: another model through the pair's profile (refused unless it was made for exactly
  those weights), with the plan chosen by policy (the profile's own, the lowest predicted TTFT
  over the link, or the paper's load rule).

With nothing usable the receiver prefills the prompt itself, in chunks between which the server
decodes other requests, and stores its K/V (and the E its peers' plans need) for the others. Every
fault on the way (a bad profile, a damaged entry, a store going away) falls back to computing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, replace
from typing import Literal

from .assemble import CaptureSource, assemble
from .errors import DroidspeakError
from .exact import WeightSummary, activation_point, exact_after, exactness
from .kinds import ExactKind, ShareKind
from .models import LoadedModel
from .partial import DEFAULT_ROOM, finish_prefill, full_prefill
from .plan import RecomputePlan
from .profile import Profile, ProfileIndex
from .prompt import PromptTokens
from .result import PrefillResult, ReuseInfo, Timings
from .sender import capture_steps, run_to_end
from .store.cache import CacheStore, Hit
from .streamed import prefill_from_store

log = logging.getLogger("droidspeak.sharing")
Policy = Literal["load", "bandwidth", "profile"]
POLICIES: tuple[Policy, ...] = ("load", "bandwidth", "profile")


@dataclass(frozen=True, slots=True)
class ShareOptions:
    """How a request's prefill may share (one set of options for the CLI and the server).

    ``policy``: ``profile`` (the profile's chosen plan), ``bandwidth`` (lowest predicted TTFT within
    budget over the link), ``load`` (``bandwidth`` while requests wait, else the most recomputation
    that meets ``slo_s``). ``share=False`` allows no cross-model reuse, exact or profiled: only
    entries its very weights wrote (an activated adapter's captures are its base's, so none). A hit shorter than
    ``min_hit_fraction`` of the prompt (a shared system prompt, say) is not worth its fetches.
    """

    policy: Policy = "bandwidth"
    share: bool = True
    store_on_miss: bool = True
    min_hit_fraction: float = 0.5
    bandwidth_bytes_s: float | None = None  # None: the store's measured bandwidth
    waiting: int = 0  # requests queued behind this one (the load policy)
    slo_s: float = 5.0
    chunk: int | None = None  # prefill a miss in chunks of this many tokens, yielding between them
    room: int = DEFAULT_ROOM  # tokens the cache keeps free for decoding

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise DroidspeakError(f"unknown plan policy '{self.policy}'; known: {', '.join(POLICIES)}")


@dataclass(frozen=True, slots=True)
class Decision:
    """What :func:`decide` found for one request."""

    kind: ShareKind
    hit: Hit | None
    plan: RecomputePlan
    reason: str
    profile: Profile | None = None


class PlanFloor:
    """The narrowest plan allowed per profile (the online quality guard widens it); none by default."""

    def floor(self, profile: Profile, num_layers: int) -> RecomputePlan | None:
        return None


def _choose(prof: Profile, opts: ShareOptions, hit: Hit, L: int, bandwidth: float | None,
            floor: RecomputePlan | None) -> RecomputePlan:
    if opts.policy == "profile":
        plan = prof.plan(L)
        if floor is not None and not set(floor.recomputed_layers) <= set(plan.recomputed_layers):
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
    hits = store.lookup(receiver.family, ids[:-1], num_layers=L)  # at least one token is the receiver's own
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
                # (every block boundary of a stored context is a stored prefix too)
                shorter = (at or 0) // store.block * store.block
                if shorter < max(1, opts.min_hit_fraction * len(ids)):
                    log.info("exact reuse refused: the activation point (%s) lies inside the stored prefix "
                             "(%d tokens)", at, h.tokens)
                    continue
                h = replace(h, tokens=shorter)
            plan = RecomputePlan.parse(ex.plan or "none", L)
            if set(plan.transition_layers) <= set(h.e_layers):
                return Decision(ShareKind.EXACT, h, plan, ex.reason)
        if not opts.share:
            continue
        prof = profiles.find(receiver.family.digest, h.sender, receiver.identity)
        if prof is None:
            continue
        plan = _choose(prof, opts, h, L, bandwidth, guard.floor(prof, L) if guard else None)
        if not set(plan.transition_layers) <= set(h.e_layers):
            continue
        if plan.groups == ((0, L),):
            return Decision(ShareKind.MISS, None, plan, "recomputing every layer is predicted fastest over this link")
        return Decision(ShareKind.PROFILED, h, plan, f"profile {prof.name}", prof)
    return Decision(ShareKind.MISS, None, RecomputePlan.all(L), "no usable stored prefix")


def decide_safely(receiver: LoadedModel, store: CacheStore, prompt: PromptTokens, opts: ShareOptions = ShareOptions(),
                  profiles: ProfileIndex | None = None, guard: PlanFloor | None = None) -> Decision:
    """:func:`decide`, but a bad profile or plan makes a miss (full prefill), never a failed request."""
    try:
        return decide(receiver, store, prompt, opts, profiles, guard)
    except DroidspeakError as e:
        log.warning("sharing decision failed (%s); full prefill", e)
        return Decision(ShareKind.MISS, None, RecomputePlan.all(receiver.num_layers), f"decision failed: {e}")


def needed_e_layers(model: LoadedModel, peers: Iterable[WeightSummary] = (),
                    profiles: ProfileIndex | None = None) -> list[int]:
    """E layers other models need from ``model``'s captures: the transitions of every plan its
    profiles may pick, and the first layer above a frozen bottom it shares with a peer."""
    producer = model.capture_weights
    assert producer is not None
    out: set[int] = set()
    for prof in (profiles or ProfileIndex()).for_sender(model.family.digest, producer.identity):
        try:
            out |= prof.transition_layers(model.num_layers)
        except DroidspeakError:
            continue
    for peer in peers:
        ex = exactness(producer, peer)
        if ex.plan:
            out |= set(RecomputePlan.parse(ex.plan, model.num_layers).transition_layers)
    return sorted(out)


def capture_length(receiver: LoadedModel, ids: list[int], block: int) -> int:
    """Tokens of a miss to prefill as a capture (stored for others when there is a store): the
    block-aligned part of the prompt but its last token, and for an activated adapter no further
    than its activation point (a capture is always its base's cache); the rest runs on top."""
    n = (len(ids) - 1) // block * block
    if receiver.activation is not None:
        at = activation_point(ids, receiver.activation)
        if at is not None:
            n = min(n, at // block * block)
    return n


def prefill_hit(receiver: LoadedModel, store: CacheStore, d: Decision, prompt: PromptTokens,
                opts: ShareOptions = ShareOptions()) -> PrefillResult:
    """The receiver's prefill reusing the decision's stored prefix with its plan."""
    assert d.hit is not None
    res = prefill_from_store(receiver, store, d.hit, d.plan, prompt, room=opts.room, kind=d.kind)
    res.info.reason = d.reason
    res.info.profile = d.profile.name if d.profile else None
    res.info.source = d.profile
    store.stats.bump(f"{d.kind.value}_hits")
    return res


def prefill_miss(receiver: LoadedModel, store: CacheStore | None, prompt: PromptTokens, opts: ShareOptions,
                 peers: Iterable[WeightSummary] = (), profiles: ProfileIndex | None = None,
                 reason: str = "no usable stored prefix") -> Generator[int, None, PrefillResult]:
    """The receiver's own prefill as one pass that both answers and is stored: the first tokens are
    captured in chunks (K/V, and the E its peers need), then the rest runs on top (the same model
    with nothing recomputed is exactly its own full prefill)."""
    ids = prompt.ids
    n = capture_length(receiver, ids, store.block if store is not None else 1)
    if n <= 0:  # nothing worth capturing: the model's own prefill in one step
        res = full_prefill(receiver, ids, opts.room)
        res.info.reason = reason
        return res
    e_layers = needed_e_layers(receiver, peers, profiles) if store is not None else []
    t0 = time.perf_counter()
    cap = yield from capture_steps(receiver, ids[:n], e_layers=e_layers, chunk=opts.chunk)
    t_capture = time.perf_counter() - t0
    at = activation_point(ids, receiver.activation)
    asm = assemble(receiver.surface, ids[:n], RecomputePlan.none(receiver.num_layers), CaptureSource(cap))
    cache, logits, suffix_s = finish_prefill(receiver, asm, ids, opts.room, at)
    info = ReuseInfo(ShareKind.MISS, reason=reason)
    if store is not None:
        info.stored_tokens = store.put(cap)
    return PrefillResult(cache, logits, list(range(receiver.num_layers)), info,
                         Timings(time.perf_counter() - t0, t_capture, suffix_s), at)


def prefill_steps(receiver: LoadedModel, store: CacheStore | None, prompt: PromptTokens,
                  opts: ShareOptions = ShareOptions(), peers: Iterable[WeightSummary] = (),
                  profiles: ProfileIndex | None = None,
                  guard: PlanFloor | None = None) -> Generator[int, None, PrefillResult]:
    """Serve one request's prefill, sharing through ``store`` where it safely can: a generator that
    yields between prefill chunks and returns the :class:`PrefillResult` (the one path for the CLI
    and the server)."""
    reason = "no store"
    if store is not None:
        d = decide_safely(receiver, store, prompt, opts, profiles, guard)
        if d.hit is not None:
            return prefill_hit(receiver, store, d, prompt, opts)
        reason = d.reason
    return (yield from prefill_miss(receiver, store if opts.store_on_miss else None, prompt, opts, peers, profiles,
                                    reason))


def serve_prefill(receiver: LoadedModel, store: CacheStore | None, prompt: PromptTokens,
                  opts: ShareOptions = ShareOptions(), **kw) -> PrefillResult:
    """:func:`prefill_steps` run to its end (for callers that do not interleave other work)."""
    return run_to_end(prefill_steps(receiver, store, prompt, opts, **kw))
