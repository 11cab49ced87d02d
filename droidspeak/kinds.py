"""The kinds droidspeak names across modules: of models, of sharing decisions, of exactness, of tensors,
and the plan policies a request's prefill may choose by.

Each is a ``str`` enum, so its value is what JSON output, metrics labels and store keys spell.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

Policy = Literal["load", "bandwidth", "profile"]
POLICIES: tuple[Policy, ...] = ("load", "bandwidth", "profile")  # see droidspeak.sharing.options.ShareOptions


class ModelKind(str, Enum):
    """Where a model's weights come from."""

    BASE = "base"  # the shipped base (GGUF, converted once)
    FULL = "full"  # a Hugging Face model directory
    LORA = "lora"  # a PEFT LoRA adapter on a base (merged, or unmerged in the server)
    ALORA = "alora"  # a PEFT activated LoRA: acts only from its invocation sequence on (never merged)


class ShareKind(str, Enum):
    """How a request's prefill used what was stored."""

    SAME_MODEL = "same-model"  # its own stored prefix: every layer reused
    EXACT = "exact-cross-model"  # another model's prefix, provably exact from the weights (no profile)
    PROFILED = "cross-model"  # another model's prefix through a profiled DroidSpeak plan
    MISS = "miss"  # nothing usable: the receiver's own full prefill

    @property
    def metric_label(self) -> str:
        return self.value.replace("-", "_")


class ExactKind(str, Enum):
    """Why (or whether) a pair shares a context exactly; see :mod:`droidspeak.exact`."""

    IDENTICAL = "identical"
    ACTIVATED = "activated"
    FROZEN_BOTTOM = "frozen-bottom"
    NONE = "none"


class TensorKind(str, Enum):
    """What a stored per-layer entry holds."""

    KV = "kv"  # K and V of every context token: [1, kv_heads, n, head_dim] each
    E = "e"  # the hidden state entering the layer: [1, n, hidden]
