"""Entry serialisation: safetensors bytes (never pickle) with the key and a checksum inside.

An entry's safetensors metadata holds the key it was written under, the transfer format, the
original dtype and a blake2b checksum of the tensor bytes. Decoding refuses, with
``CorruptEntry``, anything whose header, length, key, checksum or shape does not fit, so a
truncated, corrupted, misplaced or foreign entry is never used.

Transfer formats: ``native`` (as computed), ``fp16``, ``bf16``, ``int8`` (per-row absmax over the
last dimension, one fp32 scale per row).
"""

from __future__ import annotations

import hashlib
import json
import struct

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

FORMATS = ("native", "fp16", "bf16", "int8")
_MAX_HEADER = 1 << 20


class CorruptEntry(Exception):
    """A stored value that must not be used (the reason is the message)."""


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _encode_one(t: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "native":
        return {"x": t.contiguous()}
    if fmt == "fp16":
        return {"x": t.to(torch.float16).contiguous()}
    if fmt == "bf16":
        return {"x": t.to(torch.bfloat16).contiguous()}
    if fmt == "int8":
        f = t.float()
        scale = f.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0
        return {"q": torch.round(f / scale).clamp(-127, 127).to(torch.int8).contiguous(), "s": scale.contiguous()}
    raise ValueError(f"unknown transfer format '{fmt}'; known: {', '.join(FORMATS)}")


def _decode_one(parts: dict[str, torch.Tensor], fmt: str, dtype: torch.dtype) -> torch.Tensor:
    if fmt == "int8":
        return (parts["q"].float() * parts["s"]).to(dtype)
    return parts["x"].to(dtype)


def encode(key: str, tensors: dict[str, torch.Tensor], fmt: str = "native") -> bytes:
    """Serialise named tensors (e.g. ``{"k": K, "v": V}``) under ``key``."""
    enc: dict[str, torch.Tensor] = {}
    dtypes = {}
    for name, t in tensors.items():
        dtypes[name] = str(t.dtype).replace("torch.", "")
        for part, x in _encode_one(t.detach().cpu(), fmt).items():
            enc[f"{name}.{part}"] = x
    meta = {"key": key, "fmt": fmt, "dtypes": json.dumps(dtypes), "blake2b": _digest(enc)}
    return st_save(enc, metadata=meta)


def header(data: bytes) -> dict:
    if len(data) < 8:
        raise CorruptEntry("value shorter than a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise CorruptEntry("safetensors header length does not fit the value (truncated?)")
    try:
        return json.loads(data[8:8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptEntry("safetensors header is not JSON") from None


def decode(data: bytes, key: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Tensors of an entry written under ``key``; raises :class:`CorruptEntry` on any mismatch."""
    hdr = header(data)
    meta = hdr.get("__metadata__") or {}
    if meta.get("key") != key:
        raise CorruptEntry(f"entry was written under another key ({str(meta.get('key'))[:60]})")
    fmt = meta.get("fmt")
    if fmt not in FORMATS:
        raise CorruptEntry(f"unknown transfer format {fmt!r}")
    try:
        enc = st_load(bytes(data))
    except Exception as e:  # noqa: BLE001 - any parse failure is corruption
        raise CorruptEntry(f"unreadable safetensors payload: {str(e)[:80]}") from None
    if _digest(enc) != meta.get("blake2b"):
        raise CorruptEntry("checksum mismatch")
    try:
        dtypes = json.loads(meta["dtypes"])
    except (KeyError, json.JSONDecodeError):
        raise CorruptEntry("entry metadata lacks dtypes") from None
    out = {}
    for name, dt in dtypes.items():
        parts = {k.split(".", 1)[1]: v for k, v in enc.items() if k.split(".", 1)[0] == name}
        out[name] = _decode_one(parts, fmt, dtype or getattr(torch, dt))
    return out
