"""Server settings: one table, read from defaults, then a config file, then the environment, then flags.

The table is the only place a setting is named: the sharing options a request's prefill runs with
(:meth:`Settings.share_options`) and the quality guard's settings (:meth:`Settings.guard_settings`)
are made from it by name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import DroidspeakError
from ..kinds import POLICIES
from ..sharing.options import ShareOptions
from .guard import GuardSettings


def _f(default: Any, env: str, help_: str, choices: tuple[str, ...] | None = None, secret: bool = False):
    # a secret never appears in a repr, a log line or the printed table (which shows defaults only)
    return field(default=default, repr=not secret, metadata={"env": env, "help": help_, "choices": choices})


@dataclass
class Settings:
    host: str = _f("127.0.0.1", "DROIDSPEAK_HOST", "address to bind")
    port: int = _f(8000, "DROIDSPEAK_PORT", "port to bind")
    models: str = _f("", "DROIDSPEAK_MODELS", "comma-separated models to host (default: the base and every shipped variant)")
    store: str = _f("memory:2GB", "DROIDSPEAK_STORE", "KV/E store tiers: memory[:SIZE], disk:PATH[::SIZE], "
                    "redis[s]://[USER:PASSWORD@]HOST:PORT", secret=True)
    namespace: str = _f("default", "DROIDSPEAK_NAMESPACE", "deployment namespace inside the store")
    store_secret: str = _f("", "DROIDSPEAK_STORE_SECRET", "deployment secret (16+ bytes, the same on every node of a "
                           "namespace): disk and Redis tiers hold values authenticated under it and refuse any "
                           "other (empty: unauthenticated, allowed only for tiers on this machine)", secret=True)
    store_encrypt: bool = _f(False, "DROIDSPEAK_STORE_ENCRYPT", "also encrypt values in disk and Redis tiers "
                             "(AES-256-GCM under a key derived from store_secret)")
    store_write_queue: int = _f(64, "DROIDSPEAK_STORE_WRITE_QUEUE", "contexts queued for the disk and Redis tiers, "
                                "written off the request's path (a full queue drops the write, never the request)")
    insecure_store: bool = _f(False, "DROIDSPEAK_INSECURE_STORE", "accept a Redis tier on another machine without a "
                              "store secret (anyone who can write to it can change this node's answers)")
    api_key: str = _f("", "DROIDSPEAK_API_KEY", "require 'Authorization: Bearer KEY' (empty: no key)", secret=True)
    max_model_len: int = _f(8192, "DROIDSPEAK_MAX_MODEL_LEN", "prompt + completion tokens at most")
    max_tokens_limit: int = _f(2048, "DROIDSPEAK_MAX_TOKENS_LIMIT", "largest max_tokens a request may ask")
    max_request_bytes: int = _f(1 << 20, "DROIDSPEAK_MAX_REQUEST_BYTES", "largest request body")
    max_waiting: int = _f(64, "DROIDSPEAK_MAX_WAITING", "queued requests beyond this get 503")
    max_batch: int = _f(8, "DROIDSPEAK_MAX_BATCH", "requests decoded together per model")
    prefill_chunk: int = _f(1024, "DROIDSPEAK_PREFILL_CHUNK", "tokens per prefill step (others decode in between)")
    warmup_tokens: int = _f(2048, "DROIDSPEAK_WARMUP_TOKENS", "tokens of a throwaway prompt each decode group "
                            "prefills as a miss at start, before /health says ok, so the first request pays no "
                            "one-time costs (0: none)")
    packed_weights: bool = _f(False, "DROIDSPEAK_PACKED_WEIGHTS", "also keep each model's projection weights packed "
                              "for oneDNN, for decode steps of 2-16 requests (their projections ~1.5x faster here, four "
                              "models served at once 1.05-1.14x in two runs: BENCHMARKS.md); costs the weights' bytes again")
    ttft_slo_s: float = _f(5.0, "DROIDSPEAK_TTFT_SLO_S", "TTFT target used to choose plans when the queue is empty")
    policy: str = _f("load", "DROIDSPEAK_POLICY", "plan choice: load (paper appendix + bandwidth), bandwidth, profile",
                     choices=POLICIES)
    share: bool = _f(True, "DROIDSPEAK_SHARE", "share caches across models, exact and profiled (false: same-model "
                   "prefix hits only)")
    min_hit_fraction: float = _f(0.5, "DROIDSPEAK_MIN_HIT_FRACTION",
                                 "use a stored prefix only when it covers this much of the prompt")
    shadow_fraction: float = _f(0.02, "DROIDSPEAK_SHADOW_FRACTION",
                                "share of profiled cross-model hits re-checked against the receiver's own prefill "
                                "when the engine is idle (0: the quality guard is off)")
    shadow_tokens: int = _f(16, "DROIDSPEAK_SHADOW_TOKENS", "generated tokens a shadow check compares")
    guard_window: int = _f(32, "DROIDSPEAK_GUARD_WINDOW", "shadow checks kept per pair and plan")
    guard_min_samples: int = _f(8, "DROIDSPEAK_GUARD_MIN_SAMPLES", "checks in the window before the guard may widen a plan")
    guard_tolerance: float = _f(0.05, "DROIDSPEAK_GUARD_TOLERANCE",
                                "widen a plan when live agreement falls this far below the profile's verified one")
    traffic_per_pair: int = _f(200, "DROIDSPEAK_TRAFFIC_PER_PAIR",
                               "checked prompts kept per pair for `droidspeak profile --from-traffic`")
    guard_seed: int = _f(0, "DROIDSPEAK_GUARD_SEED", "seed of the shadow sampling")

    @classmethod
    def load(cls, config_file: str | None = None, overrides: dict[str, Any] | None = None) -> "Settings":
        s = cls()
        types = {f.name: type(f.default) for f in fields(cls)}
        if config_file:
            p = Path(config_file)
            if not p.is_file():
                raise DroidspeakError(f"config file not found: {p}")
            try:
                if p.suffix == ".toml":
                    import tomllib

                    data = tomllib.loads(p.read_text())
                else:
                    data = json.loads(p.read_text())
            except Exception as e:  # noqa: BLE001
                raise DroidspeakError(f"cannot read config {p}: {e}") from None
            for k, v in data.items():
                k = k.replace("-", "_")
                if k not in types:
                    raise DroidspeakError(f"unknown setting '{k}' in {p}; known: {', '.join(types)}")
                setattr(s, k, cls._cast(k, v, types[k]))
        for f in fields(cls):
            if f.metadata["env"] in os.environ:
                setattr(s, f.name, cls._cast(f.name, os.environ[f.metadata["env"]], types[f.name]))
        for k, v in (overrides or {}).items():
            if v is not None:
                setattr(s, k, cls._cast(k, v, types[k]))
        return s

    @classmethod
    def _cast(cls, name: str, v: Any, typ: type) -> Any:
        """``v`` (a string from the environment or a flag, or a JSON/TOML value) as the setting's type; anything
        that is not plainly one (``share=maybe``, ``port=80.5``) is refused in one line, never guessed."""
        try:
            if typ is bool:
                out = v if isinstance(v, bool) else _BOOLS[str(v).strip().lower()]
            elif isinstance(v, bool) or (typ is int and isinstance(v, float) and not v.is_integer()):
                raise ValueError(v)
            else:
                out = typ(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError, KeyError):
            kind = "boolean (true/false, 1/0, yes/no, on/off)" if typ is bool else typ.__name__
            raise DroidspeakError(f"setting {name}={v!r} is not a {kind}") from None
        choices = next(f.metadata["choices"] for f in fields(cls) if f.name == name)
        if choices and out not in choices:
            raise DroidspeakError(f"setting {name}={v!r} is not one of {', '.join(choices)}")
        return out

    def share_options(self, waiting: int, room: int) -> ShareOptions:
        """How a request's prefill may share: these settings, the queue behind it, its decoding room."""
        return ShareOptions(policy=self.policy, share=self.share, min_hit_fraction=self.min_hit_fraction,  # type: ignore[arg-type]
                            waiting=waiting, slo_s=self.ttft_slo_s, chunk=self.prefill_chunk, room=room)

    def guard_settings(self) -> GuardSettings:
        return GuardSettings(shadow_fraction=self.shadow_fraction, shadow_tokens=self.shadow_tokens,
                             window=self.guard_window, min_samples=self.guard_min_samples,
                             tolerance=self.guard_tolerance, seed=self.guard_seed)

    @classmethod
    def markdown(cls) -> str:
        """The settings table as the README shows it (a test keeps the two the same)."""
        rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
        rows += [f"| `{n}` | `{e}` | `{d}` | {h} |" for n, e, d, h in cls.table()]
        return "\n".join(rows)

    @classmethod
    def table(cls) -> list[tuple[str, str, Any, str]]:
        return [(f.name, f.metadata["env"], f.default, f.metadata["help"]) for f in fields(cls)]

    def values(self) -> list[tuple[str, str, str, bool]]:
        """Every setting's name, environment variable, value as loaded (a secret shows only whether it is set),
        and whether that value differs from the default."""
        out = []
        for f in fields(self):
            v = getattr(self, f.name)
            out.append((f.name, f.metadata["env"], str(v) if f.repr else ("(set)" if v else "(empty)"), v != f.default))
        return out


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
