"""The statistics every eval command prints beside a score, on inputs whose answer is known."""

import math
import random

import pytest

from droidspeak.errors import DroidspeakError
from droidspeak.stats import mean_ci, paired_diff_ci, paired_ratio_ci, relative_drop_ci


def test_a_constant_score_has_no_spread():
    ci = mean_ci([0.5] * 40)
    assert (ci.value, ci.low, ci.high, ci.n) == (0.5, 0.5, 0.5, 40)


def test_the_mean_interval_matches_the_normal_approximation_on_many_rows():
    rng = random.Random(1)
    xs = [rng.random() for _ in range(400)]  # uniform: sd = 1/sqrt(12)
    ci = mean_ci(xs)
    half = 1.96 / math.sqrt(12) / math.sqrt(400)
    assert ci.low < ci.value < ci.high
    assert abs((ci.high - ci.low) / 2 - half) < 0.15 * half
    assert mean_ci(xs).to_dict() == ci.to_dict()  # the same rows, the same interval (fixed seed)


def test_a_binary_score_interval_covers_its_rate():
    xs = [1.0] * 30 + [0.0] * 70
    ci = mean_ci(xs)
    assert ci.value == 0.3 and 0.2 <= ci.low < 0.3 < ci.high <= 0.4


def test_a_paired_difference_removes_what_both_sides_share():
    rng = random.Random(2)
    hard = [rng.random() for _ in range(100)]  # row difficulty, shared by both models
    a = [h + 0.1 for h in hard]
    ci = paired_diff_ci(a, hard)
    assert ci.value == pytest.approx(0.1) and ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.1)
    unpaired = mean_ci(a).high - mean_ci(a).low
    assert unpaired > 0.05  # the same gap, read from two separate means, would be lost in the noise
    assert paired_diff_ci(hard, hard).to_dict()["ci95"] == [0.0, 0.0]


def test_ratio_and_relative_drop():
    full = [1.0, 0.0, 1.0, 1.0] * 25
    plan = [1.0, 0.0, 1.0, 0.0] * 25
    r = paired_ratio_ci(plan, full)
    assert r.value == pytest.approx(2 / 3) and r.low < 2 / 3 < r.high
    d = relative_drop_ci(full, plan)
    assert d.value == pytest.approx(1 / 3) and d.low == pytest.approx(1 - r.high) and d.high == pytest.approx(1 - r.low)
    assert relative_drop_ci(full, full).to_dict()["ci95"] == [0.0, 0.0]
    assert paired_ratio_ci(plan, [0.0] * 100) is None


def test_unpaired_or_empty_rows_are_refused():
    with pytest.raises(DroidspeakError):
        paired_diff_ci([1.0, 0.0], [1.0])
    with pytest.raises(DroidspeakError):
        mean_ci([])
