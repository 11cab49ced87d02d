"""The profiler on the tiny random model: exact assembly, the search, the choice, refusals."""

import json

import pytest
import torch

from droidspeak import RecomputePlan, capture, partial_prefill
from droidspeak.core.prompt import PromptTokens
from droidspeak.errors import DroidspeakError
from droidspeak.harness.reuse import parse_plan
from droidspeak.profiling import Profiler, boundaries, plan_of_units, propose_multi, write_profile
from droidspeak.sharing import CostModel, Profile
from droidspeak.testing.tiny import tiny_model, tiny_variant


def _prompts(n=3, ctx=48, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [PromptTokens(tuple(torch.randint(3, 256, (ctx,), generator=g).tolist()),
                         tuple(torch.randint(3, 256, (5,), generator=g).tolist())) for _ in range(n)]


@pytest.fixture(scope="module")
def late_variant(tiny):
    """A fine-tune that changed only layers 3-5: layers 0-2 of both models agree exactly."""
    return tiny_variant(tiny, seed=5, layers=[3, 4, 5])


def test_boundaries_and_units():
    assert boundaries(30, 2)[:3] == [0, 2, 4] and boundaries(30, 2)[-1] == 30 and len(boundaries(30, 2)) == 16
    assert boundaries(7, 3) == [0, 3, 6, 7]
    assert str(plan_of_units((0, 1, 4), boundaries(6, 1))) == "0:2,4:5"
    with pytest.raises(DroidspeakError):
        boundaries(6, 0)


def test_assembled_cache_equals_partial_prefill(tiny, tiny_recv):
    """The profiler's per-start recompute gives exactly what partial_prefill gives for any plan."""
    prompts = _prompts(1)
    prof = Profiler(tiny, tiny_recv, prompts, granularity=1, max_new_tokens=4, progress=False)
    row = prof._prepare(prompts[0], None)
    for spec in ["none", "all", "2:4", "1:3,4:6", "0:1,5:6"]:
        plan = RecomputePlan.parse(spec, 6)
        cap = capture(tiny, list(prompts[0].prefix), e_layers=plan.transition_layers)
        want = partial_prefill(tiny_recv, cap, plan, prompts[0].suffix).logits
        got = prof.surface.forward_tokens(torch.tensor([list(prompts[0].suffix)]),
                                          prof.surface.cache_from(prof._assembly(row, plan).kv))
        assert torch.max(torch.abs(want - got)) <= 1e-5, spec


def test_profile_finds_the_changed_layers(tiny, late_variant):
    """Only layers 3-5 changed: recomputing 3:6 is exact, anything cheaper is not."""
    prof = Profiler(tiny, late_variant, _prompts(), budget=0.01, granularity=1, max_new_tokens=8, progress=False).run()
    p = prof.to_dict()  # the profile file's object: the typed value writes every field the file had
    assert Profile.from_dict(p).to_dict() == p  # and reads back as itself
    assert p["chosen_plan"] == "3:6"
    assert p["chosen"]["relative_drop"] == 0.0 and p["chosen"]["verified"] == "decoded"
    assert p["full_reuse"]["mean_kl"] > 1e-3 and p["full_reuse"]["verified"] == "decoded"
    by_plan = {c["plan"]: c for c in p["candidates"]}
    assert by_plan["3:6"]["mean_kl"] < 1e-8 and by_plan["4:6"]["mean_kl"] > 1e-4
    # every contiguous group, every per-unit sensitivity plan, none and all were measured
    assert len({c["plan"] for c in p["candidates"] if c["groups"] == 1 and c["plan"] != "all"}) == 6 * 7 // 2 - 1
    assert len(p["sensitivity"]) == 6 and p["sensitivity"][0]["mean_kl"] < 1e-8
    assert p["frontier"][0] == "none" and p["frontier"][-1] == "3:6"
    for k in ("sender_identity", "receiver_identity", "family", "cost_model", "wall_s", "budget", "granularity"):
        assert k in p


def test_chosen_plan_holds_when_evaluated_independently(tiny, tiny_recv):
    """The profiler's verified drop, recomputed by ``eval`` (its own captures, partial prefills and
    decoding, none of the profiler's assembled caches) on the same rows, is the same figure."""
    from droidspeak.harness.evaluate import evaluate_plan
    from droidspeak.tasks import Example

    prompts = _prompts(2)
    p = Profiler(tiny, tiny_recv, prompts, budget=0.0, granularity=2, max_new_tokens=6, progress=False).run().to_dict()
    rows = [Example(" ".join(map(str, q.prefix)), " ".join(map(str, q.suffix))) for q in prompts]
    plan = RecomputePlan.parse(p["chosen_plan"], 6)
    ev = evaluate_plan(tiny, tiny_recv, plan, rows, None, max_new_tokens=6, progress=False,
                       prompts=prompts)
    assert ev["relative_drop"] == pytest.approx(p["chosen"]["relative_drop"], abs=1e-9)
    # and full reuse, decoded by both, loses the same on these rows
    none = evaluate_plan(tiny, tiny_recv, RecomputePlan.none(6), rows, None, max_new_tokens=6, progress=False,
                         prompts=prompts)
    assert none["relative_drop"] == pytest.approx(p["full_reuse"]["relative_drop"], abs=1e-9)
    assert none["relative_drop"] > 0  # on this pair full reuse changes answers: the comparison is not vacuous


def test_gold_mode_needs_references(tiny, tiny_recv):
    with pytest.raises(DroidspeakError, match="needs a reference"):
        Profiler(tiny, tiny_recv, _prompts(1), references=[None], metric="f1", progress=False)
    with pytest.raises(DroidspeakError, match="budget"):
        Profiler(tiny, tiny_recv, _prompts(1), budget=1.5, progress=False)


def test_propose_multi_prefers_two_groups_for_bimodal_sensitivity():
    sens = [5.0, 0.0, 0.0, 0.0, 0.0, 4.0]
    props = propose_multi(sens, boundaries(6, 1))
    assert props and props[0][1] in ((0, 5), (0, 4, 5), (0, 1, 5))
    assert all(len(plan_of_units(u, boundaries(6, 1)).groups) > 1 for _, u, _ in props)
    assert propose_multi([1.0, 2.0, 3.0, 2.0, 1.0, 0.5], boundaries(6, 1)) == []  # unimodal: one group wins


def test_frontier_is_monotone():
    from droidspeak.sharing import Candidate

    cs = [Candidate(p, (), "single", 0, 1, 0, cost, mean_kl=kl)
          for p, cost, kl in [("a", 0.1, 1.0), ("b", 0.2, 2.0), ("c", 0.3, 0.5), ("d", 0.4, 0.5), ("e", 0.5, 0.1)]]
    assert [c.plan for c in Profiler.frontier(cs)] == ["a", "c", "e"]


def test_cost_counts_recompute_and_transfers():
    local = CostModel(30, 1e-4, 1536, 2304, None)
    assert local.relative(RecomputePlan.parse("0:6", 30)) == pytest.approx(0.2)
    link = CostModel(30, 1e-4, 1536, 2304, 1e6)
    # same layers recomputed, but 6:12 needs one E transfer that 0:6 does not
    assert link.relative(RecomputePlan.parse("6:12", 30)) > link.relative(RecomputePlan.parse("0:6", 30))
    # two groups need two E transfers
    assert link.relative(RecomputePlan.parse("2:5,8:11", 30)) > link.relative(RecomputePlan.parse("2:8", 30))


def test_profile_refused_for_another_pair_family_or_weights(tmp_path, tiny, late_variant, tiny_recv):
    p = Profiler(tiny, late_variant, _prompts(1), granularity=3, max_new_tokens=4, progress=False).run()
    _, files = write_profile(p, tmp_path / "p.json")
    assert all((tmp_path / f).exists() for f in ("p.json", "p.sensitivity.png", "p.frontier.png")), files
    spec = f"profile:{tmp_path / 'p.json'}"
    assert str(parse_plan(spec, tiny, late_variant)) == p.chosen_plan
    with pytest.raises(DroidspeakError, match="another pair or changed weights"):  # another receiver
        parse_plan(spec, tiny, tiny_recv)
    changed = tiny_variant(late_variant, seed=9, scale=1e-3, layers=[5])  # same shape, new weights
    with pytest.raises(DroidspeakError, match="changed weights"):
        parse_plan(spec, tiny, changed)
    other = tiny_model(seed=0, num_layers=4)
    with pytest.raises(DroidspeakError, match="model family"):
        parse_plan(spec, other, other)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["format"] == "droidspeak-profile/1" and data["plots"]["frontier"] == "p.frontier.png"
