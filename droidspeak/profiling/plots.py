"""The profiler's two plots: per-unit sensitivity, and the candidates with the frontier and what was verified."""

from __future__ import annotations

from pathlib import Path

from ..sharing.profile import Profile


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sensitivity(profile: Profile, path: Path) -> None:
    plt = _plt()
    sens = profile.sensitivity
    x = [f"{s['layers'][0]}-{s['layers'][1] - 1}" for s in sens]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(range(len(x)), [s["mean_kl"] for s in sens], color="tab:purple", label="mean KL over the answer")
    ax.plot(range(len(x)), [s["first_token_kl"] for s in sens], "o-", color="tab:orange", ms=3, label="first-token KL")
    full_reuse = profile.full_reuse.mean_kl if profile.full_reuse else 0.0
    ax.axhline(full_reuse, color="tab:gray", ls="-.", lw=1, label="full reuse (mean KL)")
    ax.set_xticks(range(len(x)), x, rotation=60, fontsize=7)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("layers reused from the sender (all others recomputed)")
    ax.set_ylabel("KL vs receiver's full prefill (nats)")
    ax.set_title(f"Sensitivity: {profile.sender} -> {profile.receiver} ({profile.rows} rows)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_frontier(profile: Profile, path: Path) -> None:
    plt = _plt()
    cands = profile.candidates
    front = set(profile.frontier)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"single": ("tab:blue", "o"), "two-group": ("tab:green", "s"), "scattered": ("tab:red", "^"),
              "sensitivity": ("tab:gray", "."), "none": ("k", "X"), "all": ("k", "P")}
    for kind, (col, mk) in styles.items():
        pts = [c for c in cands if c.kind == kind]
        if pts:
            ax.scatter([c.cost for c in pts], [(c.mean_kl or 0.0) + 1e-6 for c in pts], c=col, marker=mk, s=14,
                       alpha=0.6, label=kind)
    fr = [c for c in cands if c.plan in front]
    ax.plot([c.cost for c in fr], [(c.mean_kl or 0.0) + 1e-6 for c in fr], "k-", lw=1, label="frontier")
    ax.set_yscale("log")
    ax.set_xlabel("cost (fraction of the receiver's full prefill)")
    ax.set_ylabel("mean KL over the answer (+1e-6)")
    ax.set_title("Candidates (teacher-forced proxy)")
    ax.legend(fontsize=7)
    ver = sorted([c for c in cands if c.verified and c.relative_drop is not None], key=lambda c: c.cost)
    ax2.plot([c.cost for c in ver], [c.relative_drop * 100 for c in ver], "o-", color="tab:blue")
    for c in ver:
        ax2.annotate(c.plan, (c.cost, c.relative_drop * 100), fontsize=6)
    ax2.axhline(profile.budget * 100, color="tab:red", ls="--", lw=1, label=f"budget {profile.budget:.0%}")
    ch = profile.chosen
    if ch is not None:
        ax2.scatter([ch.cost], [(ch.relative_drop or 0.0) * 100], s=80, facecolors="none", edgecolors="tab:red",
                    label=f"chosen {ch.plan}")
    ax2.set_xlabel("cost (fraction of the receiver's full prefill)")
    ax2.set_ylabel(f"quality drop, % ({profile.quality.metric})")
    ax2.set_title("Verified by decoding")
    ax2.legend(fontsize=7)
    fig.suptitle(f"{profile.sender} -> {profile.receiver}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
