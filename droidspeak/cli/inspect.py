"""Commands that look, and change nothing: ``models``, ``compat``, ``status``."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..errors import DroidspeakError
from .common import emit, table


def describe_models() -> list[dict[str, Any]]:
    """Every available model: name, kind, parent, family, identity, and which others it shares
    caches with exactly (by :func:`droidspeak.models.exact.exactness`, from the weights)."""
    from ..models import adapter_summary, load_model, registry
    from ..models.exact import WeightSummary, exactness

    specs = registry()
    rows: list[dict[str, Any]] = []
    summaries: dict[str, tuple[WeightSummary, WeightSummary, str]] = {}  # name -> (own, its captures', family)
    bases = {name: load_model(name) for name, spec in specs.items() if spec.kind.value == "base"}
    for name, b in bases.items():
        rows.append({"name": name, "kind": "base", "parent": None, "family": b.family.digest, "identity": b.identity,
                     "description": specs[name].description})
        summaries[name] = (b.weights, b.weights, b.family.digest)
    for spec in specs.values():
        if not spec.is_adapter or spec.parent not in bases:
            continue
        assert spec.path is not None
        parent = bases[spec.parent]
        s = adapter_summary(spec.path, parent.weights)
        rows.append({"name": spec.name, "kind": spec.kind.value, "parent": spec.parent, "family": parent.family.digest,
                     "identity": s.identity, "description": spec.description, "task": spec.task})
        summaries[spec.name] = (s, parent.weights if s.activation else s, parent.family.digest)
    for row in rows:
        mine, _, fam = summaries[row["name"]]
        row["cache_compatible"] = [
            {"with": other} | exactness(captures, mine).to_dict()
            for other, (_, captures, their_fam) in summaries.items()
            if other != row["name"] and their_fam == fam and exactness(captures, mine).exact
        ]
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = describe_models()
    text = table([[r["name"], r["kind"], r["parent"] or "-", r["family"], r["identity"][:16],
                   ", ".join(f"{c['with']} ({c['plan']})" for c in r["cache_compatible"]) or "-"] for r in rows],
                 ["name", "kind", "parent", "family", "identity", "reads exactly the caches of (plan)"])
    emit(args, rows, text)
    return 0


def cmd_compat(args: argparse.Namespace) -> int:
    from ..models import load_model, resolve

    resolve(args.sender), resolve(args.receiver)  # a mistyped name is refused before the model stack is imported
    from ..harness.reuse import pair_exactness
    from ..models.family import compatibility

    a, b = load_model(args.sender), load_model(args.receiver)
    v = compatibility(a.family, b.family)
    ex = pair_exactness(a, b) if v.ok else None
    data = {"sender": a.name, "receiver": b.name, "ok": v.ok, "reason": v.reason,
            "sender_identity": a.identity, "receiver_identity": b.identity, "family": a.family.digest,
            "exact": ex.to_dict() if ex else None}
    if not v.ok:
        text = f"{a.name} -> {b.name}: {v.reason}"
    elif ex is not None and ex.exact:
        text = (f"{a.name} -> {b.name}: may share caches; exact ({ex.kind.value}, plan {ex.plan}): {ex.reason}"
                + ("; holds for requests whose activation point lies after the shared context"
                   if ex.needs_activation_after_context else ""))
    else:
        text = f"{a.name} -> {b.name}: may share caches, through a profile (not exact: {ex.reason if ex else '-'})"
    emit(args, data, text)
    return 0 if v.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    """Ask a running server how every pair shares: plan in force, verified and live agreement."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(args.url.rstrip("/") + "/v1/droidspeak/pairs")
    key = args.api_key or os.environ.get("DROIDSPEAK_API_KEY")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.loads(resp.read())["data"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        raise DroidspeakError(f"cannot read {req.full_url}: {e}") from None
    fmt = lambda x: "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))  # noqa: E731
    rows = [[d["sender"], d["receiver"], d["kind"], d.get("profile_plan") or "-", d["current_plan"],
             fmt(d.get("verified_agreement")), fmt(d.get("live_agreement")), str(d.get("checks", 0)),
             str(len(d.get("widened") or []))] for d in data]
    emit(args, data, table(rows, ["sender", "receiver", "kind", "profile plan", "plan now", "verified", "live",
                                  "checks", "widened"]) if rows else "no pairs share on this server")
    return 0


def register(add) -> None:
    add("models", "list every available model: name, kind, parent, family, identity", cmd_models)

    sp = add("compat", "say whether two models may share caches, and why not", cmd_compat)
    sp.add_argument("--sender", required=True, help="registered name, HF model dir or PEFT adapter dir")
    sp.add_argument("--receiver", required=True, help="registered name, HF model dir or PEFT adapter dir")

    sp = add("status", "how a running server's pairs share: plans in force, verified and live agreement", cmd_status)
    sp.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    sp.add_argument("--api-key", help="bearer key (default: DROIDSPEAK_API_KEY)")
