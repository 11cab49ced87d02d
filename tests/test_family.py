import dataclasses

import pytest

from droidspeak.models.family import FamilyFingerprint, compatibility, fingerprint
from droidspeak.testing.tiny import tiny_model, tiny_variant


def test_same_family_may_share(tiny, tiny_recv):
    assert tiny.family == tiny_recv.family
    v = compatibility(tiny.family, tiny_recv.family)
    assert v.ok and v.reason == ""


@pytest.mark.parametrize("field,value,words", [
    ("num_layers", 7, "layer count"),
    ("hidden_size", 128, "hidden size"),
    ("num_heads", 8, "attention heads"),
    ("num_kv_heads", 4, "KV heads"),
    ("head_dim", 32, "head dim"),
    ("rope", '{"rope_theta": 500000.0}', "RoPE"),
    ("vocab_size", 999, "vocabulary"),
    ("tokenizer_hash", "other", "tokenizer"),
    ("architecture", "MistralForCausalLM", "architecture"),
])
def test_any_difference_refuses_with_reason(tiny, field, value, words):
    other = dataclasses.replace(tiny.family, **{field: value})
    v = compatibility(tiny.family, other)
    assert not v.ok
    assert words in v.reason and "\n" not in v.reason
    assert other.digest != tiny.family.digest


def test_fingerprint_roundtrip(tiny):
    d = tiny.family.to_dict()
    assert FamilyFingerprint.from_dict(d) == tiny.family
    assert d["digest"] == tiny.family.digest


def test_rope_scaling_is_part_of_family():
    a = tiny_model(0)
    b = tiny_model(0, rope_theta=500000.0)
    assert not compatibility(a.family, b.family).ok


def test_identity_is_content_not_name(tiny):
    same = tiny_model(seed=0)
    assert same.identity == tiny.identity  # same weights, same identity
    other = tiny_model(seed=5)
    assert other.identity != tiny.identity
    # same name, different weights -> different identity
    v1 = tiny_variant(tiny, seed=1)
    v2 = tiny_variant(tiny, seed=2)
    assert v1.family == v2.family and v1.identity != v2.identity


def test_identity_changes_with_one_weight(tiny):
    import copy

    import torch

    from droidspeak.models.identity import tensors_digest

    sd = copy.deepcopy(tiny.model.state_dict())
    before = tensors_digest(sd)
    with torch.no_grad():
        sd["model.layers.3.mlp.down_proj.weight"][0, 0] += 1e-3
    assert tensors_digest(sd) != before


def test_fingerprint_of_config_counts_head_dim():
    from droidspeak.testing.tiny import tiny_config

    f = fingerprint(tiny_config(), "t")
    assert (f.num_layers, f.hidden_size, f.num_heads, f.num_kv_heads, f.head_dim) == (6, 64, 4, 2, 16)
