"""A pair's profile as a typed value, and the one owner of the profile file's format.

A profile binds a (sender, receiver) pair of *weights* (content identities and family) to a recompute
plan chosen within a quality budget, the Pareto frontier it was chosen from, every candidate plan
measured on the way (:class:`Candidate`), and a cost model. ``droidspeak profile`` makes one
(:mod:`droidspeak.profiling`) and writes :meth:`Profile.to_dict`; every reader goes through
:meth:`Profile.load` / :meth:`Profile.from_dict`. A profile is refused for any other pair
(:meth:`Profile.check`) and answers which plan to use for a request: the profile's own, the lowest
predicted TTFT over a link (:meth:`Profile.fastest`), or the paper's load rule (:meth:`Profile.by_load`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.plan import RecomputePlan
from ..errors import DroidspeakError, PlanError

PROFILE_FORMAT = "droidspeak-profile/1"


@dataclass(slots=True)
class Candidate:
    """One plan a profile measured: its cost, the teacher-forced proxy and, once decoded, its quality."""

    plan: str
    units: tuple[int, ...] = ()  # the profiler's units (groups of ``granularity`` layers) it recomputes
    kind: str = ""  # none | single | sensitivity | two-group | scattered | all | exact
    recomputed_layers: int = 0
    groups: int = 0
    transitions: int = 0
    cost: float = 0.0  # relative to the receiver's full prefill (the cost model's)
    first_token_kl: float | None = None
    mean_kl: float | None = None  # over the receiver's own answer, teacher-forced
    top1_agreement: float | None = None  # teacher-forced greedy agreement with the receiver's own answer
    quality: float | None = None  # measured by decoding (verified candidates only)
    relative_drop: float | None = None
    verified: str | None = None  # "decoded" | "by construction"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"units": list(self.units)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        opt = lambda k: None if d.get(k) is None else float(d[k])  # noqa: E731
        return cls(str(d["plan"]), tuple(int(u) for u in d.get("units", ())), str(d.get("kind", "")),
                   int(d.get("recomputed_layers", 0)), int(d.get("groups", 0)), int(d.get("transitions", 0)),
                   float(d.get("cost", 0.0)), opt("first_token_kl"), opt("mean_kl"), opt("top1_agreement"),
                   opt("quality"), opt("relative_drop"), d.get("verified"))


@dataclass(frozen=True, slots=True)
class Quality:
    """How a profile scored quality: ``label-free`` (agreement with the receiver's own answer),
    ``gold`` (a task metric against references) or ``exact`` (identical by construction)."""

    mode: str = "label-free"
    metric: str = "agreement_f1_vs_full_prefill"
    full_prefill: float = 1.0  # the receiver's own score on the rows


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
    """One pair's profile (see the module docstring). Field names are the file's keys."""

    sender: str
    receiver: str
    sender_identity: str
    receiver_identity: str
    family: str
    chosen_plan: str
    exact: bool = False  # the plan was proven exact from the weights, not calibrated
    exactness: dict[str, Any] | None = None  # the proof (:class:`~droidspeak.models.exact.Exactness`), when exact
    rows: int = 0
    context_tokens: dict[str, int] | None = None  # min, max, mean of the calibration rows
    quality: Quality = field(default_factory=Quality)
    budget: float = 0.01
    granularity: int | None = None
    max_new_tokens: int | None = None
    cost_model: CostModel | None = None
    bandwidth_gbps: float | None = None  # the link the cost model assumed (written inside ``cost_model``)
    chosen: Candidate | None = None
    full_reuse: Candidate | None = None
    sensitivity: tuple[dict[str, Any], ...] = ()  # per unit: layers, first-token and mean KL, top-1 agreement
    frontier: tuple[str, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    search: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    wall_s: float = 0.0
    data: dict[str, Any] | None = None  # where the calibration rows came from
    command: str | None = None
    plots: dict[str, str] | None = None
    format: str = PROFILE_FORMAT
    path: str = ""  # the file it was read from (not written)
    # plan -> figure, for every candidate that has it (derived from ``candidates``)
    costs: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    verified: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    top1: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for c in self.candidates:
            self.costs[c.plan] = c.cost
            if c.quality is not None:
                self.verified[c.plan] = c.quality
            if c.top1_agreement is not None:
                self.top1[c.plan] = c.top1_agreement

    # ------------------------------------------------------------------ the file format
    def to_dict(self) -> dict[str, Any]:
        """The profile file's JSON object (``path``, the derived lookups and empty fields are not part of it)."""
        out: dict[str, Any] = {"format": self.format}
        for f in fields(self):
            v = getattr(self, f.name)
            if not f.init or f.name in ("format", "path") or v is None or (f.name == "exact" and not v):
                continue
            if f.name == "cost_model":
                v = v.to_dict() | ({} if self.bandwidth_gbps is None else {"bandwidth_gbps": self.bandwidth_gbps})
            elif f.name == "bandwidth_gbps":
                continue  # written inside the cost model, as the profiler always has
            elif isinstance(v, Candidate):
                v = v.to_dict()
            elif f.name == "candidates":
                v = [c.to_dict() for c in v]
            elif isinstance(v, Quality):
                v = asdict(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str = "") -> "Profile":
        """A profile from its file's JSON object (KeyError, TypeError or ValueError when malformed)."""
        if not isinstance(d, dict) or "chosen_plan" not in d:
            raise KeyError("chosen_plan")
        cand = lambda x: Candidate.from_dict(x) if isinstance(x, dict) else None  # noqa: E731
        q = d.get("quality") or {}
        cm = d.get("cost_model")
        return cls(
            sender=str(d.get("sender", "?")), receiver=str(d.get("receiver", "?")),
            sender_identity=str(d.get("sender_identity", "")), receiver_identity=str(d.get("receiver_identity", "")),
            family=str(d.get("family", "")), chosen_plan=str(d["chosen_plan"]), chosen=cand(d.get("chosen")),
            frontier=tuple(str(x) for x in d.get("frontier", [])),
            candidates=tuple(Candidate.from_dict(c) for c in d.get("candidates", []) if "plan" in c),
            full_reuse=cand(d.get("full_reuse")), cost_model=CostModel.from_dict(cm) if cm else None,
            budget=float(d.get("budget", 0.01)),
            quality=Quality(str(q.get("mode", "label-free")), str(q.get("metric", "agreement_f1_vs_full_prefill")),
                            float(q.get("full_prefill", 1.0))),
            exact=bool(d.get("exact", False)), exactness=d.get("exactness"), rows=int(d.get("rows", 0)),
            context_tokens=d.get("context_tokens"), granularity=d.get("granularity"),
            max_new_tokens=d.get("max_new_tokens"), bandwidth_gbps=(cm or {}).get("bandwidth_gbps"),
            sensitivity=tuple(d.get("sensitivity", [])), search=d.get("search"), notes=tuple(d.get("notes", [])),
            wall_s=float(d.get("wall_s", 0.0)), data=d.get("data"), command=d.get("command"), plots=d.get("plots"),
            format=str(d.get("format", PROFILE_FORMAT)), path=path,
        )

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
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlanError(f"profile {p} is malformed ({type(e).__name__}: {e})") from None

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically (a reader sees the old file or the new one)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(out)
        return out

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
            if len(p.recomputed_layers) > len(plan.recomputed_layers) and p.covers(plan):
                return p
        return None if plan.is_full_recompute() else RecomputePlan.all(plan.num_layers)

    def predicted(self, plan: RecomputePlan, tokens: int, bandwidth_bytes_s: float | None) -> float:
        return self.cost_model.pipelined(plan, tokens, bandwidth_bytes_s) if self.cost_model else float("nan")

    def fastest(self, num_layers: int, tokens: int, bandwidth_bytes_s: float | None,
                stored_e: tuple[int, ...] | None = None, at_least: RecomputePlan | None = None) -> RecomputePlan:
        """Among the plans within budget (whose E were stored, recomputing at least ``at_least``'s
        layers), the lowest predicted TTFT over the link; ties go to the plan that reuses more."""
        cands = [p for p in self.within_budget(num_layers) if p.fits(stored_e) and p.covers(at_least)]
        if not cands:
            return RecomputePlan.all(num_layers)
        if self.cost_model is None:
            return cands[0]
        return min(cands, key=lambda p: (self.predicted(p, tokens, bandwidth_bytes_s), -len(p.reused_layers)))

    def by_load(self, num_layers: int, tokens: int, bandwidth_bytes_s: float | None, stored_e: tuple[int, ...] | None,
                waiting: int, slo_s: float, at_least: RecomputePlan | None = None) -> RecomputePlan:
        """The paper's appendix rule, with transfer time: requests waiting -> the fastest plan within
        budget; none waiting -> the most recomputation whose predicted TTFT still meets ``slo_s``."""
        fastest = self.fastest(num_layers, tokens, bandwidth_bytes_s, stored_e, at_least)
        if waiting > 0 or self.cost_model is None:
            return fastest
        best = fastest
        for p in self.within_budget(num_layers):
            if not p.fits(stored_e):
                continue
            if (len(p.recomputed_layers) > len(best.recomputed_layers) and not p.is_full_recompute()
                    and len(p.recomputed_layers) >= len(fastest.recomputed_layers) and p.covers(at_least)
                    and self.predicted(p, tokens, bandwidth_bytes_s) <= slo_s):
                best = p
        return best

    def transition_layers(self, num_layers: int) -> set[int]:
        """E layers a sender must store for any plan this profile may pick."""
        out: set[int] = set()
        for p in self.within_budget(num_layers):
            out |= set(p.transition_layers)
        return out
