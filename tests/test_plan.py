import json

import pytest

from droidspeak.core.plan import RecomputePlan
from droidspeak.errors import PlanError


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


def test_profile_plan_and_bad_files(tmp_path):
    from droidspeak.sharing import Profile

    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"chosen_plan": "12:20", "sender_identity": "a"}))
    assert Profile.load(prof).plan(30).groups == ((12, 20),)
    with pytest.raises(PlanError, match="cannot parse"):  # a plan names layers; a profile is named by the CLI
        RecomputePlan.parse(f"profile:{prof}", 30)
    with pytest.raises(PlanError, match="not found"):
        Profile.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(PlanError, match="not valid JSON"):
        Profile.load(bad)


def test_one_layer_reused_plans_cover_the_edges():
    L = 30
    first = RecomputePlan.from_groups([(0, 0), (1, L)], L, drop_empty=True)
    last = RecomputePlan.from_groups([(0, L - 1), (L, L)], L, drop_empty=True)
    assert first.reused_layers == [0] and first.transition_layers == [1]
    assert last.reused_layers == [L - 1] and last.transition_layers == []
    with pytest.raises(PlanError):
        RecomputePlan.from_groups([(0, 0), (1, L)], L)


# ------------------------------------------------------------------ the typed profile
def _profile_dict(**over):
    d = {"format": "droidspeak-profile/1", "sender": "s", "receiver": "r", "sender_identity": "S" * 32,
         "receiver_identity": "R" * 32, "family": "f" * 16, "chosen_plan": "0:20",
         "frontier": ["none", "10:20", "0:20", "0:24", "0:28"],
         "candidates": [{"plan": p, "cost": c, "top1_agreement": t, "quality": q} for p, c, t, q in
                        [("none", 0.0, 0.5, 0.3), ("10:20", 0.34, 0.8, None), ("0:20", 0.67, 1.0, 1.0),
                         ("0:24", 0.8, 1.0, None), ("0:28", 0.93, 1.0, None), ("all", 1.0, 1.0, 1.0)]],
         "cost_model": {"num_layers": 30, "layer_s_per_token": 1e-4, "kv_bytes_per_token": 1536,
                        "e_bytes_per_token": 2304, "bandwidth_bytes_s": None}}
    return d | over


def test_profile_is_a_typed_value(tmp_path):
    from droidspeak.errors import DroidspeakError
    from droidspeak.sharing import Profile

    f = tmp_path / "p.json"
    f.write_text(json.dumps(_profile_dict()))
    p = Profile.load(f)
    assert p.name == "p.json" and str(p.plan(30)) == "0:20" and p.top1["10:20"] == 0.8 and p.verified["0:20"] == 1.0
    # within budget: the chosen plan, the frontier plans costlier than it, and all; cheapest first
    assert [str(x) for x in p.within_budget(30)] == ["0:20", "0:24", "0:28", "all"]
    assert str(p.wider(p.plan(30))) == "0:24" and str(p.wider(RecomputePlan.parse("0:28", 30))) == "all"
    assert p.wider(RecomputePlan.all(30)) is None
    assert p.transition_layers(30) == set()
    p.check("S" * 32, "R" * 32, "f" * 16)
    with pytest.raises(DroidspeakError, match="another pair or changed weights"):
        p.check("S" * 32, "X" * 32, "f" * 16)
    with pytest.raises(DroidspeakError, match="model family"):
        p.check("S" * 32, "R" * 32, "g" * 16)
    # over a slow link the cheapest plan to predict (fetching least) wins; locally, the cheapest compute
    assert str(p.fastest(30, 4000, None)) == "0:20"


@pytest.mark.parametrize("content,words", [("{not json", "not valid JSON"), ('{"sender": "x"}', "malformed"),
                                           ('{"chosen_plan": "0:2", "candidates": [{"plan": "x", "cost": "y"}]}',
                                            "malformed")])
def test_bad_profile_files_are_one_line(tmp_path, content, words):
    from droidspeak.sharing import Profile, ProfileIndex

    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(PlanError, match=words):
        Profile.load(f)
    assert list(ProfileIndex([tmp_path]).all()) == []  # the index skips it: a miss, never a failed request
    with pytest.raises(PlanError, match="not found"):
        Profile.load(tmp_path / "nope.json")


def test_settings_refuse_unknown_choices(monkeypatch):
    from droidspeak.errors import DroidspeakError
    from droidspeak.serving.config import Settings

    assert Settings.load(overrides={"policy": "bandwidth"}).policy == "bandwidth"
    with pytest.raises(DroidspeakError, match="not one of load, bandwidth, profile"):
        Settings.load(overrides={"policy": "fastest"})
    monkeypatch.setenv("DROIDSPEAK_SHADOW_FRACTION", "half")
    with pytest.raises(DroidspeakError, match="is not a float"):
        Settings.load()


@pytest.mark.parametrize("raw, want", [("1", True), (" TRUE ", True), ("yes", True), ("on", True), (True, True),
                                       ("0", False), ("False", False), ("no", False), ("off", False), (False, False)])
def test_boolean_settings_read_the_usual_spellings(monkeypatch, raw, want):
    from droidspeak.serving.config import Settings

    assert Settings.load(overrides={"share": raw}).share is want
    if isinstance(raw, str):
        monkeypatch.setenv("DROIDSPEAK_PACKED_WEIGHTS", raw)
        assert Settings.load().packed_weights is want


@pytest.mark.parametrize("name, raw", [("share", "abc"), ("share", ""), ("packed_weights", "2"), ("port", "80.5"),
                                       ("port", 80.5), ("port", True), ("max_batch", "eight"), ("ttft_slo_s", False)])
def test_settings_refuse_what_is_not_plainly_their_type(name, raw, tmp_path):
    from droidspeak.errors import DroidspeakError
    from droidspeak.serving.config import Settings

    with pytest.raises(DroidspeakError, match=f"setting {name}=.* is not a"):
        Settings.load(overrides={name: raw})
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({name: raw}))
    with pytest.raises(DroidspeakError, match=f"setting {name}=.* is not a"):  # a config file's value likewise
        Settings.load(str(cfg))
    assert Settings.load(overrides={"port": 8001.0, "max_batch": " 4 "}).port == 8001  # a whole float, a padded int


def test_printed_settings_are_the_loaded_ones(monkeypatch, tmp_path):
    from droidspeak.serving.config import Settings

    monkeypatch.setenv("DROIDSPEAK_SHARE", "off")
    monkeypatch.setenv("DROIDSPEAK_API_KEY", "sk-very-secret")
    cfg = tmp_path / "c.toml"
    cfg.write_text('max_batch = 4\nshare = true\n')
    rows = {n: (v, changed) for n, _, v, changed in Settings.load(str(cfg), {"port": 9000}).values()}
    assert rows["share"] == ("False", True) and rows["max_batch"] == ("4", True) and rows["port"] == ("9000", True)
    assert rows["host"] == ("127.0.0.1", False)
    assert rows["api_key"] == ("(set)", True) and rows["store_secret"] == ("(empty)", False)
    assert not any("sk-very-secret" in v for v, _ in rows.values())


def test_plan_relations():
    a, b = RecomputePlan.parse("10:20", 30), RecomputePlan.parse("8:24", 30)
    assert b.covers(a) and not a.covers(b) and a.covers(a) and a.covers(None)
    assert RecomputePlan.all(30).is_full_recompute() and not b.is_full_recompute()
    assert RecomputePlan.none(30).is_full_reuse() and not RecomputePlan.none(30).is_full_recompute()
    assert b.fits([8]) and not b.fits([10]) and b.fits(None) and RecomputePlan.parse("0:4", 30).fits([])


def test_shipped_profiles_read_back_as_themselves():
    """The typed profile owns the file's format: every shipped profile, written and read again, is itself."""
    from droidspeak.paths import REPO_DIR
    from droidspeak.sharing import Profile

    files = sorted((REPO_DIR / "profiles").glob("*.json"))
    assert files
    for f in files:
        p = Profile.load(f)
        again = Profile.from_dict(p.to_dict(), str(f))
        assert again == p and again.to_dict() == p.to_dict(), f.name
        assert again.costs == p.costs and again.top1 == p.top1 and again.verified == p.verified, f.name
