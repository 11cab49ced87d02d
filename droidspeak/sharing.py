"""Where sharing happens: for one request, find what is stored and decide how to use it.

``serve_prefill`` looks up the longest stored prefix of the prompt among every sender of the
receiver's family. A hit of the receiver itself reuses every layer; a hit of another model is
used through the pair's profile (refused when the profile does not belong to those exact weights)
with the plan chosen for the link's bandwidth; with no usable hit the receiver runs its own full
prefill and stores its K/V and E for the others. Every fault on the way falls back to computing.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DroidspeakError, PlanError
from .models import LoadedModel
from .partial import PrefillResult, full_prefill, partial_prefill
from .paths import REPO_DIR
from .plan import RecomputePlan
from .prompt import PromptTokens
from .sender import capture_steps, run_to_end
from .store.cache import CacheStore, Hit
from .streamed import prefill_from_store

log = logging.getLogger("droidspeak.sharing")


def profile_dirs() -> list[Path]:
    import os

    extra = [Path(p) for p in os.environ.get("DROIDSPEAK_PROFILES", "").split(os.pathsep) if p]
    return extra + [REPO_DIR / "profiles"]


@functools.lru_cache(maxsize=256)
def _read_profile(path: str, _mtime_ns: int, _size: int) -> dict[str, Any] | None:
    """A profile file's content, parsed once per version of the file (keyed by mtime and size)."""
    try:
        prof = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(prof, dict) or "chosen_plan" not in prof:
        return None
    prof["_path"] = path
    return prof


def _profiles(family: str, sender_identity: str):
    """Every readable profile of this family whose sender is exactly these weights.

    Called on every request: files are listed each time (a new or edited profile is seen at once)
    but parsed only when they change."""
    for d in profile_dirs():
        for p in sorted(d.glob("*.json")) if d.is_dir() else []:
            try:
                st = p.stat()
            except OSError:
                continue
            prof = _read_profile(str(p), st.st_mtime_ns, st.st_size)
            if prof is not None and prof.get("family") == family and prof.get("sender_identity") == sender_identity:
                yield prof


def find_profile(sender_identity: str, receiver_identity: str, family: str) -> dict[str, Any] | None:
    """A profile made for exactly these two sets of weights, else None."""
    return next((p for p in _profiles(family, sender_identity) if p.get("receiver_identity") == receiver_identity), None)


def e_layers_for_sender(sender_identity: str, family: str) -> list[int]:
    """E layers other models need from this sender: transitions of every plan its profiles may pick."""
    out: set[int] = set()
    for prof in _profiles(family, sender_identity):
        L = int(prof.get("cost_model", {}).get("num_layers", 0) or 0) or 10_000
        for spec in [prof.get("chosen_plan", "none"), *prof.get("frontier", [])]:
            try:
                out |= set(RecomputePlan.parse(str(spec), L).transition_layers)
            except PlanError:
                pass
    return sorted(out)


def predicted_ttft(plan: RecomputePlan, tokens: int, cost: dict[str, Any], bandwidth_bytes_s: float | None) -> float:
    """E-first pipelined TTFT: the E arrive, groups compute while reused K/V stream in."""
    compute = len(plan.recomputed_layers) * cost["layer_s_per_token"] * tokens
    if not bandwidth_bytes_s:
        return compute
    e_s = len(plan.transition_layers) * cost["e_bytes_per_token"] * tokens / bandwidth_bytes_s
    kv_s = len(plan.reused_layers) * cost["kv_bytes_per_token"] * tokens / bandwidth_bytes_s
    first_e = e_s / max(1, len(plan.transition_layers)) if plan.transition_layers else 0.0
    return first_e + max(compute, e_s - first_e + kv_s)


def bandwidth_aware_plan(profile: dict[str, Any], num_layers: int, tokens: int, bandwidth_bytes_s: float | None,
                         stored_e: tuple[int, ...] | None = None) -> tuple[RecomputePlan, float]:
    """Among the profile's plans within its budget, the one with the lowest predicted TTFT.

    Within budget: the chosen plan and every frontier plan that recomputes more (lower proxy loss
    along the frontier), plus recomputing everything. Plans whose E the sender did not store are
    skipped.
    """
    chosen = RecomputePlan.parse(str(profile["chosen_plan"]), num_layers)
    cost = profile.get("cost_model")
    if not cost:
        return chosen, float("nan")
    cands = {str(chosen): chosen, "all": RecomputePlan.all(num_layers)}
    by_plan = {c["plan"]: c for c in profile.get("candidates", [])}
    ch_cost = by_plan.get(str(chosen), {}).get("cost", 0.0)
    for spec in profile.get("frontier", []):
        if by_plan.get(spec, {}).get("cost", -1) >= ch_cost:
            try:
                cands[spec] = RecomputePlan.parse(spec, num_layers)
            except PlanError:
                continue
    feasible = [p for p in cands.values() if stored_e is None or set(p.transition_layers) <= set(stored_e)]
    best = min(feasible, key=lambda p: (predicted_ttft(p, tokens, cost, bandwidth_bytes_s), -len(p.reused_layers)))
    return best, predicted_ttft(best, tokens, cost, bandwidth_bytes_s)


@dataclass
class Decision:
    kind: str  # same-model | cross-model | miss
    hit: Hit | None
    plan: RecomputePlan
    reason: str
    profile: str | None = None


def load_aware_plan(profile: dict[str, Any], num_layers: int, tokens: int, bandwidth_bytes_s: float | None,
                    stored_e: tuple[int, ...] | None, waiting: int, slo_s: float) -> RecomputePlan:
    """The paper's appendix rule, with transfer time: requests waiting -> the fastest plan within
    budget; none waiting -> the most recomputation whose predicted TTFT still meets ``slo_s``."""
    fastest, _ = bandwidth_aware_plan(profile, num_layers, tokens, bandwidth_bytes_s, stored_e)
    cost = profile.get("cost_model")
    if waiting > 0 or not cost:
        return fastest
    best = fastest
    for spec in profile.get("frontier", []):
        try:
            p = RecomputePlan.parse(spec, num_layers)
        except PlanError:
            continue
        if stored_e is not None and not set(p.transition_layers) <= set(stored_e):
            continue
        if (len(p.recomputed_layers) > len(best.recomputed_layers) and p.groups != ((0, num_layers),)
                and len(p.recomputed_layers) >= len(fastest.recomputed_layers)
                and predicted_ttft(p, tokens, cost, bandwidth_bytes_s) <= slo_s):
            best = p
    return best


def decide(receiver: LoadedModel, store: CacheStore, prompt: PromptTokens | list[int], policy: str = "bandwidth",
           bandwidth_bytes_s: float | None = None, waiting: int = 0, slo_s: float = 5.0,
           share: bool = True, min_hit_fraction: float = 0.5) -> Decision:
    """Pick the hit and plan for a request (see the module docstring).

    ``policy``: ``profile`` (the profile's chosen plan), ``bandwidth`` (lowest predicted TTFT
    within budget), ``load`` (``bandwidth`` while requests wait, else the most recomputation that
    meets ``slo_s``). ``share=False`` allows same-model hits only. A hit shorter than
    ``min_hit_fraction`` of the prompt (a shared system prompt, say) is not worth its fetches: the
    request is prefilled in full and stored whole, so the next one finds all of it.
    """
    L = receiver.num_layers
    ids = prompt.ids if isinstance(prompt, PromptTokens) else list(prompt)
    hits = store.lookup(receiver.family, ids[:-1], num_layers=L)  # at least one token is the receiver's own
    if not share:
        hits = [h for h in hits if h.sender == receiver.identity]
    hits = [h for h in hits if h.tokens >= min_hit_fraction * len(ids)]
    own = next((h for h in hits if h.sender == receiver.identity), None)  # hits come longest first
    for h in hits:
        if own is not None and own.tokens >= h.tokens:  # its own prefix is as long: reuse every layer
            return Decision("same-model", own, RecomputePlan.none(L), "the receiver's own stored prefix")
        prof = find_profile(h.sender, receiver.identity, receiver.family.digest)
        if prof is None:
            continue
        bw = bandwidth_bytes_s if bandwidth_bytes_s is not None else store.stats.bandwidth_bytes_s
        if policy == "bandwidth":
            plan, _ = bandwidth_aware_plan(prof, L, h.tokens, bw, h.e_layers)
        elif policy == "load":
            plan = load_aware_plan(prof, L, h.tokens, bw, h.e_layers, waiting, slo_s)
        else:
            plan = RecomputePlan.parse(str(prof["chosen_plan"]), L)
        if not set(plan.transition_layers) <= set(h.e_layers):
            continue
        if plan.groups == ((0, L),):
            return Decision("miss", None, plan, "recomputing every layer is predicted fastest over this link")
        return Decision("cross-model", h, plan, f"profile {Path(prof['_path']).name}", prof["_path"])
    return Decision("miss", None, RecomputePlan.all(L), "no usable stored prefix")


def decide_safely(receiver: LoadedModel, store: CacheStore, prompt: PromptTokens | list[int], **kw: Any) -> Decision:
    """:func:`decide`, but a bad profile or plan makes a miss (full prefill), never a failed request."""
    try:
        return decide(receiver, store, prompt, **kw)
    except DroidspeakError as e:
        log.warning("sharing decision failed (%s); full prefill", e)
        return Decision("miss", None, RecomputePlan.all(receiver.num_layers), f"decision failed: {e}")


def prefill_hit(receiver: LoadedModel, store: CacheStore, d: Decision, prompt: PromptTokens) -> PrefillResult:
    """The receiver's prefill reusing the decision's stored prefix with its plan."""
    assert d.hit is not None
    res = prefill_from_store(receiver, store, d.hit, d.plan, prompt)
    res.info.update({"kind": d.kind, "reason": d.reason, "profile": d.profile})
    store.stats.bump(f"{d.kind}_hits")
    return res


def full_miss(receiver: LoadedModel, ids: list[int]) -> PrefillResult:
    """A full prefill that stores nothing."""
    res = full_prefill(receiver, ids)
    res.info.update({"kind": "miss", "reused_tokens": 0, "plan": "all"})
    return res


def miss_steps(receiver: LoadedModel, store: CacheStore | None, ids: list[int], n: int, chunk: int | None = None):
    """A miss as one prefill that both answers and is stored: the first ``n`` tokens are captured (K/V
    and the E this model's pairs need), then the rest runs on top (the same model with nothing
    recomputed is exactly its own full prefill). A generator that yields between chunks of
    ``chunk`` tokens and returns the PrefillResult."""
    e_layers = e_layers_for_sender(receiver.identity, receiver.family.digest) if store is not None else []
    t0 = time.perf_counter()
    cap = yield from capture_steps(receiver, ids[:n], e_layers=e_layers, chunk=chunk)
    res = partial_prefill(receiver, cap, RecomputePlan.none(receiver.num_layers), ids[n:])
    res.timings["prefill_s"] = time.perf_counter() - t0
    res.recomputed_layers = list(range(receiver.num_layers))
    res.info.update({"kind": "miss", "reused_tokens": 0, "plan": "all"})
    if store is not None:
        res.info["stored_tokens"] = store.put(cap)
    return res


def serve_prefill(receiver: LoadedModel, store: CacheStore | None, prompt: PromptTokens, store_on_miss: bool = True,
                  policy: str = "bandwidth", bandwidth_bytes_s: float | None = None) -> PrefillResult:
    """The receiver's prefill of ``prompt``, sharing through ``store`` where it safely can."""
    if store is not None:
        d = decide_safely(receiver, store, prompt, policy=policy, bandwidth_bytes_s=bandwidth_bytes_s)
        if d.hit is not None:
            return prefill_hit(receiver, store, d, prompt)
    if store is None or not store_on_miss or not prompt.suffix:
        return full_miss(receiver, prompt.ids)
    return run_to_end(miss_steps(receiver, store, prompt.ids, len(prompt.prefix)))
