"""droidspeak: fine-tuned variants of one base LLM share their KV caches (DroidSpeak, NSDI 2026).

The public API is imported lazily, so ``droidspeak --help`` starts without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SenderCapture": "core.capture", "capture": "core.capture",
    "DroidspeakError": "errors",
    "Compatibility": "models.family", "FamilyFingerprint": "models.family", "compatibility": "models.family",
    "LoadedModel": "models.loaded", "load_model": "models.loading",
    "full_prefill": "core.prefill", "partial_prefill": "core.prefill",
    "PrefillResult": "core.result", "ReuseInfo": "core.result",
    "RecomputePlan": "core.plan",
    "Profile": "sharing.profile",
    "PromptTokens": "core.prompt", "layout": "core.prompt",
    "ShareOptions": "sharing.options", "serve_prefill": "sharing.path",
    "Exactness": "models.exact", "WeightSummary": "models.exact", "exactness": "models.exact",
    "ShareKind": "kinds", "ModelKind": "kinds",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'droidspeak' has no attribute {name!r}")
