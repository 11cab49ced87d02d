"""The online quality guard: a profiled plan keeps earning its trust in production.

A profile is measured once, offline, on calibration rows; traffic drifts. For approximate
cross-model hits (a profiled plan, never an exact one), the server samples a fraction of requests
(``shadow_fraction``) and, when it has nothing better to do, runs the receiver's own full prefill
of the same prompt followed by the tokens the request was served, teacher-forced in one forward
(no second decode). It compares, per generated position, the receiver's own greedy choice with the
plan's (recorded while the request decoded), and the first-token distributions (KL). Per pair and
plan a rolling window keeps those figures.

When a pair's rolling agreement falls below what its profile verified for the plan (the
teacher-forced top-1 agreement the profiler measured, minus ``tolerance``) with at least
``min_samples`` checks in the window, the guard widens the pair's plan to the next one on the
profile's frontier that recomputes more (up to ``all``), logs one line with the figures, and starts
a fresh window for the wider plan. It never narrows a plan by itself.

The contexts the checks used are kept (bounded) so that ``droidspeak profile --from-traffic`` can
re-profile the pair on what users actually send (:class:`~.traffic.TrafficLog`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..core.plan import RecomputePlan
from ..core.prompt import PromptTokens
from ..models.exact import activation_point
from ..models.loaded import LoadedModel
from ..quality import kl_divergence
from ..sharing.decide import PlanFloor
from ..sharing.profile import Profile
from .traffic import TrafficLog

log = logging.getLogger("droidspeak.guard")


@dataclass(frozen=True, slots=True)
class GuardSettings:
    shadow_fraction: float = 0.02  # share of profiled hits checked (0: off)
    shadow_tokens: int = 16  # generated tokens compared per check
    window: int = 32  # checks kept per pair and plan
    min_samples: int = 8  # checks needed before the guard may act
    tolerance: float = 0.05  # how far below the profile's verified agreement the live one may fall
    seed: int = 0


@dataclass(slots=True)
class ShadowJob:
    """A served request to check against the receiver's own prefill."""

    receiver: str  # the hosted model's name
    sender: str  # identity whose cache was reused
    profile: Profile
    plan: str
    prompt: PromptTokens
    served: list[int]  # the tokens the request was served (its first N)
    plan_choices: list[int]  # the plan path's greedy choice at each served position
    first_logits: torch.Tensor  # the plan path's logits for the first generated token
    context_tokens: int = 0


@dataclass(slots=True)
class Check:
    agreement: float  # share of positions where the receiver's own greedy choice equals the plan's
    first_token_kl: float
    at: float = field(default_factory=time.time)


@dataclass(slots=True)
class PairState:
    """What the guard knows of one (sender, receiver) pair."""

    receiver: str
    sender: str
    profile: Profile
    plan: RecomputePlan  # the narrowest plan currently allowed (the floor)
    verified: float  # the profile's teacher-forced agreement for ``plan``
    window: deque = field(default_factory=deque)
    checks: int = 0
    widened: list[dict] = field(default_factory=list)  # the history: from, to, figures, time

    def live(self) -> float | None:
        return sum(c.agreement for c in self.window) / len(self.window) if self.window else None

    def live_kl(self) -> float | None:
        return sum(c.first_token_kl for c in self.window) / len(self.window) if self.window else None


def verified_agreement(profile: Profile, plan: RecomputePlan) -> float:
    """The teacher-forced top-1 agreement the profiler measured for ``plan`` (1.0 for ``all``)."""
    if plan.is_full_recompute():
        return 1.0
    return profile.top1.get(str(plan), 1.0)


class QualityGuard(PlanFloor):
    """Samples profiled hits, checks them when idle, widens plans that drift (see the module docstring)."""

    def __init__(self, settings: GuardSettings = GuardSettings(), traffic: TrafficLog | None = None):
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.pairs: dict[tuple[str, str], PairState] = {}  # (sender identity, receiver identity)
        self.jobs: deque[ShadowJob] = deque(maxlen=64)
        self.traffic = traffic
        self._lock = threading.Lock()
        self.on_check = lambda job, check, state: None  # metrics hook
        self.on_widen = lambda state, old, new: None

    # ------------------------------------------------------------------ the sharing path asks
    def floor(self, profile: Profile, num_layers: int) -> RecomputePlan | None:
        st = self.pairs.get((profile.sender_identity, profile.receiver_identity))
        if st is None or st.profile.path != profile.path:
            return None
        return st.plan

    def state(self, profile: Profile, receiver: str, sender: str, num_layers: int) -> PairState:
        key = (profile.sender_identity, profile.receiver_identity)
        st = self.pairs.get(key)
        if st is None or st.profile.path != profile.path:  # a new or re-written profile starts afresh
            plan = profile.plan(num_layers)
            st = PairState(receiver, sender, profile, plan, verified_agreement(profile, plan),
                           deque(maxlen=self.settings.window))
            self.pairs[key] = st
        return st

    # ------------------------------------------------------------------ sampling
    def sample(self) -> bool:
        return self.settings.shadow_fraction > 0 and self.rng.random() < self.settings.shadow_fraction

    def submit(self, job: ShadowJob) -> None:
        with self._lock:
            self.jobs.append(job)

    def pending(self) -> bool:
        return bool(self.jobs)

    def next_job(self) -> ShadowJob | None:
        with self._lock:
            return self.jobs.popleft() if self.jobs else None

    # ------------------------------------------------------------------ the check
    def check_steps(self, job: ShadowJob, receiver: LoadedModel, chunk: int | None) -> Iterator[None]:
        """Run one check as a generator that yields between chunks of the receiver's own prefill (the
        engine advances it only while no real request waits or prefills)."""
        surface = receiver.surface
        ids = job.prompt.ids + job.served[:-1]
        n_prompt = len(job.prompt.ids)
        at = activation_point(job.prompt.ids, receiver.activation)
        cache = surface.new_cache()
        step = chunk or len(ids)
        with torch.inference_mode():
            head = n_prompt - 1  # every prompt token but the last, in chunks
            for i in range(0, head, step):
                surface.forward(torch.tensor([ids[i:min(i + step, head)]]), cache, 1, at)
                yield
            keep = len(ids) - head  # the last prompt token and the served tokens: one forward
            logits = surface.forward(torch.tensor([ids[head:]]), cache, keep, at)
        own = logits.argmax(-1).tolist()  # own greedy choice at the first generated position and after
        m = min(len(own), len(job.plan_choices))
        agree = sum(int(a == b) for a, b in zip(own[:m], job.plan_choices[:m])) / max(1, m)
        check = Check(agree, kl_divergence(logits[0], job.first_logits))
        self.record(job, check, receiver.num_layers)

    def record(self, job: ShadowJob, check: Check, num_layers: int) -> None:
        st = self.state(job.profile, job.receiver, job.sender, num_layers)
        if job.plan != str(st.plan):  # served under a plan the guard has since widened: not this window's
            return
        st.window.append(check)
        st.checks += 1
        self.on_check(job, check, st)
        if self.traffic is not None:
            self.traffic.keep(job)
        live = st.live()
        s = self.settings
        if live is not None and len(st.window) >= s.min_samples and live < st.verified - s.tolerance:
            wider = st.profile.wider(st.plan)
            if wider is None:
                return
            old = st.plan
            entry = {"from": str(old), "to": str(wider), "live_agreement": live, "verified": st.verified,
                     "first_token_kl": st.live_kl(), "checks": len(st.window), "at": time.time()}
            log.warning("quality guard: %s <- %s: live agreement %.3f over %d checks < verified %.3f - %.2f "
                        "(first-token KL %.3g); plan widened %s -> %s", st.receiver, st.sender[:12], live,
                        len(st.window), st.verified, s.tolerance, st.live_kl() or 0.0, old, wider)
            st.widened.append(entry)
            st.plan, st.verified = wider, verified_agreement(st.profile, wider)
            st.window.clear()
            self.on_widen(st, old, wider)

    # ------------------------------------------------------------------ status
    def status(self) -> list[dict]:
        return [{"receiver": st.receiver, "sender": st.sender, "profile": st.profile.name,
                 "profile_plan": st.profile.chosen_plan, "current_plan": str(st.plan),
                 "verified_agreement": st.verified, "live_agreement": st.live(), "live_first_token_kl": st.live_kl(),
                 "checks_in_window": len(st.window), "checks": st.checks, "widened": st.widened}
                for st in self.pairs.values()]
