"""Shared fixtures: the tiny random model (unit tier) and SmolLM2 (integration tier)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    from droidspeak.tiny import tiny_model

    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_recv(tiny):
    from droidspeak.tiny import tiny_variant

    return tiny_variant(tiny, seed=1)


@pytest.fixture(scope="session")
def tiny_ids():
    g = torch.Generator().manual_seed(7)
    return torch.randint(3, 256, (64,), generator=g).tolist()


@pytest.fixture(scope="session")
def smol_base():
    from droidspeak.models import load_model

    return load_model("base")


@pytest.fixture(scope="session")
def smol_variant():
    from droidspeak.models import load_model, shipped_variants

    names = [v.name for v in shipped_variants()]
    if not names:
        pytest.skip("no shipped variants in adapters/")
    return load_model("smollm2-qa" if "smollm2-qa" in names else names[0])
