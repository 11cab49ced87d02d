"""The vLLM connector's parts that need no vLLM: paged-cache layouts, whole contexts in the store, and
activated adapters written as vLLM loads them (the connector itself: tests/test_vllm.py)."""

from __future__ import annotations

import json

import pytest
import torch

from droidspeak.integrations.vllm.paged import layout_of, slots_of
from droidspeak.kinds import TensorKind
from droidspeak.store import open_store

H, D, BS, NB = 3, 8, 16, 6


def _tokens_kv(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, H, n, D, generator=g), torch.randn(1, H, n, D, generator=g)


@pytest.mark.parametrize("shape", [(NB, H, BS, 2 * D), (2, NB, BS, H, D), (2, NB, H, BS, D), (NB, 2, BS, H, D),
                                   (NB, 2, H, BS, D)])
def test_scatter_then_gather_returns_the_tokens_and_touches_nothing_else(shape):
    cache = torch.zeros(shape)
    layout = layout_of(cache, BS, H, D)
    assert layout is not None
    blocks = [4, 1, 3]  # a request's blocks, in token order
    k, v = _tokens_kv(37)
    slots = torch.tensor(slots_of(blocks, BS, 0, 37))
    layout.scatter(cache, slots, k, v)
    k2, v2 = layout.gather(cache, slots)
    assert torch.equal(k2, k) and torch.equal(v2, v)
    assert int((cache != 0).sum()) == 2 * 37 * H * D  # only those slots were written
    part = torch.tensor(slots_of(blocks, BS, 5, 21))  # a middle range, as a load from a hit's start
    assert torch.equal(layout.gather(cache, part)[0], k[:, :, 5:21])


def test_cpu_layout_keeps_k_transposed_per_block():
    """vLLM's CPU kernels keep K of a (block, head) as [head_dim, block_size] and V as [block_size, head_dim]
    (checked against transformers' K/V in tests/test_vllm.py): slot 1 of block 0, head 0, dim 2 is there."""
    cache = torch.zeros(NB, H, BS, 2 * D)
    layout = layout_of(cache, BS, H, D)
    k, v = torch.zeros(1, H, 2, D), torch.zeros(1, H, 2, D)
    k[0, 0, 1, 2], v[0, 0, 1, 2] = 5.0, 7.0
    layout.scatter(cache, torch.tensor([0, 1]), k, v)
    flat = cache[0, 0].reshape(-1)
    assert flat[2 * BS + 1] == 5.0  # K: row d=2, column slot 1
    assert flat[BS * D + 1 * D + 2] == 7.0  # V after K: row slot 1, column d=2


@pytest.mark.parametrize("shape", [(NB, H, BS, D), (2, NB, BS, BS, D), (NB, H, BS, 2 * D + 1), (3, NB, BS, H, D)])
def test_unknown_or_ambiguous_layouts_are_refused(shape):
    h = BS if shape[3:4] == (BS,) else H  # (2, NB, BS, BS, D): heads == block size, two orders fit
    assert layout_of(torch.zeros(shape), BS, h, D) is None


# ------------------------------------------------------------------ whole contexts in the store
def _family():
    from droidspeak.models.family import FamilyFingerprint

    return FamilyFingerprint("LlamaForCausalLM", 2, H * D, H, H, D, "{}", 100, "t")


def _producer(name: str = "p"):
    from droidspeak.models.exact import WeightSummary

    return WeightSummary(name, "e", ("a", "b"))


@pytest.mark.parametrize("secret", ["", "a-deployment-secret-of-32-bytes!"])
def test_whole_context_serves_any_prefix_to_the_token(tmp_path, secret):
    fam, prod = _family(), _producer()
    ids = list(range(10, 10 + 45))  # two full blocks and a tail of 13
    kv = {layer: _tokens_kv(45, layer) for layer in range(2)}
    store = open_store(f"disk:{tmp_path}", secret=secret)
    assert store.put_context(fam, prod, ids, 2, lambda layer: kv[layer], {}, whole=True) == 45
    for want in (16, 21, 45):
        hit = store.lookup_prefix(fam, ids[:want], "p", num_layers=2)
        assert hit.tokens == want and hit.stored_tokens == 45
        k, v = store.fetch_one(hit, (TensorKind.KV, 1), fam, torch.float32)
        assert torch.equal(k, kv[1][0][:, :, :want]) and torch.equal(v, kv[1][1][:, :, :want])
    other = ids[:20] + [999] * 10  # runs off the stored tokens at 20
    assert store.lookup_prefix(fam, other, "p", num_layers=2).tokens == 20
    assert store.lookup_prefix(fam, ids, "someone-else", num_layers=2) is None
    assert store.lookup_prefix(fam, ids[:15], "p") is None  # not one block
    # the ordinary lookup still answers whole blocks only
    assert store.lookup(fam, ids)[0].tokens == 32


def test_whole_context_with_a_forged_token_list_is_not_served_past_its_blocks(tmp_path):
    fam, prod = _family(), _producer()
    ids = list(range(10, 55))
    kv = {layer: _tokens_kv(45, layer) for layer in range(2)}
    store = open_store(f"disk:{tmp_path}", secret="a-deployment-secret-of-32-bytes!")
    store.put_context(fam, prod, ids, 2, lambda layer: kv[layer], {}, whole=True)
    forger = open_store(f"disk:{tmp_path}")  # no secret: what it writes does not open under the deployment's
    mkey = store.keys.manifest(fam.digest, "p", store.lookup_prefix(fam, ids, "p").chain)
    man = json.loads(store.backend.get(mkey))
    man["ids"] = ids[:32] + [1] * 13
    forger.backend.put(mkey, json.dumps(man).encode())
    assert store.lookup_prefix(fam, ids, "p") is None  # the forged manifest is refused: nothing served


# ------------------------------------------------------------------ activated adapters as vLLM loads them
@pytest.mark.smollm
def test_exported_activated_adapter_keeps_its_identity(tmp_path, smol_base):
    from droidspeak.integrations.vllm.adapters import EXPORTED_KEY, export_for_vllm, served_adapter
    from droidspeak.models import adapter_summary
    from droidspeak.models.loading import summarize_dir
    from droidspeak.paths import adapters_dir

    src = adapters_dir() / "smollm2-qa-alora"
    if not src.is_dir():
        pytest.skip("smollm2-qa-alora is not shipped")
    out = export_for_vllm(src, tmp_path / "qa-alora")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert "alora_invocation_tokens" not in cfg and cfg[EXPORTED_KEY]  # vLLM refuses the PEFT key
    from droidspeak.models.gguf import converted_dir
    from droidspeak.models.registry import BASES

    family, base = summarize_dir(converted_dir(BASES["smollm2-135m-instruct"]))
    assert base == smol_base.weights and family == smol_base.family  # from the files, as when loaded
    served = served_adapter(out, base)
    assert served.kind == "alora" and served.weights == adapter_summary(src, base)
    plain = served_adapter(export_for_vllm(adapters_dir() / "smollm2-qa", tmp_path / "qa"), base)
    assert plain.kind == "lora" and plain.activation is None


def test_export_command_writes_what_vllm_loads_and_refuses_in_one_line(tmp_path):
    import subprocess
    import sys

    from droidspeak.paths import adapters_dir

    if not (adapters_dir() / "smollm2-qa-alora").is_dir():
        pytest.skip("smollm2-qa-alora is not shipped")
    run = [sys.executable, "-m", "droidspeak", "variants", "export-vllm"]
    ok = subprocess.run([*run, "smollm2-qa-alora", "--out", str(tmp_path / "a"), "--json"], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["activated"] is True
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    bad = subprocess.run([*run, str(tmp_path / "nothing"), "--out", str(tmp_path / "b")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_an_untested_vllm_or_none_is_one_line(monkeypatch):
    import sys
    import types

    from droidspeak.errors import DroidspeakError
    from droidspeak.integrations import vllm as integration

    fake = {name: types.ModuleType(name) for name in
            ("vllm", "vllm.distributed", "vllm.distributed.kv_transfer", "vllm.distributed.kv_transfer.kv_connector",
             "vllm.distributed.kv_transfer.kv_connector.v1", "vllm.distributed.kv_transfer.kv_connector.v1.base")}
    fake["vllm"].__version__ = "0.99.0"
    fake["vllm.distributed.kv_transfer.kv_connector.v1.base"].KVConnectorBase_V1 = object
    for name, mod in fake.items():
        monkeypatch.setitem(sys.modules, name, mod)
    with pytest.raises(DroidspeakError, match="tested with vLLM 0.32.0, not 0.99.0") as e:
        integration.DroidspeakConnector  # noqa: B018 - what vLLM does: getattr on the module
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(DroidspeakError, match="make setup-vllm"):
        integration.check_vllm()
