"""The profiler's search space: units of layers, plans made of units, and which multi-group plans to try.

A *unit* is ``granularity`` consecutive layers (the paper profiles at 2); every plan the profiler
measures recomputes whole units. Plans of several groups come from a cost-aware proposal: an
additive predictor over the per-unit sensitivities ranks two-group and scattered plans for each
cost level, and only those that promise more than the best single group of their size are tried.
"""

from __future__ import annotations

import itertools

from ..core.plan import RecomputePlan
from ..errors import DroidspeakError


def boundaries(num_layers: int, granularity: int) -> list[int]:
    """Unit boundaries 0, g, 2g, ..., L (the last unit is shorter when g does not divide L)."""
    if granularity < 1:
        raise DroidspeakError("granularity must be at least 1 layer")
    b = list(range(0, num_layers, granularity))
    return b + [num_layers]


def plan_of_units(units: tuple[int, ...] | frozenset[int], bounds: list[int]) -> RecomputePlan:
    """The plan recomputing the given units (indices into the unit list)."""
    L = bounds[-1]
    return RecomputePlan.from_groups([(bounds[u], bounds[u + 1]) for u in units], L)


def propose_multi(sens: list[float], bounds: list[int], per_size: int = 2) -> list[tuple[float, tuple[int, ...], str]]:
    """Multi-group plans worth measuring, best first: ``(promise, units, kind)``.

    ``sens[u]`` is the quality loss (mean KL) when only unit ``u`` is reused. A plan's predicted
    merit is the sensitivity it recomputes (the sum over its units). For every size k the
    ``per_size`` best two-group plans and the top-k scattered plan are proposed when they promise
    more than the best single group of that size; promise is the margin.
    """
    U = len(sens)
    singles: dict[int, float] = {}
    for a in range(U):
        for b in range(a + 1, U + 1):
            singles[b - a] = max(singles.get(b - a, -1.0), sum(sens[a:b]))
    proposals: list[tuple[float, tuple[int, ...], str]] = []
    for k in range(2, U):
        best_single = singles.get(k, 0.0)
        two = []
        for a1, b1 in itertools.combinations(range(U + 1), 2):
            for a2 in range(b1 + 1, U):  # non-adjacent second group
                b2 = a2 + (k - (b1 - a1))
                if b2 <= a2 or b2 > U:
                    continue
                units = tuple(range(a1, b1)) + tuple(range(a2, b2))
                two.append((sum(sens[u] for u in units), units))
        two.sort(reverse=True)
        for merit, units in two[:per_size]:
            if merit > best_single * 1.0001:
                proposals.append((merit - best_single, units, "two-group"))
        top = tuple(sorted(sorted(range(U), key=lambda u: -sens[u])[:k]))
        if len(plan_of_units(top, bounds).groups) > 1:
            proposals.append((sum(sens[u] for u in top) - best_single + 1e-9, top, "scattered"))
    proposals.sort(key=lambda x: -x[0])
    return proposals
