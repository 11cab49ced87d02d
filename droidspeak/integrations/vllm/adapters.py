"""Activated adapters as vLLM loads them, and what the connector knows about a served adapter.

vLLM refuses an adapter config with ``alora_invocation_tokens`` (it has no activated-LoRA semantics).
:func:`export_for_vllm` writes a copy it accepts: the same weights, the invocation tokens kept under
``droidspeak_alora_invocation_tokens``, a key vLLM ignores. Served that way, vLLM alone would apply
the adapter to every token (a plain LoRA); with the connector, every token before the activation
point comes from the base's cache and vLLM computes only the rest with the adapter on, which is the
activated adapter's own semantics.

Pure file work and digests: no vLLM import.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...errors import WeightFileError
from ...models.exact import WeightSummary
from ...models.loading import adapter_summary

EXPORTED_KEY = "droidspeak_alora_invocation_tokens"


def export_for_vllm(adapter_dir: Path, out: Path) -> Path:
    """Write ``adapter_dir`` (a PEFT adapter) to ``out`` as vLLM loads it; an activated adapter keeps its
    invocation tokens under :data:`EXPORTED_KEY`. Returns ``out``."""
    src = Path(adapter_dir)
    try:
        cfg = json.loads((src / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightFileError(f"unreadable adapter_config.json in {src}: {e}") from None
    if not (src / "adapter_model.safetensors").is_file():
        raise WeightFileError(f"no adapter_model.safetensors in {src} (pickled adapters are refused)")
    inv = cfg.pop("alora_invocation_tokens", None)
    if inv:
        cfg[EXPORTED_KEY] = [int(t) for t in inv]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "adapter_model.safetensors", out / "adapter_model.safetensors")
    for extra in ("droidspeak.json", "README.md"):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, out / extra)
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return out


@dataclass(frozen=True, slots=True)
class Served:
    """A model vLLM serves, as the connector sees it."""

    weights: WeightSummary
    kind: str  # "base", "lora" (its own entries only) or "alora" (its base's entries before its activation)

    @property
    def activation(self) -> tuple[int, ...] | None:
        return self.weights.activation


def served_adapter(lora_dir: Path, base: WeightSummary) -> Served:
    """What a LoRA directory vLLM loaded is: its weight summary on ``base`` (the identity droidspeak gives the
    same adapter), activated when its config names invocation tokens (PEFT's key or the exported one)."""
    d = Path(lora_dir)
    try:
        cfg = json.loads((d / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightFileError(f"unreadable adapter_config.json in {d}: {e}") from None
    inv = cfg.pop(EXPORTED_KEY, None) or cfg.get("alora_invocation_tokens")
    if inv:
        cfg["alora_invocation_tokens"] = [int(t) for t in inv]
    w = adapter_summary(d, base, cfg)
    return Served(w, "alora" if w.activation else "lora")
