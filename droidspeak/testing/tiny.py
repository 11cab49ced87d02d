"""A tiny random model of SmolLM2's architecture, built in memory in well under a second.

Unit tests run the whole algorithm on it: same decoder classes, GQA (4 heads, 2 KV heads), RoPE,
tied embeddings; a few layers of width 64. ``tiny_variant`` perturbs some of its weights the way a
fine-tune would, giving a sender/receiver pair of one family.
"""

from __future__ import annotations

import torch

from ..kinds import ModelKind
from ..models.family import fingerprint
from ..models.loaded import LoadedModel
from ..models.loading import summarize_adapter
from ..models.registry import ModelSpec
from ..training.adapters import AdapterKind, lora_config

TINY_VOCAB = 256


ARCHES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")
# sliding windows small enough that the tests' 64-token contexts cross them
SLIDING_WINDOW = 24


def tiny_config(num_layers: int = 6, arch: str = "llama", **overrides):
    """A tiny config of one supported architecture (``llama``, ``mistral``, ``qwen2``, ``qwen3``,
    ``gemma3``). Gemma 3 gets its own alternation of sliding-window and full layers with their own
    RoPE, scaled embeddings and q/k norms; Qwen 3 gets q/k norms; ``sliding_window=N`` makes a
    Mistral slide on every layer."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    config_cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config,
                  "gemma3": Gemma3TextConfig}[arch]
    arch_name = {"gemma3": "Gemma3ForCausalLM"}.get(arch, config_cls.__name__.replace("Config", "ForCausalLM"))
    cfg = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
               tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
               architectures=[arch_name],
               initializer_range=0.1)  # wide enough that greedy decoding does not collapse to one token
    if arch == "gemma3":
        # untied: a scaled embedding tied to the head makes a random tiny Gemma repeat one token forever
        cfg.update(sliding_window=SLIDING_WINDOW, sliding_window_pattern=3, query_pre_attn_scalar=16,
                   tie_word_embeddings=False,
                   rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})
    else:
        cfg.update(rope_theta=10000.0)
    if arch == "mistral":
        cfg.update(sliding_window=None)
    cfg.update(overrides)
    return config_cls(**cfg)


def _wrap(model, name: str, kind: ModelKind = ModelKind.FULL) -> LoadedModel:
    fam = fingerprint(model.config, f"tiny-vocab-{model.config.vocab_size}")
    return LoadedModel.of(ModelSpec(name, kind, None), model, None, fam)


def tiny_model(seed: int = 0, num_layers: int = 6, dtype: torch.dtype = torch.float32, arch: str = "llama",
               **overrides) -> LoadedModel:
    """A random tiny model; the same seed always gives the same weights (and identity)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(num_layers, arch, **overrides)).to(dtype)
    model.config._attn_implementation = "sdpa"
    return _wrap(model, f"tiny-{arch}-{seed}")


def tiny_variant(base: LoadedModel, seed: int = 1, scale: float = 0.5, layers: list[int] | None = None) -> LoadedModel:
    """A 'fine-tune' of ``base``: its decoder weights plus noise (on ``layers``, default all)."""
    import copy

    model = copy.deepcopy(base.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".layers." not in name or p.dim() < 2:
                continue
            idx = int(name.split(".layers.")[1].split(".")[0])
            if layers is None or idx in layers:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * p.std() * scale)
    return _wrap(model, f"{base.name}-variant-{seed}")


def tiny_adapter(base: LoadedModel, kind: str = "alora", invocation: tuple[int, ...] = (5, 6, 7),
                 first_layer: int = 3, seed: int = 0, scale: float = 0.3, merge: bool = False) -> LoadedModel:
    """A PEFT adapter on a copy of ``base``, its ``lora_B`` filled with noise (a trained one is not
    zero): ``alora`` (activated from ``invocation`` on), ``top`` (layers ``first_layer``+ only) or
    ``lora`` (every layer). Its weight summary is computed as for a shipped adapter."""
    import copy

    from peft import get_peft_model, get_peft_model_state_dict

    ak = AdapterKind("top", first_layer) if kind == "top" else AdapterKind(kind)  # type: ignore[arg-type]
    cfg = lora_config(ak, 4, 8, base.num_layers, list(invocation))
    peft = get_peft_model(copy.deepcopy(base.model), cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft).items()}
    summary = summarize_adapter(tensors, cfg.to_dict(), base.weights)
    mk = ModelKind.ALORA if kind == "alora" else ModelKind.LORA
    model = peft.merge_and_unload() if merge and kind != "alora" else peft
    return LoadedModel.adapter(ModelSpec(f"{base.name}-{kind}-{seed}", mk, None, base.name), model, base, summary,
                               None if model is not peft else "default")


def tiny_fleet(base: LoadedModel, kinds: dict[str, str], invocation: tuple[int, ...] = (5, 6, 7),
               first_layer: int = 3, scale: float = 0.3) -> tuple[LoadedModel, dict[str, LoadedModel]]:
    """Several adapters (name -> ``alora`` | ``top`` | ``lora``) on one PEFT copy of ``base``, as a
    server hosts them: the base running on the shared module, and one :class:`LoadedModel` per
    adapter, each its own PEFT adapter there (``lora_B`` filled with noise, seeded by its order)."""
    import copy

    from peft import get_peft_model, get_peft_model_state_dict

    def config(kind: str):
        ak = AdapterKind("top", first_layer) if kind == "top" else AdapterKind(kind)  # type: ignore[arg-type]
        return lora_config(ak, 4, 8, base.num_layers, list(invocation))

    names = list(kinds)
    peft = get_peft_model(copy.deepcopy(base.model), config(kinds[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        peft.add_adapter(name, config(kinds[name]))
    g = torch.Generator().manual_seed(len(names))
    with torch.no_grad():
        for pname, p in peft.named_parameters():
            if "lora_B" in pname:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    peft.eval()
    out = {}
    for name in names:
        cfg = config(kinds[name])
        tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft, adapter_name=name).items()}
        mk = ModelKind.ALORA if kinds[name] == "alora" else ModelKind.LORA
        out[name] = LoadedModel.adapter(ModelSpec(name, mk, None, base.name), peft, base,
                                        summarize_adapter(tensors, cfg.to_dict(), base.weights), name)
    return base.running(peft), out
