"""The serving engine: hosted models, a request queue, a scheduler thread, batched decoding.

Models: the base is loaded once; every LoRA variant of it is an adapter on that one copy,
applied unmerged (PEFT), so N adapters cost N x ~10 MB, not N models. Full fine-tunes (other
weights of the same family) are their own models. All model code runs on the scheduler thread,
which activates the right adapter around every step.

Scheduling, per iteration: one prefill step of the request at the head of the queue (a store hit
is one step; a miss runs in chunks of ``prefill_chunk`` tokens, so a long prompt never holds the
others for more than a chunk), then one decode step for every running request, batched per model
(left-padded caches, rebuilt only when a request joins or leaves).

Sharing (``droidspeak.sharing``): each prefill looks up the longest stored prefix; the plan for a
cross-model hit is chosen by load as the paper's appendix does (requests waiting: the cheapest
plan within the quality budget; none waiting: the most recomputation whose predicted TTFT still
meets the SLO), with transfer time from the measured bandwidth.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..decode import stop_ids
from ..errors import DroidspeakError, UnknownModelError
from ..models import BASE_NAME, LoadedModel, adapter_identity, load_model, registry, resolve
from ..prompt import PromptTokens
from ..sharing import decide_safely, full_miss, miss_steps, prefill_hit
from ..store.cache import CacheStore
from ..surface import ModelSurface
from .config import Settings
from .metrics import Metrics

log = logging.getLogger("droidspeak.engine")


# ----------------------------------------------------------------------------- models
@dataclass
class Hosted:
    name: str
    kind: str  # base | lora | full
    parent: str | None
    loaded: LoadedModel
    peft: Any = None  # the shared PeftModel for the base and its adapters
    adapter: str | None = None  # PEFT adapter name (None: adapters disabled)


class ModelHost:
    """The models a node serves, by name."""

    @classmethod
    def of(cls, hosted: list[Hosted]) -> "ModelHost":
        """A host over models already loaded (tests, embedding)."""
        h = cls.__new__(cls)
        h.models = {x.name: x for x in hosted}
        return h

    def __init__(self, names: list[str] | None = None):
        specs = registry()
        names = names or list(specs)
        wanted = [resolve(n) for n in names]
        self.models: dict[str, Hosted] = {}
        loras = [s for s in wanted if s.kind == "lora" and s.parent == BASE_NAME]
        base = load_model(BASE_NAME)
        peft = None
        if loras:
            from peft import PeftModel

            peft = PeftModel.from_pretrained(base.model, str(loras[0].path), adapter_name=loras[0].name,
                                             is_trainable=False)
            for s in loras[1:]:
                peft.load_adapter(str(s.path), adapter_name=s.name, is_trainable=False)
            peft.eval()
        shared_model = peft if peft is not None else base.model
        for s in wanted:
            if s.kind == "base":
                self.models[s.name] = Hosted(s.name, "base", None, LoadedModel(s, shared_model, base.tokenizer,
                                             base.identity, base.family), peft, None)
            elif s in loras:
                ident = adapter_identity(s.path, base.identity)
                self.models[s.name] = Hosted(s.name, "lora", s.parent, LoadedModel(s, shared_model, base.tokenizer,
                                             ident, base.family, {"base_identity": base.identity}), peft, s.name)
            else:
                m = load_model(s.name)
                self.models[s.name] = Hosted(s.name, s.kind, s.parent, m)
        if not self.models:
            raise DroidspeakError("no models to serve")

    def get(self, name: str) -> Hosted:
        h = self.models.get(name)
        if h is None:
            raise UnknownModelError(f"model '{name}' is not served here; served: {', '.join(self.models)}")
        return h

    @contextmanager
    def active(self, name: str):
        """Run model code as ``name`` (selects its adapter on the shared base)."""
        h = self.get(name)
        if h.peft is None:
            yield h.loaded
        elif h.adapter is None:
            with h.peft.disable_adapter():
                yield h.loaded
        else:
            h.peft.set_adapter(h.adapter)
            yield h.loaded


# ----------------------------------------------------------------------------- requests
@dataclass
class Request:
    model: str
    prompt: PromptTokens
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    on_event: Callable[[str, dict[str, Any]], None] = lambda kind, data: None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: float = field(default_factory=time.time)
    cancelled: bool = False
    # state, owned by the engine thread
    out: list[int] = field(default_factory=list)
    text: str = ""
    length: int = 0  # tokens in this request's cache
    info: dict[str, Any] = field(default_factory=dict)
    t_prefill_start: float | None = None
    t_first: float | None = None
    t_last: float | None = None
    finish_reason: str | None = None
    _cache: Any = None  # a batch-1 cache until the request joins its decode group
    _gen: Any = None  # the running prefill (a generator)
    _rng: torch.Generator | None = None


class QueueFull(Exception):
    pass


class _Group:
    """Running requests of one model, decoded together from one left-padded cache."""

    def __init__(self, model: str):
        self.model = model
        self.reqs: list[Request] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # [B, T]
        self.pending: list[Request] = []
        self.leaving: set[str] = set()

    def rebuild(self, surface: ModelSurface, room: int) -> None:
        """Drop the leaving requests and let in up to ``room`` pending ones (the rest wait)."""
        keep = [r for r in self.reqs if r.id not in self.leaving]
        joining, self.pending = self.pending[:max(0, room)], self.pending[max(0, room):]
        per_req: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        T = self.mask.shape[1] if self.mask is not None else 0
        for i, r in enumerate(self.reqs):
            if r.id in self.leaving:
                continue
            per_req.append([(layer.keys[i:i + 1, :, T - r.length:], layer.values[i:i + 1, :, T - r.length:])
                            for layer in self.cache.layers])
        for r in joining:
            per_req.append([(layer.keys, layer.values) for layer in r._cache.layers])
            r._cache = None
        reqs = keep + joining
        self.leaving = set()
        self.reqs = reqs
        if not reqs:
            self.cache, self.mask = None, None
            return
        T = max(r.length for r in reqs)
        cache = surface.new_cache()
        for li in range(len(per_req[0])):
            ks, vs = [], []
            for kv in per_req:
                k, v = kv[li]
                pad = T - k.shape[2]
                if pad:
                    k = torch.cat([k.new_zeros(k.shape[0], k.shape[1], pad, k.shape[3]), k], dim=2)
                    v = torch.cat([v.new_zeros(v.shape[0], v.shape[1], pad, v.shape[3]), v], dim=2)
                ks.append(k)
                vs.append(v)
            cache.layers[li].update(torch.cat(ks), torch.cat(vs))
        self.cache = cache
        self.mask = torch.zeros(len(reqs), T, dtype=torch.long)
        for i, r in enumerate(reqs):
            self.mask[i, T - r.length:] = 1


# ----------------------------------------------------------------------------- the engine
class Engine:
    def __init__(self, host: ModelHost, store: CacheStore | None, settings: Settings, metrics: Metrics | None = None):
        self.host, self.store, self.settings = host, store, settings
        self.metrics = metrics or Metrics()
        self.waiting: deque[Request] = deque()
        self.prefilling: Request | None = None
        self.groups: dict[str, _Group] = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="droidspeak-engine", daemon=True)
        self.stops = {n: stop_ids(h.loaded.tokenizer) for n, h in host.models.items()}
        self.started = time.time()
        self.steps = 0

    # ------------------------------------------------------------------ public
    def start(self) -> "Engine":
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work, let running requests finish (up to ``timeout``), then stop."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout)

    def submit(self, req: Request) -> None:
        self.host.get(req.model)
        with self.cond:
            if self.stopping:
                raise QueueFull("server is shutting down")
            if len(self.waiting) >= self.settings.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests already waiting")
            if req.seed is not None:
                req._rng = torch.Generator().manual_seed(int(req.seed))
            self.waiting.append(req)
            self.metrics.waiting.labels(req.model).inc()
            self.cond.notify_all()

    def cancel(self, req: Request) -> None:
        req.cancelled = True

    def load(self) -> dict[str, int]:
        return {"waiting": len(self.waiting) + (self.prefilling is not None),
                "running": sum(len(g.reqs) + len(g.pending) for g in self.groups.values())}

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.waiting and self.prefilling is None and not self._any_running():
                    if self.stopping:
                        return
                    self.cond.wait(0.5)
                if self.stopping and not self._any_running() and self.prefilling is None:
                    for r in self.waiting:
                        self._finish(r, "abort", error="server shutting down")
                    self.waiting.clear()
                    return
            try:
                self._prefill_step()
                for g in list(self.groups.values()):
                    self._decode_step(g)
                self.steps += 1
            except Exception as e:  # noqa: BLE001 - the engine must keep serving
                log.exception("engine step failed: %s", e)
                self._fail_all_current(e)

    def _any_running(self) -> bool:
        return any(g.reqs or g.pending for g in self.groups.values())

    def _fail_all_current(self, e: Exception) -> None:
        if self.prefilling is not None:
            self._finish(self.prefilling, "error", error=f"internal error: {e}")
            self.prefilling = None
        for g in self.groups.values():
            for r in g.reqs + g.pending:
                self._finish(r, "error", error=f"internal error: {e}")
        self.groups.clear()

    # ------------------------------------------------------------------ prefill
    def _prefill_step(self) -> None:
        if self.prefilling is None:
            with self.cond:
                while self.waiting:
                    r = self.waiting.popleft()
                    self.metrics.waiting.labels(r.model).dec()
                    if r.cancelled:
                        self._finish(r, "abort")
                        continue
                    self.prefilling = r
                    break
            if self.prefilling is None:
                return
            r = self.prefilling
            r.t_prefill_start = time.time()
            self.metrics.queue.labels(r.model).observe(r.t_prefill_start - r.created)
            r._gen = self._prefill(r)
        r = self.prefilling
        if r.cancelled:
            self.prefilling = None
            self._finish(r, "abort")
            return
        with self.host.active(r.model):
            try:
                next(r._gen)
                return  # more chunks to go
            except StopIteration as done:
                res = done.value
        self.prefilling = None
        r._gen = None
        now = time.time()
        m = self.metrics
        m.prefill.labels(r.model).observe(now - r.t_prefill_start)
        m.prompt_tokens.labels(r.model).inc(len(r.prompt.ids))
        L = self.host.get(r.model).loaded.num_layers
        m.recomputed.labels(r.model).observe(len(res.recomputed_layers) / L)
        r.info = {k: v for k, v in res.info.items() if k in ("kind", "reused_tokens", "sender", "plan", "missing", "reason")}
        r.info["recomputed_layers"] = list(res.recomputed_layers)
        r.info["sender_model"] = self._name_of(res.info.get("sender"))
        if res.info.get("missing"):
            m.fallbacks.labels(r.model).inc()
        r._cache = res.cache
        r.length = len(r.prompt.ids)
        self._emit_token(r, self._sample(r, res.logits))
        if r.finish_reason is None:
            self.groups.setdefault(r.model, _Group(r.model)).pending.append(r)

    def _name_of(self, identity: str | None) -> str | None:
        if not identity:
            return None
        for n, h in self.host.models.items():
            if h.loaded.identity == identity:
                return n
        return f"identity:{identity[:12]}"

    def _prefill(self, r: Request):
        """A generator: yields between chunks; returns a PrefillResult (with .info)."""
        model = self.host.get(r.model).loaded
        store, s = self.store, self.settings
        prompt = r.prompt
        self.metrics.queries.labels(r.model).inc(len(prompt.ids))
        if store is not None:
            d = decide_safely(model, store, prompt, policy=s.policy if s.policy in ("bandwidth", "profile") else "load",
                              waiting=len(self.waiting), slo_s=s.ttft_slo_s, share=s.share,
                              min_hit_fraction=s.min_hit_fraction)
            if d.hit is not None:
                res = prefill_hit(model, store, d, prompt)
                kind = "same_model" if d.kind == "same-model" else "cross_model"
                self.metrics.hits.labels(r.model, kind).inc(d.hit.tokens)
                return res
        # miss: prefill the block-aligned part in chunks (capturing what others need), then the rest
        block = store.block if store is not None else 16
        ids = prompt.ids
        aligned = (len(ids) - 1) // block * block
        if aligned == 0:
            return full_miss(model, ids)
        return (yield from miss_steps(model, store, ids, aligned, chunk=s.prefill_chunk))

    # ------------------------------------------------------------------ decode
    def _decode_step(self, g: _Group) -> None:
        for r in g.reqs:
            if r.cancelled and r.id not in g.leaving:
                g.leaving.add(r.id)
                self._finish(r, "abort")
        room = self.settings.max_batch - (len(g.reqs) - len(g.leaving))
        if (g.pending and room > 0) or g.leaving:
            with self.host.active(g.model) as model:
                g.rebuild(ModelSurface(model.model), room)
        self.metrics.running.labels(g.model).set(len(g.reqs) + len(g.pending))
        if g.reqs:
            self._decode(g)

    @torch.inference_mode()
    def _decode(self, g: _Group) -> None:
        """One batched decode step for every request of the group."""
        reqs = g.reqs
        with self.host.active(g.model) as model:
            surface = ModelSurface(model.model)
            ids = torch.tensor([[r.out[-1]] for r in reqs])
            pos = torch.tensor([[r.length] for r in reqs])
            mask = torch.cat([g.mask, torch.ones(len(reqs), 1, dtype=torch.long)], dim=1)
            out = surface.lm(input_ids=ids, attention_mask=mask, position_ids=pos, cache=g.cache, use_cache=True,
                             logits_to_keep=1)
            g.mask = mask
        logits = out.logits[:, -1]
        for i, r in enumerate(reqs):
            r.length += 1
            self._emit_token(r, self._sample(r, logits[i]))
            if r.finish_reason is not None:
                g.leaving.add(r.id)

    def _sample(self, r: Request, logits: torch.Tensor) -> int:
        if r.temperature < 1e-4:  # greedy (also for temperatures so small that they overflow)
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.double() / r.temperature, dim=-1)
        if not torch.isfinite(probs).all() or probs.sum() <= 0:
            return int(torch.argmax(logits))
        if r.top_p < 1.0:
            sp, si = torch.sort(probs, descending=True)
            keep = torch.cumsum(sp, 0) - sp < r.top_p
            probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
            probs = probs / probs.sum()
        return int(torch.multinomial(probs, 1, generator=r._rng))

    def _emit_token(self, r: Request, tok: int) -> None:
        now = time.time()
        m = self.metrics
        if r.t_first is None:
            r.t_first = now
            m.ttft.labels(r.model).observe(now - r.created)
        elif r.t_last is not None:
            m.itl.labels(r.model).observe(now - r.t_last)
        r.t_last = now
        tokenizer = self.host.get(r.model).loaded.tokenizer
        if tok in self.stops[r.model]:
            self._finish(r, "stop")
            return
        r.out.append(tok)
        text = tokenizer.decode(r.out, skip_special_tokens=True) if tokenizer is not None else " ".join(map(str, r.out))
        delta = text[len(r.text):]
        stop_hit = next((s for s in r.stop if s and s in text), None)
        if stop_hit is not None:
            cut = text.index(stop_hit)
            delta = text[len(r.text):cut] if cut > len(r.text) else ""
            r.text = text[:cut]
            if delta:
                r.on_event("token", {"text": delta})
            self._finish(r, "stop")
            return
        if not text.endswith("\ufffd"):  # hold back half a UTF-8 character
            r.text = text
            if delta:
                r.on_event("token", {"text": delta})
        if len(r.out) >= r.max_tokens or r.length + 1 >= self.settings.max_model_len:
            self._finish(r, "length")

    def _finish(self, r: Request, reason: str, error: str | None = None) -> None:
        if r.finish_reason is not None and reason != "error":
            return
        r.finish_reason = reason
        now = time.time()
        self.metrics.e2e.labels(r.model).observe(now - r.created)
        self.metrics.requests.labels(r.model, reason).inc()
        self.metrics.generation_tokens.labels(r.model).inc(len(r.out))
        r.on_event("done", {"finish_reason": reason, "error": error})

