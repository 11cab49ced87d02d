"""Loading models: one factory for bases, full fine-tunes and adapters, all offline.

A base or full model is read from a safetensors directory (a shipped GGUF is converted once, see
:mod:`.gguf`); an adapter is applied with PEFT on a module of its own over its base's shared weights
(merged for a LoRA by default, never for an activated adapter, which acts only from its invocation on). Every weight file
is checked before it is parsed; every fault is a one-line :class:`~droidspeak.errors.DroidspeakError`.
A directory's weight summary (its identity and per-layer digests) is hashed once per version of its
files and read back by later processes from ``$DROIDSPEAK_HOME/summaries``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import IncompatibleModelsError, WeightFileError
from ..kinds import ModelKind
from ..paths import home
from . import identity as ident
from .exact import WeightSummary
from .family import fingerprint, tokenizer_hash
from .gguf import converted_dir
from .loaded import LoadedModel
from .registry import BASES, ModelSpec, adapter_meta, registry, resolve


# --------------------------------------------------------------------------- weight files
def _check_safetensors(path: Path) -> None:
    """Open a safetensors file's header and every tensor's extent; name the file when it fails."""
    from safetensors import safe_open

    try:
        size = path.stat().st_size
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)  # validates offsets against the file
        if size < 8:
            raise ValueError("file too short")
    except Exception as e:  # safetensors raises its own error types and OSError
        raise WeightFileError(f"corrupt or truncated weight file {path}: {str(e).splitlines()[0]}") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    _check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as e:
        raise WeightFileError(f"corrupt or truncated weight file {path}: {str(e).splitlines()[0]}") from None


def _weight_files(path: Path) -> list[Path]:
    """A model directory's safetensors files; a directory without any is refused."""
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise WeightFileError(f"no .safetensors weights in {path} (pickled .bin weights are refused)")
    return weights


def _load_hf_dir(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for w in _weight_files(path):
        _check_safetensors(w)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True,
                                                     local_files_only=True)
    except Exception as e:
        raise WeightFileError(f"cannot load model from {path}: {str(e).splitlines()[0]}") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise WeightFileError(f"cannot load tokenizer from {path}: {str(e).splitlines()[0]}") from None
    return model, tok


def summarize_dir(path: Path) -> tuple[Any, WeightSummary]:
    """``(family, weight summary)`` of a safetensors model directory from its files, without building the
    model: what another engine serving that directory (vLLM) keys its caches by. Equal to what loading the
    directory gives (a tied output head is the embedding, as in the module's state dict)."""
    from transformers import AutoConfig, AutoTokenizer

    state: dict[str, torch.Tensor] = {}
    for w in _weight_files(path):
        state.update(_load_tensors(w))
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        family = fingerprint(config, tokenizer_hash(tok))
    except Exception as e:
        raise WeightFileError(f"cannot read the model in {path}: {str(e).splitlines()[0]}") from None
    tied = getattr(config.get_text_config(decoder=True), "tie_word_embeddings", False)
    embed = next((k for k in state if k.endswith("embed_tokens.weight")), None)
    head = state.get("lm_head.weight")
    # transformers ties the head to the embedding when the files leave it out or hold a copy of it (then both
    # are one tensor, hashed once); a head of other values is loaded as it is
    if tied and embed is not None and (head is None or torch.equal(head, state[embed])):
        state["lm_head.weight"] = state[embed]
    digest_embed, layers = ident.layer_digests(state, family.num_layers)
    return family, WeightSummary(ident.tensors_digest(state), digest_embed, layers)


# --------------------------------------------------------------------------- bases and full models
# (path or name, dtype) -> the loaded base, its weights' version counters and its files' versions when loaded
_BASE_CACHE: dict[tuple[str, torch.dtype], tuple[LoadedModel, list[tuple[torch.Tensor, int]], Any]] = {}


def _own_module(model: Any) -> Any:
    """A module of the caller's own over the cached weights: every module and Parameter object is new (so
    wrapping layers, replacing or re-assigning a weight, freezing, merging into new tensors never touch the
    cache), the weights' storage is shared (no copy of its bytes; writing into it in place would change the
    cache: :func:`_load_base_like` checks it never happened). Buffers are small and copied."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad)  # shares the version counter
    return copy.deepcopy(model, memo)


def _file_versions(path: Path) -> list[list[Any]]:
    """What names one version of a model directory's weight files: each file's name, size, inode, and its
    modification and change times (the change time moves on every write and cannot be set back)."""
    out = []
    for w in sorted(_weight_files(path)):
        st = w.stat()
        out.append([w.name, st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns])
    return out


def _summary_memo(path: Path, dtype: torch.dtype) -> tuple[Path, dict[str, Any]] | None:
    """Where the weight summary of ``path``'s current files (as loaded in ``dtype`` by these library versions)
    is remembered, and the key it must match (hashing 0.5 GB of weights costs seconds per process); None when
    the files cannot be listed (loading them says why)."""
    import transformers

    try:
        key = {"dir": str(path.resolve()), "dtype": str(dtype), "files": _file_versions(path),
               "torch": torch.__version__, "transformers": transformers.__version__, "format": 1}
    except (OSError, WeightFileError):
        return None
    name = ident.combine("summary-memo", key["dir"], key["dtype"])
    return home() / "summaries" / f"{name}.json", key


def _remembered_summary(memo: tuple[Path, dict[str, Any]] | None) -> WeightSummary | None:
    """The summary hashed when these very files were loaded before, else None (then the caller hashes)."""
    if memo is None:
        return None
    try:
        data = json.loads(memo[0].read_text())
        return WeightSummary.from_dict(data["summary"]) if data.get("key") == memo[1] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_summary(memo: tuple[Path, dict[str, Any]] | None, summary: WeightSummary) -> None:
    if memo is None:
        return
    path, key = memo
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "summary": summary.to_dict()}))
        tmp.replace(path)  # whole or not at all
    except OSError:
        pass  # a read-only home: the next process hashes again


def _cached_base(key: tuple[str, torch.dtype]) -> LoadedModel | None:
    """The process's copy of a base, unless a holder wrote into its weights in place or its files were written
    again since (then they are read from disk again)."""
    if key not in _BASE_CACHE:
        return None
    cached, versions, memo = _BASE_CACHE[key]
    if any(p._version != v for p, v in versions):
        return None
    try:
        return cached if memo is None or _file_versions(Path(memo[1]["dir"])) == memo[1]["files"] else None
    except (OSError, WeightFileError):
        return None  # gone or unreadable: loading it again says why


def _load_base_like(spec: ModelSpec, dtype: torch.dtype) -> LoadedModel:
    key = (str(spec.path) if spec.path else spec.name, dtype)
    cached = _cached_base(key)
    if cached is None:
        path = converted_dir(BASES[spec.name]) if spec.kind == ModelKind.BASE else spec.path
        assert path is not None
        # the files' versions before they are read: a file written again meanwhile never matches this key again
        memo = _summary_memo(path, dtype)
        model, tok = _load_hf_dir(path, dtype)
        try:
            family = fingerprint(model.config, tokenizer_hash(tok))
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            raise IncompatibleModelsError(f"cannot read the layout of {type(model).__name__} in {path}: {e}") from None
        known = _remembered_summary(memo)
        cached = LoadedModel.of(spec, model, tok, family, weights=known)
        if known is None:
            _remember_summary(memo, cached.weights)
        _BASE_CACHE[key] = (cached, [(p, p._version) for p in model.parameters()], memo)
    return cached.running(_own_module(cached.model))


# --------------------------------------------------------------------------- adapters
def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightFileError(f"unreadable adapter_config.json in {adapter_dir}: {e}") from None


_IDENTITY_KEYS = ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "bias")
_IDENTITY_KEYS_IF_SET = ("layers_to_transform", "layers_pattern", "alora_invocation_tokens", "rank_pattern",
                         "alpha_pattern")


def adapter_summary(adapter_dir: Path, base: WeightSummary, config: dict[str, Any] | None = None) -> WeightSummary:
    """Identity and weight summary of base + adapter, from the adapter's files (no model needed); ``config``
    stands for its ``adapter_config.json`` where the caller read (and mended) that already."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise WeightFileError(f"no adapter_model.safetensors in {adapter_dir} (pickled adapters are refused)")
    return summarize_adapter(_load_tensors(weights), config if config is not None else _adapter_config(adapter_dir), base)


def summarize_adapter(tensors: dict[str, torch.Tensor], cfg: dict[str, Any], base: WeightSummary) -> WeightSummary:
    """Identity and weight summary of base + an adapter's tensors and config.

    A layer the adapter has no tensors for keeps the base's digest: its effective weights are the
    base's, bit for bit. An activated adapter's context caches are its base's.
    """
    relevant = {k: cfg.get(k) for k in _IDENTITY_KEYS} | {k: cfg[k] for k in _IDENTITY_KEYS_IF_SET if cfg.get(k)}
    activation = tuple(int(t) for t in cfg["alora_invocation_tokens"]) if cfg.get("alora_invocation_tokens") else None
    identity = ident.combine("alora" if activation else "lora", base.identity, ident.tensors_digest(tensors), relevant)
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    touches_embed = False
    for name, t in tensors.items():
        idx = ident.layer_of(name)
        if idx is None:
            touches_embed |= "embed_tokens" in name
        else:
            by_layer.setdefault(idx, {})[name] = t
    layers = tuple(ident.combine("lora-layer", d, ident.tensors_digest(by_layer[i]), relevant) if i in by_layer else d
                   for i, d in enumerate(base.layers))
    embed = ident.combine("lora-embed", base.embed, identity) if touches_embed else base.embed
    return WeightSummary(identity, embed, layers, base.identity if activation else identity, activation)


@functools.lru_cache(maxsize=256)
def _summary_of_file(adapter_dir: str, _mtime_ns: int, _size: int, base: WeightSummary) -> WeightSummary:
    return adapter_summary(Path(adapter_dir), base)


def shipped_adapter_summaries(base: WeightSummary) -> list[WeightSummary]:
    """Weight summaries of the registered adapters made for ``base`` (read once per file version).
    An adapter of another base, or one that cannot be read, is left out (loading it by name says why)."""
    out = []
    for spec in registry().values():
        if not spec.is_adapter or spec.path is None:
            continue
        if (adapter_meta(spec.path) or {}).get("base_identity", base.identity) != base.identity:
            continue
        w = spec.path / "adapter_model.safetensors"
        try:
            st = w.stat()
            out.append(_summary_of_file(str(spec.path), st.st_mtime_ns, st.st_size, base))
        except (OSError, WeightFileError):
            continue
    return out


def check_adapter_base(spec: ModelSpec, base: LoadedModel) -> None:
    """Refuse an adapter whose droidspeak.json names another base's weights."""
    assert spec.path is not None
    if (spec.path / "droidspeak.json").is_file():
        want = (adapter_meta(spec.path) or {}).get("base_identity")
        if want and want != base.identity:
            raise IncompatibleModelsError(
                f"adapter {spec.path.name} was trained on base {want[:12]} but {spec.parent} is {base.identity[:12]}"
            )


def attach_adapters(base: LoadedModel, specs: list[ModelSpec]) -> tuple[Any, list[tuple[str, LoadedModel]]]:
    """Apply ``specs`` (adapters of ``base``) unmerged on ``base``'s module in one PeftModel. Returns
    the PeftModel and, per adapter, its PEFT adapter name and a :class:`LoadedModel` running it."""
    from peft import PeftModel

    peft = None
    loaded = []
    for i, s in enumerate(specs):
        name = f"a{i}_" + re.sub(r"[^A-Za-z0-9_-]", "_", Path(s.name).name)  # PEFT names are module keys: no dots
        assert s.path is not None
        summary = adapter_summary(s.path, base.weights)
        check_adapter_base(s, base)
        try:
            if peft is None:
                peft = PeftModel.from_pretrained(base.model, str(s.path), adapter_name=name, is_trainable=False)
            else:
                peft.load_adapter(str(s.path), adapter_name=name, is_trainable=False)
        except RuntimeError as e:
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
            raise IncompatibleModelsError(f"adapter {s.path} does not fit base {s.parent}: {first}") from None
        except Exception as e:
            raise WeightFileError(f"cannot load adapter {s.path}: {str(e).splitlines()[0]}") from None
        loaded.append((name, LoadedModel.adapter(s, peft, base, summary, name)))
    return peft, loaded


# --------------------------------------------------------------------------- the factory
def load_model(name_or_path: str, dtype: torch.dtype = torch.float32, merge: bool = True) -> LoadedModel:
    """Load a model by registered name or path.

    Every load is a module of its own, but the weights of one base are read once per process (again once its
    files are written again) and shared by its loads (and by adapters over it): wrap, freeze, replace or
    re-assign them freely, never write into them in place (``copy.deepcopy`` the module first). A LoRA adapter
    with ``merge`` (the default) is merged into new tensors, which is fastest for one model per process. An
    activated adapter is never merged (it acts only from its invocation on). Raises :class:`DroidspeakError`
    subclasses with one-line messages on bad input.
    """
    spec = resolve(name_or_path)
    if not spec.is_adapter:
        return _load_base_like(spec, dtype)
    assert spec.path is not None and spec.parent is not None
    base = load_model(spec.parent, dtype=dtype, merge=True)
    peft, ((_, adapter),) = attach_adapters(base, [spec])
    if merge and spec.kind == ModelKind.LORA:
        return adapter.running(_merged(peft, spec.path))
    return adapter


def _merged(peft: Any, path: Path) -> Any:
    """Merge a LoRA into new tensors, never into the base's weights, whose storage the cache shares.

    Each adapted layer's weight (and bias) gets a storage of its own first (the same Parameter object, so a
    tie stays a tie), then PEFT merges into it in place. PEFT's ``safe_merge`` does the same copy but checks
    every merged element with ``isfinite(w).all()``, ~30x slower here than a sum, which is non-finite exactly
    when an element is (or the weights are beyond float range): a SmolLM2 LoRA merges in 0.19-0.33 s against
    0.34-0.47 s."""
    from peft.tuners.lora import LoraLayer

    adapted: dict[int, torch.nn.Parameter] = {}
    with torch.no_grad():
        for m in peft.modules():
            if isinstance(m, LoraLayer):
                base = m.get_base_layer()
                for p in (base.weight, getattr(base, "bias", None)):
                    if p is not None and id(p) not in adapted:
                        p.data = p.data.clone()
                        adapted[id(p)] = p
        model = peft.merge_and_unload()
        for p in adapted.values():
            if not bool(torch.isfinite(p.sum())):
                raise WeightFileError(f"adapter {path} merges into non-finite weights (NaN or inf)")
    return model
