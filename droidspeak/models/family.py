"""Model families and the one rule that says who may share caches with whom.

Two models may exchange KV/E caches only when every quantity that shapes a cache entry or the
meaning of a token position is identical: architecture, layer count, hidden size, attention and
KV heads, head dim, RoPE settings, vocabulary and tokenizer. The fingerprint's digest is part of
every store key, so entries of another family can never be looked up by mistake.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import IncompatibleModelsError


@dataclass(frozen=True, slots=True)
class FamilyFingerprint:
    """Everything that must match for two models to share KV caches."""

    architecture: str  # e.g. "LlamaForCausalLM"
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: str  # canonical JSON of the RoPE parameters (type, theta, scaling)
    vocab_size: int
    tokenizer_hash: str  # hash of the vocabulary and special tokens
    attention: str = ""  # per-layer attention kinds and sliding window, where any layer slides ("": all full)

    @property
    def digest(self) -> str:
        """Short stable hex digest of the fingerprint (used in store keys and profiles)."""
        d = asdict(self)
        if not d["attention"]:  # all-full-attention families keep the digest they always had
            del d["attention"]
        payload = json.dumps(d, sort_keys=True).encode()
        return hashlib.blake2b(payload, digest_size=8).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"digest": self.digest}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FamilyFingerprint":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True, slots=True)
class Compatibility:
    """The answer of :func:`compatibility`: ``ok`` and, when not ok, a one-line reason."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


_FIELD_NAMES = {
    "architecture": "architecture",
    "num_layers": "layer count",
    "hidden_size": "hidden size",
    "num_heads": "attention heads",
    "num_kv_heads": "KV heads",
    "head_dim": "head dim",
    "rope": "RoPE settings",
    "vocab_size": "vocabulary size",
    "tokenizer_hash": "tokenizer",
    "attention": "attention layout (sliding windows)",
}


def compatibility(a: FamilyFingerprint, b: FamilyFingerprint) -> Compatibility:
    """Decide whether models of families ``a`` and ``b`` may share KV/E caches.

    Pure and total: no I/O, never raises. The reason names every field that differs, or the
    architecture that droidspeak's model surface does not know (then nothing may run at all).
    """
    from .surface import unsupported_reason

    for arch in dict.fromkeys((a.architecture, b.architecture)):
        why = unsupported_reason(arch)
        if why:
            return Compatibility(False, why)
    diffs = []
    for f in fields(FamilyFingerprint):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if va != vb:
            diffs.append(f"{_FIELD_NAMES[f.name]} differs ({va} vs {vb})")
    if diffs:
        return Compatibility(False, "different model families: " + "; ".join(diffs))
    return Compatibility(True)


def require_compatible(a: FamilyFingerprint, b: FamilyFingerprint, a_name: str = "the sender",
                       b_name: str = "the receiver") -> None:
    """:func:`compatibility`, raising :class:`~droidspeak.errors.IncompatibleModelsError` (one line) when not ok."""
    verdict = compatibility(a, b)
    if not verdict.ok:
        raise IncompatibleModelsError(f"{a_name} and {b_name} may not share caches: {verdict.reason}")


def rope_settings(config: Any) -> str:
    """Canonical JSON of the RoPE parameters of a transformers config (v4 or v5 layout)."""
    params = getattr(config, "rope_parameters", None)
    if params is None:
        params = {"rope_theta": getattr(config, "rope_theta", None)}
        scaling = getattr(config, "rope_scaling", None)
        if scaling:
            params.update(scaling)
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        params = {k: dict(v) for k, v in params.items()}  # per-layer-type parameters
    return json.dumps(params, sort_keys=True, default=str)


def tokenizer_hash(tokenizer: Any) -> str:
    """Hash of a tokenizer's vocabulary, added tokens and special tokens."""
    h = hashlib.blake2b(digest_size=8)
    vocab = tokenizer.get_vocab()
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{token}\n".encode())
    specials = sorted(set(getattr(tokenizer, "all_special_tokens", []) or []))
    h.update(("specials:" + "\x1f".join(specials)).encode())
    return h.hexdigest()


def attention_layout(config: Any) -> str:
    """Canonical JSON of the per-layer attention kinds and the sliding window, "" when every layer
    attends to the whole context."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    try:
        kinds, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    except (AttributeError, TypeError, ValueError, KeyError):  # a layout transformers cannot say: no sharing anyway
        return json.dumps({"unknown": type(config).__name__})
    if all(k == "full_attention" for k in kinds):
        return ""
    return json.dumps({"layers": list(kinds), "sliding_window": getattr(config, "sliding_window", None)})


def fingerprint(config: Any, tok_hash: str) -> FamilyFingerprint:
    """Family fingerprint of a transformers config and a tokenizer hash."""
    archs = getattr(config, "architectures", None) or [type(config).__name__.replace("Config", "ForCausalLM")]
    num_heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // num_heads)
    return FamilyFingerprint(
        architecture=str(archs[0]),
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        num_heads=num_heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or num_heads),
        head_dim=head_dim,
        rope=rope_settings(config),
        vocab_size=int(config.vocab_size),
        tokenizer_hash=tok_hash,
        attention=attention_layout(config),
    )
