"""The correctness contract of partial prefill, on the tiny random model (fp32)."""

import pytest
import torch

from droidspeak import RecomputePlan, capture, full_prefill, partial_prefill
from droidspeak.core.decode import greedy
from droidspeak.errors import DroidspeakError, IncompatibleModelsError, PlanError
from droidspeak.testing.tiny import tiny_model

ATOL = 1e-4
SUFFIX = [11, 12, 13, 14, 15]


def _generate(model, ids, n):
    out = model.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("suffix", [SUFFIX, []], ids=["with-suffix", "prompt-is-prefix"])
def test_all_layers_recomputed_equals_receiver_full_prefill(tiny, tiny_recv, tiny_ids, suffix):
    cap = capture(tiny, tiny_ids, e_layers=RecomputePlan.all(6).transition_layers)
    full = full_prefill(tiny_recv, tiny_ids + suffix)
    part = partial_prefill(tiny_recv, cap, RecomputePlan.all(6), suffix, assemble_all=True)  # layer by layer
    assert torch.max(torch.abs(full.logits - partial_prefill(tiny_recv, cap, RecomputePlan.all(6), suffix).logits)) <= ATOL
    assert torch.max(torch.abs(full.logits - part.logits)) <= ATOL
    assert part.cache.get_seq_length() == len(tiny_ids) + len(suffix)
    # and the sender's cache really differs from the receiver's: the test is not vacuous
    none = partial_prefill(tiny_recv, cap, RecomputePlan.none(6), suffix)
    assert torch.max(torch.abs(full.logits - none.logits)) > 100 * ATOL


@pytest.mark.parametrize("plan", ["none", "0:2", "2:4", "1:3,4:6", "5:6"])
@pytest.mark.parametrize("suffix", [SUFFIX, []], ids=["with-suffix", "prompt-is-prefix"])
def test_same_model_any_plan_equals_full_prefill(tiny, tiny_ids, plan, suffix):
    p = RecomputePlan.parse(plan, 6)
    cap = capture(tiny, tiny_ids, e_layers=p.transition_layers)
    full = full_prefill(tiny, tiny_ids + suffix)
    part = partial_prefill(tiny, cap, p, suffix)
    assert torch.max(torch.abs(full.logits - part.logits)) <= ATOL


@pytest.mark.parametrize("suffix", [SUFFIX, []], ids=["with-suffix", "prompt-is-prefix"])
@pytest.mark.parametrize("case", ["all-recomputed", "same-model-none"])
def test_greedy_after_partial_equals_generate(tiny, tiny_recv, tiny_ids, suffix, case):
    sender, receiver, plan = (tiny, tiny_recv, "all") if case == "all-recomputed" else (tiny, tiny, "none")
    p = RecomputePlan.parse(plan, 6)
    cap = capture(sender, tiny_ids, e_layers=p.transition_layers)
    part = partial_prefill(receiver, cap, p, suffix, assemble_all=True)
    got = greedy(receiver, part, 12)
    want = _generate(receiver, tiny_ids + suffix, 12)
    assert len(set(want)) > 2, "degenerate decoding would make this test vacuous"
    assert got == want


def test_partial_plan_differs_from_both_extremes(tiny, tiny_recv, tiny_ids):
    """A middle plan on a real pair is neither full reuse nor full prefill: it mixes both."""
    cap = capture(tiny, tiny_ids, e_layers=[2])
    full = full_prefill(tiny_recv, tiny_ids + SUFFIX).logits
    mid = partial_prefill(tiny_recv, cap, RecomputePlan.parse("2:4", 6), SUFFIX).logits
    none = partial_prefill(tiny_recv, cap, RecomputePlan.none(6), SUFFIX).logits
    assert not torch.allclose(mid, full, atol=ATOL) and not torch.allclose(mid, none, atol=ATOL)


def test_recompute_starts_from_sender_e(tiny, tiny_recv, tiny_ids):
    """Corrupting the sender's E at the transition layer must change the result (E is really used)."""
    cap = capture(tiny, tiny_ids, e_layers=[3])
    a = partial_prefill(tiny_recv, cap, RecomputePlan.parse("3:6", 6), SUFFIX).logits
    cap.e[3] = cap.e[3] * 0.5
    b = partial_prefill(tiny_recv, cap, RecomputePlan.parse("3:6", 6), SUFFIX).logits
    assert not torch.allclose(a, b)


def test_capture_shapes(tiny, tiny_ids):
    cap = capture(tiny, tiny_ids, e_layers=[0, 4])
    k, v = cap.kv[2]
    assert k.shape == v.shape == (1, 2, len(tiny_ids), 16)  # [batch, kv_heads, n, head_dim]
    assert cap.e[4].shape == (1, len(tiny_ids), 64)  # [batch, n, hidden]
    assert set(cap.e) == {0, 4} and cap.sender_identity == tiny.identity
    assert cap.nbytes() == sum(cap.kv_nbytes(l) for l in range(6)) + cap.e_nbytes(0) + cap.e_nbytes(4)


def test_missing_e_is_a_clear_error(tiny, tiny_recv, tiny_ids):
    cap = capture(tiny, tiny_ids, e_layers=[])
    with pytest.raises(DroidspeakError, match=r"lacks e\[2\]"):
        partial_prefill(tiny_recv, cap, RecomputePlan.parse("2:4", 6), SUFFIX)


def test_other_family_is_refused(tiny, tiny_ids):
    other = tiny_model(seed=3, num_layers=6, rope_theta=99.0)
    cap = capture(tiny, tiny_ids)
    with pytest.raises(IncompatibleModelsError, match="RoPE"):
        partial_prefill(other, cap, RecomputePlan.all(6), SUFFIX)


def test_plan_outside_layer_range_is_refused(tiny, tiny_ids):
    with pytest.raises(PlanError, match="outside"):
        RecomputePlan.parse("4:9", tiny.num_layers)
    cap = capture(tiny, tiny_ids)
    with pytest.raises(DroidspeakError, match="plan is for 30 layers"):
        partial_prefill(tiny, cap, RecomputePlan.none(30), SUFFIX)


ARCH_CASES = {"mistral": {}, "qwen2": {}, "qwen3": {}, "gemma3": {}, "mistral-sliding": {"sliding_window": 24}}


def _arch_pair(case):
    from droidspeak.testing.tiny import tiny_variant

    arch = case.split("-")[0]
    sender = tiny_model(seed=0, arch=arch, **ARCH_CASES[case])
    return sender, tiny_variant(sender, seed=1)


@pytest.mark.parametrize("case", list(ARCH_CASES))
def test_other_architectures_keep_both_equivalences(case, tiny_ids):
    """Every supported architecture (sliding windows, per-kind RoPE, scaled embeddings, q/k norms
    included): all recomputed == the receiver's own prefill; same model, any plan == its prefill."""
    sender, receiver = _arch_pair(case)
    assert sender.family.architecture.lower().startswith(case.split("-")[0])
    cap = capture(sender, tiny_ids, e_layers=[2])
    for suffix in (SUFFIX, []):
        full_r = full_prefill(receiver, tiny_ids + suffix).logits
        all_r = partial_prefill(receiver, cap, RecomputePlan.all(6), suffix, assemble_all=True).logits
        assert torch.max(torch.abs(full_r - all_r)) <= ATOL
        full_s = full_prefill(sender, tiny_ids + suffix).logits
        for plan in ("none", "2:4"):
            got = partial_prefill(sender, cap, RecomputePlan.parse(plan, 6), suffix).logits
            assert torch.max(torch.abs(full_s - got)) <= ATOL, (case, plan, len(suffix))
        # the receiver's own cache really differs from the sender's: not vacuous
        assert torch.max(torch.abs(full_r - partial_prefill(receiver, cap, RecomputePlan.none(6), suffix).logits)) > 1e-3
    # and a Llama of the same shapes is another family
    assert not tiny_model(seed=0, arch="llama").family == sender.family


@pytest.mark.parametrize("case", list(ARCH_CASES))
@pytest.mark.parametrize("which", ["all-recomputed", "same-model-none"])
def test_other_architectures_greedy_after_partial_equals_generate(case, which, tiny_ids):
    sender, receiver = _arch_pair(case)
    if which == "same-model-none":
        receiver = sender
    plan = RecomputePlan.all(6) if which == "all-recomputed" else RecomputePlan.none(6)
    cap = capture(sender, tiny_ids, e_layers=[])
    part = partial_prefill(receiver, cap, plan, SUFFIX, assemble_all=True)
    got = greedy(receiver, part, 12)
    want = _generate(receiver, tiny_ids + SUFFIX, 12)
    assert len(set(want)) > 2 and got == want


def test_sliding_window_family_differs_by_window():
    a = tiny_model(seed=0, arch="mistral", sliding_window=24)
    b = tiny_model(seed=0, arch="mistral", sliding_window=32)
    from droidspeak.models.family import compatibility

    v = compatibility(a.family, b.family)
    assert not v.ok and "attention layout" in v.reason
    assert tiny_model(seed=0, arch="llama").family.attention == ""  # full attention everywhere: no layout field


def test_inconsistent_capture_is_refused(tiny, tiny_recv, tiny_ids):
    cap = capture(tiny, tiny_ids, e_layers=[2])
    k, v = cap.kv[4]
    cap.kv[4] = (k[:, :, :-1], v[:, :, :-1])  # one token short, as a truncated store entry would be
    with pytest.raises(DroidspeakError, match=r"kv\[4\] has shape"):
        partial_prefill(tiny_recv, cap, RecomputePlan.parse("2:3", 6), SUFFIX)


def test_chunked_capture_matches_one_pass(tiny, tiny_ids):
    one = capture(tiny, tiny_ids, e_layers="all")
    chunked = capture(tiny, tiny_ids, e_layers="all", chunk=20)
    for layer in range(6):
        assert torch.allclose(one.kv[layer][0], chunked.kv[layer][0], atol=1e-5)
        assert torch.allclose(one.e[layer], chunked.e[layer], atol=1e-5)


def test_in_place_cache_appends_without_copying_what_is_there(tiny, tiny_ids):
    """The receiver's cache: reused K/V written once into preallocated buffers; later tokens land
    in place (the buffer keeps its address), and attention sees only the filled part."""
    from droidspeak.models.surface import InPlaceLayer

    res = full_prefill(tiny, tiny_ids, room=8)
    layer = res.cache.layers[0]
    assert isinstance(layer, InPlaceLayer) and layer.get_seq_length() == len(tiny_ids)
    ptr = layer._k.data_ptr()
    got = greedy(tiny, res, 6)
    assert layer._k.data_ptr() == ptr and layer.get_seq_length() == len(tiny_ids) + 5
    assert layer.keys.shape[2] == layer.get_seq_length()  # the view attention reads: no padding
    assert got == _generate(tiny, tiny_ids, 6)
    with pytest.raises(RuntimeError, match="cache full"):
        layer.update(torch.zeros(1, 2, 10, 16), torch.zeros(1, 2, 10, 16))


def test_decode_layout_keeps_weights_and_identity():
    """Projection weights kept transposed for decoding: the same values, the same digests, a tied
    embedding still tied."""
    import torch

    from droidspeak.models.layout import relayout
    from droidspeak.models.loaded import summarize
    from droidspeak.testing.tiny import tiny_model

    m = tiny_model(seed=3)
    before = summarize(m.model, m.family)
    relayout(m.model)
    head, emb = m.model.lm_head.weight, m.model.model.embed_tokens.weight
    assert head.data_ptr() == emb.data_ptr() and head.stride() == (1, head.shape[0])  # [in, out] storage
    state = {k: v.clone() for k, v in m.model.state_dict().items()}
    relayout(m.model)  # twice changes nothing
    assert summarize(m.model, m.family) == before
    assert all(torch.equal(state[k], v) for k, v in m.model.state_dict().items())


def test_decode_layout_splits_one_row_and_packs_a_few(monkeypatch):
    """A relaid projection given one row runs as a batched product split over the threads; 2 to
    SPLIT_MAX_ROWS rows run on the weight packed for oneDNN; a prefill's many rows take the one matrix
    product; the same values to rounding every way. Without packing, a few rows split too."""
    import torch

    from droidspeak.models.layout import SPLIT_MAX_ROWS, SplitLinear, can_pack, relayout

    if not can_pack():
        pytest.skip("this PyTorch build has no oneDNN")
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Linear(96, 33, bias=False), torch.nn.Linear(33, 8))
    xs = {n: torch.randn(n, 1, 64) for n in (1, 3, SPLIT_MAX_ROWS, 40)}
    calls: list = []
    bmm, packed_op = torch.bmm, torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(("split", a[0].shape)) or bmm(*a))
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda x, *a: calls.append(("packed", x.shape[0])) or packed_op(x, *a), raising=False)
    for pack in (True, False):
        with torch.no_grad():
            want = {n: torch.nn.functional.linear(torch.nn.functional.linear(
                torch.nn.functional.linear(x, lin[0].weight, lin[0].bias), lin[1].weight), lin[2].weight, lin[2].bias)
                for n, x in xs.items()}
            relayout(lin, threads=2, packed=pack)
            assert [type(m) for m in lin] == [SplitLinear] * 3
            assert [m.parts for m in lin] == [2, 2, 1]  # 33 inputs do not split in two: the plain product
            assert all(("_packed" in m.__dict__) == pack for m in lin)
            for n, x in xs.items():
                calls.clear()
                got = lin(x)
                assert got.shape == want[n].shape
                if n == 1 or (not pack and n <= SPLIT_MAX_ROWS):
                    assert calls == [("split", (2, n, 32)), ("split", (2, n, 48))], (pack, n)
                elif n <= SPLIT_MAX_ROWS:
                    assert calls == [("packed", n)] * 3, n
                else:
                    assert calls == [], n
                assert torch.allclose(got, want[n], atol=1e-5), (pack, n)


def test_packed_weights_follow_the_weight_and_never_take_gradients():
    """A weight changed in place (or replaced) is packed again before its next few-row product, a deep
    copy of a relaid module packs its own, and a forward that records gradients gets the autograd product."""
    import copy

    import torch

    from droidspeak.models.layout import can_pack, relayout

    if not can_pack():
        pytest.skip("this PyTorch build has no oneDNN")
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    relayout(lin, threads=2, packed=True)
    x = torch.randn(4, 64)
    with torch.no_grad():
        before = lin(x)
        lin.weight.mul_(2)
        assert torch.allclose(lin(x), 2 * before - lin.bias, atol=1e-5)  # not the stale packing
        lin.weight = torch.nn.Parameter(torch.zeros(32, 64))
        assert torch.allclose(lin(x), lin.bias.expand(4, -1))
        twin = copy.deepcopy(lin)
        twin.bias.add_(1)
        assert torch.allclose(twin(x), lin(x) + 1) and twin.__dict__["_packed"].weight is twin.weight
    y = lin(x)
    y.sum().backward()
    assert lin.bias.grad is not None and torch.allclose(lin.bias.grad, torch.full((32,), 4.0))
