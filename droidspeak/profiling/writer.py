"""Writing profiles: a calibrated one with its plots beside it, or one proven exact from the weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..core.plan import RecomputePlan
from ..models.exact import Exactness
from ..models.loaded import LoadedModel
from ..sharing.profile import Candidate, Profile, Quality
from .plots import plot_frontier, plot_sensitivity


def exact_profile(sender: LoadedModel, receiver: LoadedModel, ex: Exactness) -> Profile:
    """A profile whose plan is proven exact from the weights (no calibration rows, no frontier)."""
    assert ex.plan
    plan = RecomputePlan.parse(ex.plan, receiver.num_layers)
    chosen = Candidate(str(plan), recomputed_layers=len(plan.recomputed_layers), cost=plan.recomputed_fraction,
                       quality=1.0, relative_drop=0.0, verified="by construction")
    return Profile(sender.name, receiver.name, sender.capture_weights.identity, receiver.identity,
                   receiver.family.digest, str(plan), exact=True, exactness=ex.to_dict(),
                   quality=Quality("exact", "identical by construction", 1.0), budget=0.0, chosen=chosen,
                   frontier=(str(plan),), candidates=(chosen,), notes=(ex.reason,))


def write_profile(profile: Profile, out: Path, plots: bool = True) -> tuple[Profile, dict[str, str]]:
    """Write the profile JSON and (when asked) its two plots beside it; the profile as written (it names
    its plots) and the paths."""
    out = Path(out)
    stem = out.with_suffix("")
    files = {"sensitivity": f"{stem}.sensitivity.png", "frontier": f"{stem}.frontier.png"} if plots else {}
    if files:
        profile = replace(profile, plots={k: Path(v).name for k, v in files.items()})
    profile.save(out)
    if files:
        plot_sensitivity(profile, Path(files["sensitivity"]))
        plot_frontier(profile, Path(files["frontier"]))
    return profile, {"profile": str(out)} | files
