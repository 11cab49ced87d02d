"""droidspeak: fine-tuned variants of one base LLM share their KV caches (DroidSpeak, NSDI 2026).

The public API is imported lazily, so ``droidspeak --help`` starts without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SenderCapture": "sender", "capture": "sender",
    "DroidspeakError": "errors",
    "Compatibility": "family", "FamilyFingerprint": "family", "compatibility": "family",
    "LoadedModel": "models", "load_model": "models",
    "full_prefill": "partial", "partial_prefill": "partial",
    "PrefillResult": "result", "ReuseInfo": "result",
    "RecomputePlan": "plan",
    "Profile": "profile",
    "PromptTokens": "prompt", "layout": "prompt",
    "ShareOptions": "sharing", "serve_prefill": "sharing",
    "Exactness": "exact", "WeightSummary": "exact", "exactness": "exact",
    "ShareKind": "kinds", "ModelKind": "kinds",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'droidspeak' has no attribute {name!r}")
