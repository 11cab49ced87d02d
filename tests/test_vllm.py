"""The droidspeak connector inside a real vLLM (CPU build), on SmolLM2 and its shipped QA adapters.

Runs with ``make test-vllm`` (the ``.venv-vllm`` of ``make setup-vllm``); skipped where vLLM is not
installed. Each vLLM instance is its own process (droidspeak.integrations.vllm.run); they share one
disk store, as two nodes would share a Redis.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (make setup-vllm; make test-vllm)")
pytestmark = [pytest.mark.vllm, pytest.mark.smollm]

DOC = " ".join(f"Fact {i}: the code of item {i} is {i * 7919 % 10007}." for i in range(24))


def _vllm(tmp: Path, name: str, spec: dict) -> list[dict]:
    from droidspeak.integrations.vllm.run import spawn

    return spawn(spec, tmp, name, timeout_s=900)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import AutoTokenizer

    from droidspeak.core.prompt import layout
    from droidspeak.integrations.vllm.adapters import export_for_vllm
    from droidspeak.models.exact import activation_point
    from droidspeak.models.gguf import converted_dir
    from droidspeak.models.registry import BASES
    from droidspeak.paths import adapters_dir

    tmp = tmp_path_factory.mktemp("vllm")
    model = converted_dir(BASES["smollm2-135m-instruct"])
    tok = AutoTokenizer.from_pretrained(str(model))
    loras = {n: str(export_for_vllm(adapters_dir() / f"smollm2-{n}", tmp / n)) for n in ("qa-alora", "qa")}
    prompts = {}
    for key, q in (("B", "Summarize the facts."), ("A", "What is the code of item 17?"), ("A2", "Which item has code 0?")):
        p = layout(tok, DOC, q)
        prompts[key] = list(p.prefix) + list(p.suffix)
    inv = json.loads((tmp / "qa-alora" / "adapter_config.json").read_text())["droidspeak_alora_invocation_tokens"]
    act = activation_point(prompts["A"], tuple(inv))
    assert act == len(layout(tok, DOC, "x").prefix)  # the adapter starts at the request's turn
    return {"tmp": tmp, "model": str(model), "loras": loras, "prompts": prompts, "act": act,
            "store": f"disk:{tmp / 'store'}"}


def _spec(world, store, *requests, model=None):
    return {"model": model or world["model"], "store": store, "loras": world["loras"],
            "requests": [{"lora": lora, "ids": world["prompts"][p], "max_tokens": 8} for lora, p in requests]}


def _peft(world, adapter: str, prompt: str) -> list[int]:
    """Greedy tokens of base + adapter in PEFT (an activated adapter with its own semantics)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from droidspeak.paths import adapters_dir

    base = AutoModelForCausalLM.from_pretrained(world["model"], dtype=torch.float32)
    m = PeftModel.from_pretrained(base, str(adapters_dir() / f"smollm2-{adapter}")).eval()
    ids = torch.tensor([world["prompts"][prompt]])
    with torch.no_grad():
        out = m.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def node1(world):
    return _vllm(world["tmp"], "node1", _spec(world, world["store"], (None, "B"), ("qa-alora", "A"), ("qa", "A")))


@pytest.fixture(scope="module")
def plain(world):
    return _vllm(world["tmp"], "plain", _spec(world, None, ("qa-alora", "A"), ("qa", "A")))


def test_activated_adapter_loads_its_base_cache_and_answers_as_peft(world, node1):
    base, alora, lora = node1
    assert base["cached"] == 0
    assert alora["cached"] == world["act"]  # every token before its activation point, not one more
    assert alora["tokens"] == _peft(world, "qa-alora", "A")


def test_plain_lora_never_takes_the_base_cache(world, node1, plain):
    assert node1[2]["cached"] == 0
    assert node1[2]["tokens"] == plain[1]["tokens"] == _peft(world, "qa", "A")


def test_a_second_node_hits_what_the_first_stored(world, node1):
    base, alora, lora = _vllm(world["tmp"], "node2", _spec(world, world["store"], (None, "B"), ("qa-alora", "A2"),
                                                            ("qa", "A")))
    assert base["cached"] == len(world["prompts"]["B"]) - 1 and base["tokens"] == node1[0]["tokens"]
    assert alora["cached"] == world["act"] and alora["tokens"] == _peft(world, "qa-alora", "A2")
    # a plain LoRA finds the entries it stored itself on node one (its own weights), never the base's
    assert lora["cached"] == len(world["prompts"]["A"]) - 1 and lora["tokens"] == node1[2]["tokens"]


def test_a_damaged_entry_is_computed_by_vllm(world, node1, plain):
    from droidspeak.kinds import TensorKind
    from droidspeak.models.loading import summarize_dir
    from droidspeak.store import open_store

    family, base = summarize_dir(Path(world["model"]))
    store = open_store(world["store"])
    hit = store.lookup_prefix(family, world["prompts"]["A"][:world["act"]], base.identity)
    key = store.keys.entry(family.digest, base.identity, hit.chain, 5, TensorKind.KV)
    store.backend.put(key, store.backend.get(key)[:-40] + b"\0" * 40)  # torn bytes in layer 5
    (alora,) = _vllm(world["tmp"], "damaged", _spec(world, world["store"], ("qa-alora", "A")))
    assert alora["tokens"] == plain[0]["tokens"]  # what vLLM computes for that adapter without the connector


def test_a_base_of_other_weights_loads_nothing(world, node1):
    import torch
    from safetensors.torch import load_file, save_file

    other = world["tmp"] / "other-base"
    shutil.copytree(world["model"], other)
    w = load_file(str(other / "model.safetensors"))
    name = next(k for k in w if "layers.3.mlp.down_proj" in k)
    w[name] = w[name] * (1 + 1e-3 * torch.randn_like(w[name]))
    save_file(w, str(other / "model.safetensors"), metadata={"format": "pt"})
    (base,) = _vllm(world["tmp"], "other", _spec(world, world["store"], (None, "B"), model=str(other)))
    assert base["cached"] == 0


def test_two_nodes_share_through_a_sealed_redis(world, redis_server, monkeypatch):
    """Node one (the base) and node two (the activated variant), each its own vLLM, share a Redis with the
    deployment's store secret; a third node under another secret finds nothing it could open."""
    store = redis_server.url
    monkeypatch.setenv("DROIDSPEAK_STORE_SECRET", "a-deployment-secret-of-32-bytes!")
    (base,) = _vllm(world["tmp"], "redis1", _spec(world, store, (None, "B")))
    (alora,) = _vllm(world["tmp"], "redis2", _spec(world, store, ("qa-alora", "A2")))
    assert base["cached"] == 0 and alora["cached"] == world["act"]
    assert alora["tokens"] == _peft(world, "qa-alora", "A2")
    monkeypatch.setenv("DROIDSPEAK_STORE_SECRET", "another-deployment-secret-32-byte")
    (other,) = _vllm(world["tmp"], "redis3", _spec(world, store, ("qa-alora", "A2")))
    assert other["cached"] == 0
