"""Training's loss: the requests packed in one row over the context's cache give each request the
loss, and the gradients, of its own forward over that context."""

from __future__ import annotations

import copy

import pytest
import torch

from droidspeak.models.surface import ModelSurface
from droidspeak.training.adapters import AdapterKind, _requests_loss, context_cache, lora_config

INVOCATION = [5, 6, 7]


def _peft(tiny, kind: str):
    from peft import get_peft_model

    ak = AdapterKind("top", 3) if kind == "top" else AdapterKind(kind)  # type: ignore[arg-type]
    model = get_peft_model(copy.deepcopy(tiny.model), lora_config(ak, 4, 8, tiny.num_layers, INVOCATION))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained adapter's B is not zero: the A's gradients are not either
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _requests():
    g = torch.Generator().manual_seed(11)
    out = []
    for q_len, a_len in [(6, 5), (9, 2), (4, 7), (7, 1)]:  # unequal lengths: the packing's edges matter
        q = INVOCATION + torch.randint(8, 256, (q_len,), generator=g).tolist()
        a = torch.randint(8, 256, (a_len,), generator=g).tolist()
        out.append((q, a))
    return out


def _context(model, ids, kind):
    return context_cache(model, ids, alora=kind == "alora")


def _one_by_one(model, ids, requests, kind):
    """Each request alone after the context (its own forward), its answer's mean cross-entropy."""
    losses = []
    for q, a in requests:
        surface = ModelSurface(model)
        cache = surface.fork_cache(_context(model, ids, kind))
        kw = {"alora_offsets": [len(q) + len(a)]} if kind == "alora" else {}
        logits = model(input_ids=torch.tensor([q + a]), cache=cache, use_cache=True, **kw).logits[0]
        logp = torch.log_softmax(logits[len(q) - 1:-1].float(), dim=-1)
        losses.append(-logp.gather(-1, torch.tensor(a).unsqueeze(-1)).mean())
    return torch.stack(losses).mean()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.fixture(scope="module")
def windowed():
    """Models with sliding-window layers: Gemma 3 (sliding and full layers) and a Mistral sliding on every layer;
    the 64-token context crosses their 24-token window."""
    from droidspeak.testing.tiny import SLIDING_WINDOW, tiny_model

    return {"gemma3": tiny_model(arch="gemma3"), "mistral": tiny_model(arch="mistral", sliding_window=SLIDING_WINDOW)}


@pytest.mark.parametrize("kind", ["alora", "lora", "top", "alora@gemma3", "lora@mistral"])
def test_packed_requests_loss_and_gradients_equal_each_request_alone(tiny, windowed, tiny_ids, kind):
    kind, _, arch = kind.partition("@")
    model = _peft(windowed[arch] if arch else tiny, kind)
    model.train()
    requests = _requests()
    packed = _requests_loss(model, _context(model, tiny_ids, kind), ModelSurface(model), requests,
                            alora=kind == "alora")
    packed.backward()
    g_packed = _grads(model)
    model.zero_grad(set_to_none=True)
    alone = _one_by_one(model, tiny_ids, requests, kind)
    alone.backward()
    g_alone = _grads(model)
    assert torch.allclose(packed, alone, atol=1e-5), (packed.item(), alone.item())
    assert g_packed.keys() == g_alone.keys() and g_packed
    for name in g_packed:
        assert torch.allclose(g_packed[name], g_alone[name], atol=1e-5, rtol=1e-4), name
    if kind != "alora":  # gradients reach the adapter's weights below the requests, through the context
        assert any(g.abs().sum() > 0 for n, g in g_packed.items() if "layers.3." in n)


def test_packed_requests_keep_to_their_own_block(tiny, tiny_ids):
    """Changing one request's tokens leaves every other request's loss unchanged."""
    model = _peft(tiny, "alora")
    requests = _requests()
    with torch.no_grad():
        cache = _context(model, tiny_ids, "alora")
        surface = ModelSurface(model)
        first = _requests_loss(model, cache, surface, requests[1:], alora=True)
        q, a = requests[0]
        for q0 in (q, INVOCATION + [200] * (len(q) - len(INVOCATION))):
            both = _requests_loss(model, cache, surface, [(q0, a)] + requests[1:], alora=True)
            only = _requests_loss(model, cache, surface, [(q0, a)], alora=True)
            assert torch.allclose(both, (only + 3 * first) / 4, atol=1e-5)


@pytest.mark.parametrize("kind", ["alora", "lora", "top"])
def test_training_lowers_the_loss_and_an_activated_adapter_keeps_the_base_context(tiny, tiny_ids, kind):
    """A few steps of `train_adapter` on one context fit its requests (the loss falls), train the adapter's
    weights only, and leave an activated adapter's context cache the base's, bit for bit (what makes it exact)."""
    from droidspeak.testing.tiny import tiny_model
    from droidspeak.training.adapters import train_adapter

    base = tiny_model(0)
    before = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    ids = tiny_ids[:48]
    ak = AdapterKind("top", 3) if kind == "top" else AdapterKind(kind)  # type: ignore[arg-type]
    model, losses, _ = train_adapter(base, [(ids, _requests())] * 12, ak, rank=4, alpha=8, lr=3e-2, seed=0, warmup=2,
                                     progress=False, invocation=INVOCATION)
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0], losses
    after = dict(model.named_parameters())
    kept = {n.replace(".base_layer", ""): p for n, p in model.get_base_model().named_parameters() if "lora_" not in n}
    assert kept.keys() == before.keys()  # the base's own weights are untouched; the adapter's were trained
    assert all(torch.equal(kept[n], p) for n, p in before.items())
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in after.items())
    with torch.no_grad():
        own = model(input_ids=torch.tensor([ids]), use_cache=True).cache
        with model.disable_adapter():
            theirs = model(input_ids=torch.tensor([ids]), use_cache=True).cache
    same = [torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) for a, b in zip(own.layers, theirs.layers)]
    want = {"alora": [True] * 6, "lora": [False] * 6, "top": [True] * 3 + [False] * 3}[kind]
    assert same == want, same
