"""A pair's profile as a typed value: what ``droidspeak profile`` measured, and how plans are chosen from it.

A profile binds a (sender, receiver) pair of *weights* (content identities and family) to a recompute
plan chosen within a quality budget, the Pareto frontier it was chosen from, and a cost model. It is
read from the JSON file the profiler writes (:meth:`Profile.load`), refused for any other pair
(:meth:`Profile.check`), and answers which plan to use for a request: the profile's own, the lowest
predicted TTFT over a link (:meth:`Profile.fastest`), or the paper's load rule (:meth:`Profile.by_load`).

:class:`ProfileIndex` finds the profiles of a pair among the profile folders (``DROIDSPEAK_PROFILES``
and the repository's ``profiles/``), parsing each file once per version.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DroidspeakError, PlanError
from .paths import REPO_DIR
from .plan import RecomputePlan

PROFILE_FORMAT = "droidspeak-profile/1"


@dataclass(frozen=True, slots=True)
class CostModel:
    """Predicted prefill time of a plan: recomputed layers plus the bytes it fetches.

    ``layer_s_per_token``: the receiver's compute time per layer per context token (measured).
    ``bandwidth_bytes_s``: the link the sender's caches come over; ``None`` means they are local.
    """

    num_layers: int
    layer_s_per_token: float
    kv_bytes_per_token: int  # one layer's K and V for one token
    e_bytes_per_token: int  # one E for one token
    bandwidth_bytes_s: float | None

    def seconds(self, plan: RecomputePlan, tokens: int) -> float:
        """Fetch and compute added (no overlap assumed): the profiler's cost axis."""
        compute = len(plan.recomputed_layers) * self.layer_s_per_token * tokens
        if not self.bandwidth_bytes_s:
            return compute
        fetched = len(plan.reused_layers) * self.kv_bytes_per_token + len(plan.transition_layers) * self.e_bytes_per_token
        return compute + fetched * tokens / self.bandwidth_bytes_s

    def relative(self, plan: RecomputePlan) -> float:
        """Cost as a fraction of the receiver's full prefill (all layers computed, nothing fetched)."""
        return self.seconds(plan, 1) / (self.num_layers * self.layer_s_per_token)

    def pipelined(self, plan: RecomputePlan, tokens: int, bandwidth_bytes_s: float | None) -> float:
        """E-first pipelined TTFT: the first E arrives, then groups compute while the rest streams in."""
        compute = len(plan.recomputed_layers) * self.layer_s_per_token * tokens
        if not bandwidth_bytes_s:
            return compute
        e_s = len(plan.transition_layers) * self.e_bytes_per_token * tokens / bandwidth_bytes_s
        kv_s = len(plan.reused_layers) * self.kv_bytes_per_token * tokens / bandwidth_bytes_s
        first_e = e_s / max(1, len(plan.transition_layers)) if plan.transition_layers else 0.0
        return first_e + max(compute, e_s - first_e + kv_s)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostModel":
        return cls(int(d["num_layers"]), float(d["layer_s_per_token"]), int(d["kv_bytes_per_token"]),
                   int(d["e_bytes_per_token"]), d.get("bandwidth_bytes_s"))

    def to_dict(self) -> dict[str, Any]:
        return {"num_layers": self.num_layers, "layer_s_per_token": self.layer_s_per_token,
                "kv_bytes_per_token": self.kv_bytes_per_token, "e_bytes_per_token": self.e_bytes_per_token,
                "bandwidth_bytes_s": self.bandwidth_bytes_s}


@dataclass(frozen=True, slots=True)
class Profile:
    """One pair's profile (see the module docstring)."""

    path: str
    sender: str
    receiver: str
    sender_identity: str
    receiver_identity: str
    family: str
    chosen_plan: str
    frontier: tuple[str, ...] = ()
    costs: dict[str, float] = field(default_factory=dict)  # plan -> relative cost, for every candidate
    verified: dict[str, float] = field(default_factory=dict)  # plan -> quality measured by decoding
    top1: dict[str, float] = field(default_factory=dict)  # plan -> teacher-forced top-1 agreement (the proxy)
    cost: CostModel | None = None
    budget: float = 0.01
    quality_mode: str = "label-free"
    exact: bool = False  # the plan was proven exact from the weights, not calibrated

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        """Read a profile file; a missing, unreadable or malformed one is a one-line :class:`PlanError`."""
        p = Path(path).expanduser()
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise PlanError(f"profile not found: {p}") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PlanError(f"profile {p} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(data, str(p))
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"profile {p} is malformed ({type(e).__name__}: {e})") from None

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str = "") -> "Profile":
        if not isinstance(d, dict) or "chosen_plan" not in d:
            raise KeyError("chosen_plan")
        cands = d.get("candidates", [])
        return cls(
            path=path, sender=str(d.get("sender", "?")), receiver=str(d.get("receiver", "?")),
            sender_identity=str(d.get("sender_identity", "")), receiver_identity=str(d.get("receiver_identity", "")),
            family=str(d.get("family", "")), chosen_plan=str(d["chosen_plan"]),
            frontier=tuple(str(x) for x in d.get("frontier", [])),
            costs={str(c["plan"]): float(c["cost"]) for c in cands if "plan" in c and "cost" in c},
            verified={str(c["plan"]): float(c["quality"]) for c in cands if c.get("quality") is not None},
            top1={str(c["plan"]): float(c["top1_agreement"]) for c in cands if c.get("top1_agreement") is not None},
            cost=CostModel.from_dict(d["cost_model"]) if d.get("cost_model") else None,
            budget=float(d.get("budget", 0.01)), quality_mode=str((d.get("quality") or {}).get("mode", "label-free")),
            exact=bool(d.get("exact", False)),
        )

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else f"{self.sender}__{self.receiver}"

    # ------------------------------------------------------------------ binding to weights
    def check(self, sender_identity: str, receiver_identity: str, family: str, sender: str = "sender",
              receiver: str = "receiver") -> None:
        """Refuse (one line) unless the profile was made for exactly these weights and family."""
        if self.family != family:
            raise DroidspeakError(
                f"profile was made for model family {self.family[:16]}, not {receiver}'s ({family[:16]}): its layers "
                "do not correspond")
        for role, want, got, named in (("sender", self.sender_identity, sender_identity, sender),
                                       ("receiver", self.receiver_identity, receiver_identity, receiver)):
            if want != got:
                their = self.sender if role == "sender" else self.receiver
                raise DroidspeakError(
                    f"profile was made for {role} {their} ({want[:12]}), not {named} ({got[:12]}): another pair or "
                    "changed weights; re-run `droidspeak profile` for this pair")

    # ------------------------------------------------------------------ plans
    def plan(self, num_layers: int) -> RecomputePlan:
        return RecomputePlan.parse(self.chosen_plan, num_layers)

    def within_budget(self, num_layers: int) -> list[RecomputePlan]:
        """The plans the profile vouches for: the chosen one, every frontier plan that recomputes more
        (lower loss along the frontier), and recomputing everything. Cheapest first."""
        chosen = self.plan(num_layers)
        out = {str(chosen): chosen}
        floor = self.costs.get(str(chosen), 0.0)
        for spec in self.frontier:
            if self.costs.get(spec, -1.0) >= floor:
                try:
                    out[spec] = RecomputePlan.parse(spec, num_layers)
                except PlanError:
                    continue
        out["all"] = RecomputePlan.all(num_layers)
        return sorted(out.values(), key=lambda p: (self.costs.get(str(p), p.recomputed_fraction),
                                                     len(p.recomputed_layers)))

    def wider(self, plan: RecomputePlan) -> RecomputePlan | None:
        """The next plan within budget that recomputes more than ``plan`` (None past ``all``)."""
        for p in self.within_budget(plan.num_layers):
            if len(p.recomputed_layers) > len(plan.recomputed_layers) and set(plan.recomputed_layers) <= set(
                    p.recomputed_layers):
                return p
        return None if plan.groups == ((0, plan.num_layers),) else RecomputePlan.all(plan.num_layers)

    def predicted(self, plan: RecomputePlan, tokens: int, bandwidth_bytes_s: float | None) -> float:
        return self.cost.pipelined(plan, tokens, bandwidth_bytes_s) if self.cost else float("nan")

    def fastest(self, num_layers: int, tokens: int, bandwidth_bytes_s: float | None,
                stored_e: tuple[int, ...] | None = None, at_least: RecomputePlan | None = None) -> RecomputePlan:
        """Among the plans within budget (whose E were stored, recomputing at least ``at_least``'s
        layers), the lowest predicted TTFT over the link; ties go to the plan that reuses more."""
        cands = [p for p in self.within_budget(num_layers)
                 if (stored_e is None or set(p.transition_layers) <= set(stored_e))
                 and (at_least is None or set(at_least.recomputed_layers) <= set(p.recomputed_layers))]
        if not cands:
            return RecomputePlan.all(num_layers)
        if self.cost is None:
            return cands[0]
        return min(cands, key=lambda p: (self.predicted(p, tokens, bandwidth_bytes_s), -len(p.reused_layers)))

    def by_load(self, num_layers: int, tokens: int, bandwidth_bytes_s: float | None, stored_e: tuple[int, ...] | None,
                waiting: int, slo_s: float, at_least: RecomputePlan | None = None) -> RecomputePlan:
        """The paper's appendix rule, with transfer time: requests waiting -> the fastest plan within
        budget; none waiting -> the most recomputation whose predicted TTFT still meets ``slo_s``."""
        fastest = self.fastest(num_layers, tokens, bandwidth_bytes_s, stored_e, at_least)
        if waiting > 0 or self.cost is None:
            return fastest
        best = fastest
        for p in self.within_budget(num_layers):
            if stored_e is not None and not set(p.transition_layers) <= set(stored_e):
                continue
            if (len(p.recomputed_layers) > len(best.recomputed_layers) and p.groups != ((0, num_layers),)
                    and len(p.recomputed_layers) >= len(fastest.recomputed_layers)
                    and (at_least is None or set(at_least.recomputed_layers) <= set(p.recomputed_layers))
                    and self.predicted(p, tokens, bandwidth_bytes_s) <= slo_s):
                best = p
        return best

    def transition_layers(self, num_layers: int) -> set[int]:
        """E layers a sender must store for any plan this profile may pick."""
        out: set[int] = set()
        for p in self.within_budget(num_layers):
            out |= set(p.transition_layers)
        return out


# --------------------------------------------------------------------------- finding profiles

def profile_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("DROIDSPEAK_PROFILES", "").split(os.pathsep) if p]
    return extra + [REPO_DIR / "profiles"]


@functools.lru_cache(maxsize=512)
def _parsed(path: str, _mtime_ns: int, _size: int) -> Profile | None:
    """A profile file, parsed once per version (keyed by mtime and size); None when unreadable."""
    try:
        return Profile.load(path)
    except PlanError:
        return None


class ProfileIndex:
    """The profiles in the profile folders, listed afresh on every lookup (a new or edited profile
    is seen at once) but parsed only when a file changes."""

    def __init__(self, dirs: list[Path] | None = None):
        self._dirs = dirs

    def all(self) -> Iterator[Profile]:
        for d in self._dirs if self._dirs is not None else profile_dirs():
            for p in sorted(d.glob("*.json")) if d.is_dir() else []:
                try:
                    st = p.stat()
                except OSError:
                    continue
                prof = _parsed(str(p), st.st_mtime_ns, st.st_size)
                if prof is not None:
                    yield prof

    def for_sender(self, family: str, sender_identity: str) -> Iterator[Profile]:
        return (p for p in self.all() if p.family == family and p.sender_identity == sender_identity)

    def find(self, family: str, sender_identity: str, receiver_identity: str) -> Profile | None:
        """A profile made for exactly these two sets of weights, else None."""
        return next((p for p in self.for_sender(family, sender_identity) if p.receiver_identity == receiver_identity),
                    None)
