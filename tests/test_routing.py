"""The router's lean path (base layer plus one low-rank product a layer) against PEFT's own forward, on tiny models."""

import copy

import pytest
import torch

from droidspeak.testing.tiny import tiny_fleet


@pytest.fixture()
def fleet(tiny):
    base, models = tiny_fleet(tiny, {"al": "alora", "plain": "lora", "top": "top"})
    return base, models


def _peft_calls(router, monkeypatch) -> list[int]:
    """Counts the calls of PEFT's own LoRA forward (the class's, which the lean path skips)."""
    cls = type(router.layers[0])
    calls = [0]
    orig = cls.forward

    def counted(self, *a, **k):
        calls[0] += 1
        return orig(self, *a, **k)

    monkeypatch.setattr(cls, "forward", counted)
    return calls


def _want(peft, adapter, ids, cache_ids):
    """PEFT's own logits of ``ids`` after ``cache_ids`` (the adapter set the PEFT way; None: disabled)."""
    with torch.inference_mode():
        if adapter is None:
            with peft.disable_adapter():
                return peft(input_ids=torch.tensor([cache_ids + ids])).logits[0, -len(ids):]
        peft.set_adapter(adapter)
        return peft(input_ids=torch.tensor([cache_ids + ids])).logits[0, -len(ids):]


def test_lean_forward_equals_peft_and_skips_it(fleet, monkeypatch):
    """Each model alone, over a prefix it does not act on, a suffix it acts on in full: the lean path's
    logits equal PEFT's forward of that adapter, and PEFT's forward never ran for them."""
    base, models = fleet
    peft = base.model
    g = torch.Generator().manual_seed(3)
    ctx, tail = torch.randint(8, 256, (20,), generator=g).tolist(), torch.randint(8, 256, (5,), generator=g).tolist()
    for name, m in [(None, base)] + list(models.items()):
        s = m.surface
        cache = s.new_cache(64)
        with torch.inference_mode():
            s.forward(torch.tensor([ctx]), cache, 1, activation_at=len(ctx))  # activated: acts on none of these
            calls = _peft_calls(s.router, monkeypatch)
            got = s.forward(torch.tensor([tail]), cache, len(tail), activation_at=len(ctx))  # ... on all of these
        monkeypatch.undo()
        assert calls[0] == 0, name
        if name == "al":  # an activated adapter acts from its activation on: PEFT's own, with the offsets
            peft.set_adapter("al")
            with torch.inference_mode():
                want = peft(input_ids=torch.tensor([ctx + tail]), alora_offsets=[len(tail)]).logits[0, -len(tail):]
        else:
            want = _want(peft, name, tail, ctx)
        assert torch.max(torch.abs(got - want)) <= 1e-4, name


def test_mixed_rows_each_get_their_own_adapter(fleet):
    """A batch whose rows are the base and each adapter: every row's logits equal that model's own forward."""
    base, models = fleet
    peft = base.model
    ids = torch.randint(8, 256, (4, 9), generator=torch.Generator().manual_seed(4))
    rows = [None, "al", "plain", "top"]
    router = base.surface.router
    with torch.inference_mode(), router.route(rows, [0, 9, 0, 0], 9):
        got = base.surface.lm(input_ids=ids).logits
    for i, name in enumerate(rows):
        if name == "al":
            peft.set_adapter("al")
            with torch.inference_mode():
                want = peft(input_ids=ids[i:i + 1], alora_offsets=[9]).logits[0]
        else:
            want = _want(peft, name, ids[i].tolist(), [])
        assert torch.max(torch.abs(got[i] - want)) <= 1e-4, name


def test_partial_activation_and_gradients_go_through_peft(fleet, monkeypatch):
    """A prompt that invokes an activated adapter part-way, any forward recording gradients, and a router switched
    off the lean path run PEFT's forward."""
    base, models = fleet
    s = models["al"].surface
    calls = _peft_calls(s.router, monkeypatch)
    with torch.inference_mode():
        s.forward(torch.tensor([[9, 10, 5, 6, 7, 11]]), s.new_cache(16), 1, activation_at=2)
    assert calls[0] > 0
    calls[0] = 0
    with torch.enable_grad():
        models["plain"].surface.forward(torch.tensor([[9, 10]]), models["plain"].surface.new_cache(8))
    assert calls[0] > 0
    calls[0] = 0
    s.router.lean = False  # a benchmark's switch: PEFT's own forward for every route
    try:
        with torch.inference_mode():
            models["plain"].surface.forward(torch.tensor([[9, 10]]), models["plain"].surface.new_cache(8))
    finally:
        s.router.lean = True
    assert calls[0] > 0


def test_a_deep_copy_routes_its_own_layers(fleet):
    """Copying a routed module copies its router: the copy's adapter weights are the copy's, the original keeps its own."""
    base, models = fleet
    from droidspeak.models.routing import Router

    twin = copy.deepcopy(base.model)
    with torch.no_grad():
        for n, p in twin.named_parameters():
            if "lora_B" in n:
                p.zero_()  # the copy's adapters now do nothing
    router = Router.of(twin)
    copied_layers = {id(m) for m in twin.modules()}
    assert router is not base.surface.router and router.layers
    assert all(id(m) in copied_layers for m in router.layers)  # the copy's own layers, none of the original's
    ids = torch.tensor([[9, 10, 11, 12]])
    with torch.inference_mode():
        with router.route(["plain"], None, 4):
            copied = twin(input_ids=ids).logits
        with twin.disable_adapter():
            plain_base = twin(input_ids=ids).logits
        with base.surface.router.route(["plain"], None, 4):
            original = base.model(input_ids=ids).logits
    assert torch.equal(copied, plain_base)
    assert torch.max(torch.abs(original - _want(base.model, "plain", ids[0].tolist(), []))) <= 1e-4
    assert not torch.allclose(original, copied)


def test_an_adapter_the_lean_path_does_not_do_runs_peft(tiny, monkeypatch):
    """DoRA (and biases, embeddings, other dtypes) keep PEFT's own arithmetic: its forward runs, and the
    routed logits equal PEFT's."""
    from peft import LoraConfig, get_peft_model

    from droidspeak.models.routing import Router

    peft = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=4, lora_alpha=8, use_dora=True,
                                                                target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    peft.eval()
    lm = peft.base_model.model
    router = Router.of(lm)
    calls = _peft_calls(router, monkeypatch)
    ids = torch.tensor([[9, 10, 11, 12]])
    with torch.inference_mode(), router.route(["default"], None, 4):
        got = lm(input_ids=ids).logits
    assert calls[0] > 0
    monkeypatch.undo()
    with torch.inference_mode():
        want = peft(input_ids=ids).logits
    assert torch.max(torch.abs(got - want)) <= 1e-5
