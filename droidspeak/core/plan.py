"""Recompute plans: which layers the receiver recomputes, and so where it needs the sender's E.

A plan is one or more half-open groups ``[s, e)`` of layers. Layers inside a group are recomputed
with the receiver's weights, starting from the sender's E (the hidden state entering layer ``s``);
every other layer reuses the sender's K/V. A group that starts at layer 0 needs no E: the input to
layer 0 is the receiver's own embedding of the tokens, a table lookup that costs nothing to redo.

Text form: ``none``, ``all``, ``S:E[,S:E...]`` (a bare ``S`` means ``S:S+1``). The command line
also takes ``profile:PATH`` and ``exact``, which name a plan through a profile or the weights
(:func:`droidspeak.harness.reuse.parse_plan`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import PlanError


@dataclass(frozen=True, slots=True)
class RecomputePlan:
    """Disjoint, sorted, non-adjacent half-open layer groups, valid for ``num_layers`` layers."""

    groups: tuple[tuple[int, int], ...]
    num_layers: int

    def __post_init__(self) -> None:
        prev_end = -1
        for s, e in self.groups:
            if not (0 <= s < e <= self.num_layers):
                raise PlanError(f"layer group {s}:{e} is outside the model's layers 0:{self.num_layers}")
            if s <= prev_end:
                raise PlanError("layer groups must be sorted, disjoint and not adjacent (merge them)")
            prev_end = e

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_groups(cls, groups: list[tuple[int, int]], num_layers: int,
                    drop_empty: bool = False) -> "RecomputePlan":
        """Sort and merge overlapping or adjacent groups, then validate.

        With ``drop_empty``, empty groups (``s == e``) are ignored instead of refused.
        """
        merged: list[list[int]] = []
        for s, e in sorted(groups):
            if drop_empty and s == e:
                continue
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        return cls(tuple((s, e) for s, e in merged), num_layers)

    @classmethod
    def none(cls, num_layers: int) -> "RecomputePlan":
        return cls((), num_layers)

    @classmethod
    def all(cls, num_layers: int) -> "RecomputePlan":
        return cls(((0, num_layers),), num_layers)

    @classmethod
    def parse(cls, text: str, num_layers: int) -> "RecomputePlan":
        """Parse ``none``, ``all`` or ``S:E[,S:E]``."""
        t = text.strip().lower()
        if t == "none":
            return cls.none(num_layers)
        if t == "all":
            return cls.all(num_layers)
        groups = []
        for part in t.split(","):
            part = part.strip()
            try:
                if ":" in part:
                    a, b = part.split(":", 1)
                    groups.append((int(a), int(b)))
                else:
                    groups.append((int(part), int(part) + 1))
            except ValueError:
                raise PlanError(
                    f"cannot parse plan '{text}': use none, all, S:E[,S:E...], profile:PATH or exact"
                ) from None
        return cls.from_groups(groups, num_layers)

    # ---------------------------------------------------------------- derived views
    @property
    def recomputed_layers(self) -> list[int]:
        return [layer for s, e in self.groups for layer in range(s, e)]

    @property
    def reused_layers(self) -> list[int]:
        rec = set(self.recomputed_layers)
        return [layer for layer in range(self.num_layers) if layer not in rec]

    @property
    def transition_layers(self) -> list[int]:
        """Layers where the receiver switches from reuse to recompute: it needs the sender's E there."""
        return [s for s, _ in self.groups if s > 0]

    @property
    def recomputed_fraction(self) -> float:
        return len(self.recomputed_layers) / self.num_layers

    def is_full_reuse(self) -> bool:
        """Nothing recomputed: every layer's K/V is the sender's."""
        return not self.groups

    def is_full_recompute(self) -> bool:
        """Every layer recomputed: the receiver's own prefill, nothing reused."""
        return self.groups == ((0, self.num_layers),)

    def covers(self, other: "RecomputePlan | None") -> bool:
        """This plan recomputes at least every layer ``other`` recomputes (any plan covers None)."""
        return other is None or set(other.recomputed_layers) <= set(self.recomputed_layers)

    def fits(self, e_layers: Iterable[int] | None) -> bool:
        """Every E this plan needs is among ``e_layers`` (None: whatever it needs is at hand)."""
        return e_layers is None or set(self.transition_layers) <= set(e_layers)

    def __str__(self) -> str:
        if not self.groups:
            return "none"
        if self.is_full_recompute():
            return "all"
        return ",".join(f"{s}:{e}" for s, e in self.groups)

