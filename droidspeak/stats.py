"""Confidence intervals for quality figures: what every eval command prints beside a score.

Scores are per-row (one held-out row, one number); a figure is their mean, and a comparison between two
models or two plans is always made on the same rows. Intervals are percentile bootstraps over rows
(95% by default), resampling the same row indexes for both sides of a paired difference or ratio, with a
fixed seed so that a figure and its interval are reproducible from the saved per-row results.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from .errors import DroidspeakError

REPS = 2000


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval over ``n`` rows."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.low, self.high], "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _bootstrap(n: int, stat: Callable[[list[int]], float], reps: int, seed: int, level: float) -> tuple[float, float]:
    rng = random.Random(seed)
    idx = range(n)
    draws = sorted(stat(rng.choices(idx, k=n)) for _ in range(reps))
    tail = (1 - level) / 2
    return draws[int(tail * reps)], draws[min(reps - 1, int((1 - tail) * reps))]


def _rows(*cols: Sequence[float]) -> int:
    n = len(cols[0])
    if n == 0 or any(len(c) != n for c in cols):
        raise DroidspeakError(f"paired scores need the same rows on both sides, and at least one ({[len(c) for c in cols]})")
    return n


def mean_ci(xs: Sequence[float], reps: int = REPS, seed: int = 0, level: float = 0.95) -> Interval:
    """The mean of per-row scores with its bootstrap interval."""
    n = _rows(xs)
    low, high = _bootstrap(n, lambda ix: sum(xs[i] for i in ix) / n, reps, seed, level)
    return Interval(sum(xs) / n, low, high, n)


def paired_diff_ci(a: Sequence[float], b: Sequence[float], reps: int = REPS, seed: int = 0,
                   level: float = 0.95) -> Interval:
    """mean(a) - mean(b) over the same rows, the rows resampled together."""
    n = _rows(a, b)
    d = [x - y for x, y in zip(a, b)]
    low, high = _bootstrap(n, lambda ix: sum(d[i] for i in ix) / n, reps, seed, level)
    return Interval(sum(d) / n, low, high, n)


def paired_ratio_ci(a: Sequence[float], b: Sequence[float], reps: int = REPS, seed: int = 0,
                    level: float = 0.95) -> Interval | None:
    """mean(a) / mean(b) over the same rows (e.g. a variant's quality over its LoRA's), the rows
    resampled together; None when mean(b) is 0 (a ratio to nothing says nothing). A resample whose
    mean(b) is 0 counts as a ratio of 0 (the conservative side)."""
    n = _rows(a, b)
    if sum(b) == 0:
        return None

    def ratio(ix: list[int]) -> float:
        den = sum(b[i] for i in ix)
        return sum(a[i] for i in ix) / den if den else 0.0
    low, high = _bootstrap(n, ratio, reps, seed, level)
    return Interval(sum(a) / sum(b), low, high, n)


def relative_drop_ci(full: Sequence[float], plan: Sequence[float], reps: int = REPS, seed: int = 0,
                     level: float = 0.95) -> Interval | None:
    """(mean(full) - mean(plan)) / mean(full) over the same rows: a plan's quality drop against the
    receiver's own prefill; None when the full prefill scores 0."""
    r = paired_ratio_ci(plan, full, reps, seed, level)
    return None if r is None else Interval(1 - r.value, 1 - r.high, 1 - r.low, r.n)
