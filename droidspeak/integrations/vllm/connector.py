"""droidspeak's KV connector for vLLM (``KVConnectorBase_V1``, loaded through ``kv_connector_module_path``).

What it does, per request vLLM schedules:

* **the base model, or a plain LoRA**: its prompt's K/V go into the droidspeak store once its prefill is
  done, under its own weight identity (the same keys, sealing and checks as ``droidspeak serve``), every
  token of it; a later request of the *same* model, on this vLLM or another one sharing the store
  (Redis), loads the longest stored prefix of its prompt (all but its last token) instead of computing it.
* **an activated adapter** (``alora_invocation_tokens``, served through :func:`.adapters.export_for_vllm`):
  the tokens before its activation point (the start of the last occurrence of its invocation sequence)
  are loaded from its *base's* entries, exactly that many, so vLLM computes only the invocation and
  what follows, with the adapter on: the activated adapter's own semantics, and its answer is PEFT's.
  When the base has not stored all of those tokens, nothing is loaded (loading fewer would let vLLM
  compute the rest with the adapter on, which is not the activated adapter's cache). Its own K/V is
  never stored (it is the base's before the activation point, its own after).

Nothing else is ever loaded: entries are found by the producer's weight identity and the family
fingerprint of the served model, both computed from the weight files; each entry is decoded and checked
(seal, shape, token count) on the worker before it is copied in, and one that fails marks the blocks
of that load as failed, which vLLM recomputes (``kv_load_failure_policy: recompute``).

Scheduler side and worker side are two instances (often two processes); they share only the store and
the metadata vLLM passes from one to the other each step (:class:`DroidspeakMetadata`).

Settings, in ``kv_connector_extra_config``: ``store`` (default ``disk:$DROIDSPEAK_HOME/vllm-store``; a
``redis://`` URL to share between nodes), ``namespace`` (default ``default``), ``insecure_store``; the
store secret comes from ``DROIDSPEAK_STORE_SECRET`` (required for a Redis on another machine);
``write_behind`` (a queue length, default 0): the worker writes a finished prompt on a background thread
instead of within the step that finished it (the step returns sooner; a request that arrives at once
may miss what is still queued).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from ...errors import DroidspeakError
from ...kinds import ExactKind, TensorKind
from ...models.exact import WeightSummary, activation_point, exactness
from ...models.loading import summarize_dir
from ...paths import home
from ...store import Hit, open_store
from .adapters import Served, served_adapter
from .paged import PagedLayout, layout_of, slots_of

log = logging.getLogger("vllm.droidspeak")  # under vLLM's logger: its lines in vLLM's output
_LAYER_RE = re.compile(r"layers\.(\d+)\.")


@dataclass
class Load:
    """Copy positions ``[start, end)`` of a stored context into a request's slots."""

    req_id: str
    sender: str
    chain: str
    stored_tokens: int
    start: int
    end: int
    slots: list[int]


@dataclass
class Save:
    """Store a request's prompt (``ids``), read from its slots, under ``producer``'s identity."""

    req_id: str
    ids: list[int]
    slots: list[int]
    producer: dict


@dataclass
class DroidspeakMetadata(KVConnectorMetadata):
    loads: list[Load] = field(default_factory=list)
    saves: list[Save] = field(default_factory=list)


@dataclass
class _Track:
    ids: list[int]
    blocks: list[int]
    producer: dict


class DroidspeakConnector(KVConnectorBase_V1):
    """See the module docstring."""

    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        self._block = int(vllm_config.cache_config.block_size)
        self._dtype = vllm_config.model_config.dtype
        spec = str(extra.get("store") or f"disk:{home() / 'vllm-store'}")
        if any(p.strip().startswith("memory") for p in spec.split(",")):
            raise DroidspeakError("the vLLM connector's store must be shared between vLLM's processes: "
                                  "use disk:PATH or redis://HOST:PORT, not memory")
        self.store = open_store(spec, str(extra.get("namespace", "default")),
                                secret=os.environ.get("DROIDSPEAK_STORE_SECRET", ""),
                                insecure=bool(extra.get("insecure_store", False)),
                                write_behind=int(extra.get("write_behind", 0)) if role == KVConnectorRole.WORKER else 0)
        self.family, self.base = summarize_dir(Path(vllm_config.model_config.model))
        self._served: dict[str, Served | None] = {}
        groups = getattr(kv_cache_config, "kv_cache_groups", None)
        # one paged cache group, every layer full attention: what the store's entries are (a sliding-window or
        # hybrid model keeps other groups with other blocks: the connector then moves nothing)
        self.off = ("the model's layers do not all attend to the whole context" if self.family.attention else
                    f"{len(groups)} KV cache groups" if groups is not None and len(groups) != 1 else "")
        if self.off:
            log.warning("droidspeak connector: %s; it moves nothing (vLLM computes every prompt)", self.off)
        # scheduler side
        self._planned: dict[str, Load] = {}  # req_id -> the load get_num_new_matched_tokens found
        self._stored: dict[str, int] = {}  # req_id -> tokens of its prompt already in the store
        self._loading: dict[str, Load] = {}  # after allocation: to be sent to the worker
        self._track: dict[str, _Track] = {}  # prompts to store once their prefill is done
        # worker side
        self._caches: dict[int, torch.Tensor] = {}
        self._layout: PagedLayout | None = None
        self._failed_blocks: set[int] = set()
        if role == KVConnectorRole.SCHEDULER:
            policy = getattr(self._kv_transfer_config, "kv_load_failure_policy", "recompute")
            if policy != "recompute":
                log.warning("droidspeak connector: kv_load_failure_policy is '%s': a stored entry that fails its "
                            "checks fails the request; set it to 'recompute' to compute such requests instead", policy)
        log.info("droidspeak connector (%s): base %s, family %s, store %s", role.name, self.base.identity[:12],
                 self.family.digest, spec.split("@")[-1])

    # ------------------------------------------------------------------ who a request is
    def _who(self, lora_request: Any) -> Served | None:
        """The served model of a request (None: an adapter whose files cannot be read: nothing is shared)."""
        if self.off:
            return None
        if lora_request is None:
            return Served(self.base, "base")
        path = str(getattr(lora_request, "lora_path", "") or getattr(lora_request, "path", ""))
        if path not in self._served:
            try:
                served = served_adapter(Path(path), self.base)
            except DroidspeakError as e:
                log.warning("droidspeak connector: adapter %s shares nothing: %s", path, e)
                served = None
            if served is not None and served.kind == "alora" and \
                    exactness(self.base, served.weights).kind != ExactKind.ACTIVATED:
                served = None  # the base's cache is not provably its own: it shares nothing
            self._served[path] = served
        return self._served[path]

    # ------------------------------------------------------------------ scheduler side
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        ids = list(request.prompt_token_ids or [])
        self._planned.pop(request.request_id, None)
        who = self._who(request.lora_request)
        if who is None or len(ids) < 2:
            return 0, False
        if who.kind == "alora":
            act = activation_point(ids, who.activation)
            if act is None or act <= num_computed_tokens:
                return 0, False
            looked, sender = ids[:act], self.base.identity
        else:
            looked, sender = ids, who.weights.identity
        try:
            hit = self.store.lookup_prefix(self.family, looked, sender, num_layers=self.family.num_layers)
        except Exception as e:  # noqa: BLE001 - a store fault is a miss
            log.warning("droidspeak connector: store lookup failed (%s); vLLM computes the prompt", e)
            return 0, False
        stored = hit.tokens if hit is not None else 0
        if who.kind == "alora":
            end = act if stored == act else 0  # exactly every token before the activation point, or none
        else:
            self._stored[request.request_id] = stored  # the whole prompt stored: nothing to save afterwards
            end = min(stored, len(ids) - 1)  # one token is computed: it makes the first logits
        if end <= num_computed_tokens:
            return 0, False
        self._planned[request.request_id] = Load(request.request_id, hit.sender, hit.chain, hit.stored_tokens,
                                                 num_computed_tokens, end, [])
        return end - num_computed_tokens, False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        plan = self._planned.pop(request.request_id, None)
        if plan is not None and num_external_tokens > 0:
            plan.end = plan.start + num_external_tokens
            self._loading[request.request_id] = plan

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        meta = DroidspeakMetadata()
        n_sched = scheduler_output.num_scheduled_tokens
        for new in scheduler_output.scheduled_new_reqs:
            blocks = list(new.block_ids[0])
            self._add_load(meta, new.req_id, blocks)
            who = self._who(new.lora_request)
            ids = list(new.prompt_token_ids or [])
            if who is not None and who.kind != "alora" and self._stored.pop(new.req_id, 0) < len(ids):
                self._track[new.req_id] = _Track(ids, blocks, who.weights.to_dict())
            self._maybe_save(meta, new.req_id, new.num_computed_tokens + n_sched.get(new.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        for i, rid in enumerate(cached.req_ids):
            new_blocks = cached.new_block_ids[i]
            resumed = rid in cached.resumed_req_ids
            t = self._track.get(rid)
            if t is not None and new_blocks is not None:
                t.blocks = list(new_blocks[0]) if resumed else t.blocks + list(new_blocks[0])
            if resumed and rid in self._loading and new_blocks is not None:
                self._add_load(meta, rid, list(new_blocks[0]))
            self._maybe_save(meta, rid, cached.num_computed_tokens[i] + n_sched.get(rid, 0))
        return meta

    def _add_load(self, meta: DroidspeakMetadata, req_id: str, blocks: list[int]) -> None:
        plan = self._loading.pop(req_id, None)
        if plan is not None:
            plan.slots = slots_of(blocks, self._block, plan.start, plan.end)
            meta.loads.append(plan)

    def _maybe_save(self, meta: DroidspeakMetadata, req_id: str, computed: int) -> None:
        t = self._track.get(req_id)
        if t is not None and computed >= len(t.ids):
            del self._track[req_id]
            meta.saves.append(Save(req_id, t.ids, slots_of(t.blocks, self._block, 0, len(t.ids)), t.producer))

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict | None]:
        for d in (self._track, self._loading, self._planned, self._stored):
            d.pop(request.request_id, None)
        return False, None

    # ------------------------------------------------------------------ worker side
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        for name, t in kv_caches.items():
            m = _LAYER_RE.search(name)
            if m is not None:
                self._caches[int(m.group(1))] = t
        if self.off:
            return
        first = self._caches.get(0)
        self._layout = None if first is None else layout_of(first, self._block, self.family.num_kv_heads,
                                                              self.family.head_dim)
        if self._layout is not None and self._layout.name == "cpu" and self._dtype != torch.float32:
            self._layout = None  # the CPU backend's other kernels (AMX, bf16) may pack K otherwise: not verified
        if self._layout is None or len(self._caches) != self.family.num_layers:
            shape = tuple(first.shape) if first is not None else None
            log.warning("droidspeak connector: paged cache of %d layers, shape %s, is no layout it knows: it moves "
                        "nothing (vLLM computes every prompt)", len(self._caches), shape)
            self._layout = None

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, DroidspeakMetadata):
            return
        for load in meta.loads:
            if self._layout is None or not self._load(load):
                self._failed_blocks.update(s // self._block for s in load.slots)

    def _load(self, load: Load) -> bool:
        hit = Hit(load.sender, load.end, load.chain, load.stored_tokens, self.family.num_layers, ())
        slots = torch.tensor(load.slots, dtype=torch.long)
        fetched = []
        for layer in range(self.family.num_layers):  # every layer checked before any is copied in
            try:
                kv = self.store.fetch_one(hit, (TensorKind.KV, layer), self.family, self._dtype)
            except Exception as e:  # noqa: BLE001 - a fetch fault is a recompute, never a crash
                log.warning("droidspeak connector: fetch failed (%s)", e)
                kv = None
            if kv is None:
                log.warning("droidspeak connector: %s: a stored entry failed its checks; vLLM recomputes it",
                            load.req_id)
                return False
            fetched.append(kv)
        for layer, (k, v) in enumerate(fetched):
            self._layout.scatter(self._caches[layer], slots.to(self._caches[layer].device),
                                 k[:, :, load.start:load.end], v[:, :, load.start:load.end])
        return True

    def get_block_ids_with_load_errors(self) -> set[int]:
        out, self._failed_blocks = self._failed_blocks, set()
        return out

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # the prompt is read whole once its prefill is done (wait_for_save)

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, DroidspeakMetadata) or self._layout is None:
            return
        for save in meta.saves:
            slots = torch.tensor(save.slots, dtype=torch.long)
            kv = {layer: self._layout.gather(self._caches[layer], slots.to(self._caches[layer].device))
                  for layer in range(self.family.num_layers)}
            try:
                self.store.put_context(self.family, WeightSummary.from_dict(save.producer), save.ids,
                                       self.family.num_layers, lambda layer: (kv[layer][0].cpu(), kv[layer][1].cpu()),
                                       {}, whole=True)
            except Exception as e:  # noqa: BLE001 - a failed save is a later miss, never a failed request
                log.warning("droidspeak connector: store write failed (%s)", e)

    def shutdown(self) -> None:
        self.store.flush(30)
