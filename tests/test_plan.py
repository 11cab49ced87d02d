import json

import pytest

from droidspeak.errors import PlanError
from droidspeak.plan import RecomputePlan


def test_parse_forms():
    assert str(RecomputePlan.parse("none", 30)) == "none"
    assert RecomputePlan.parse("all", 30).recomputed_layers == list(range(30))
    p = RecomputePlan.parse("10:14, 20:22", 30)
    assert p.groups == ((10, 14), (20, 22))
    assert p.recomputed_layers == [10, 11, 12, 13, 20, 21]
    assert p.transition_layers == [10, 20]
    assert len(p.reused_layers) == 24
    assert RecomputePlan.parse("5", 30).groups == ((5, 6),)


def test_adjacent_and_overlapping_groups_merge():
    assert RecomputePlan.parse("4:8,8:10", 30).groups == ((4, 10),)
    assert RecomputePlan.parse("6:9,4:7", 30).groups == ((4, 9),)


def test_group_at_layer_zero_needs_no_e():
    p = RecomputePlan.parse("0:5,20:30", 30)
    assert p.transition_layers == [20]
    assert RecomputePlan.all(30).transition_layers == []


@pytest.mark.parametrize("text", ["0:31", "-1:3", "5:5", "9:3", "x", "1:2:3", ""])
def test_bad_plans_are_clear_errors(text):
    with pytest.raises(PlanError) as e:
        RecomputePlan.parse(text, 30)
    assert "\n" not in str(e.value)


def test_direct_construction_validates():
    with pytest.raises(PlanError):
        RecomputePlan(((0, 4), (4, 6)), 30)  # adjacent must be merged
    with pytest.raises(PlanError):
        RecomputePlan(((0, 40),), 30)


def test_profile_plan_and_its_check(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"chosen_plan": "12:20", "sender_identity": "a"}))
    assert RecomputePlan.parse(f"profile:{prof}", 30).groups == ((12, 20),)

    def refuse(profile):
        raise PlanError("profile is for another pair")

    with pytest.raises(PlanError, match="another pair"):
        RecomputePlan.parse(f"profile:{prof}", 30, refuse)
    with pytest.raises(PlanError, match="not found"):
        RecomputePlan.parse(f"profile:{tmp_path}/missing.json", 30)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(PlanError, match="not valid JSON"):
        RecomputePlan.parse(f"profile:{bad}", 30)


def test_one_layer_reused_plans_cover_the_edges():
    L = 30
    first = RecomputePlan.from_groups([(0, 0), (1, L)], L, drop_empty=True)
    last = RecomputePlan.from_groups([(0, L - 1), (L, L)], L, drop_empty=True)
    assert first.reused_layers == [0] and first.transition_layers == [1]
    assert last.reused_layers == [L - 1] and last.transition_layers == []
    with pytest.raises(PlanError):
        RecomputePlan.from_groups([(0, 0), (1, L)], L)
