"""The serving engine: a thread that schedules, runs and postprocesses, one step at a time.

``Engine.step`` is the whole loop: the scheduler picks one prefill step and the decode groups
(:mod:`.scheduler`), the model runner executes them (:mod:`.runner`: sharing, caches, batched
decode, sampling), and the output processor turns tokens into text, stop decisions and metrics
(:mod:`.output`). Requests arrive from the HTTP threads through :meth:`Engine.submit`.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from ..kinds import ShareKind
from ..store.cache import CacheStore
from .config import Settings
from .guard import QualityGuard, ShadowJob
from .host import Hosted, ModelHost
from .metrics import Metrics
from .output import OutputProcessor
from .request import QueueFull, Request, Status
from .runner import ModelRunner
from .scheduler import Scheduler
from .traffic import TrafficLog, traffic_backend

log = logging.getLogger("droidspeak.engine")
__all__ = ["Engine", "Hosted", "ModelHost", "QueueFull", "Request"]


class Engine:
    def __init__(self, host: ModelHost, store: CacheStore | None, settings: Settings, metrics: Metrics | None = None):
        self.host, self.store, self.settings = host, store, settings
        self.metrics = metrics or Metrics()
        self.scheduler = Scheduler(settings.max_waiting)
        self.guard = self._make_guard(settings, store)
        self.runner = ModelRunner(host, store, settings, self.guard)
        self.output = OutputProcessor(host, self.metrics, settings.max_model_len)
        self._shadow = None  # the running shadow check (a generator) and its model
        self.thread = threading.Thread(target=self._loop, name="droidspeak-engine", daemon=True)
        self.started = time.time()

    # ------------------------------------------------------------------ public (any thread)
    def start(self) -> "Engine":
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work, let running requests finish (up to ``timeout``), then stop."""
        self.scheduler.stop()
        self.thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self.scheduler.stopping

    def submit(self, req: Request) -> None:
        self.host.get(req.model)
        if req.seed is not None:
            req.rng = torch.Generator().manual_seed(int(req.seed))
        self.scheduler.add(req)
        self.metrics.waiting.labels(req.model).inc()

    def cancel(self, req: Request) -> None:
        req.cancelled = True

    def load(self) -> dict[str, int]:
        return self.scheduler.load()

    def _make_guard(self, s: Settings, store: CacheStore | None) -> QualityGuard:
        traffic = (TrafficLog(traffic_backend(store.backend), store.keys.namespace, s.traffic_per_pair)
                   if store is not None and s.shadow_fraction > 0 else None)
        guard = QualityGuard(s.guard_settings(), traffic)
        m = self.metrics

        def on_check(job, check, st):
            labels = (job.receiver, self.host.name_of(job.sender) or "?")
            m.shadow_checks.labels(*labels).inc()
            m.shadow_agreement.labels(*labels).set(st.live() or 0.0)
            m.shadow_kl.labels(*labels).set(st.live_kl() or 0.0)

        guard.on_check = on_check
        guard.on_widen = lambda st, old, new: m.plan_widened.labels(st.receiver, self.host.name_of(st.sender) or "?").inc()
        return guard

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while self.scheduler.wait_for_work(0.5, background=self._background_pending()):
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - the engine must keep serving
                log.exception("engine step failed: %s", e)
                self._fail_current(e)
        for r in self.scheduler.drain():
            self.output.finish(r, "abort", error="server shutting down")

    def step(self) -> None:
        """Schedule -> run -> postprocess: one prefill step, then one decode step per group."""
        self._prefill_step()
        for g in self.scheduler.decode_groups():
            for r in g.reqs:
                if r.cancelled and r.status != Status.FINISHED:
                    self.output.finish(r, "abort")
                    self.scheduler.leave(g, r)
            for r, logits in self.runner.decode(g):
                if r.shadow is not None:
                    r.shadow.plan_choices.append(int(logits.argmax()))
                self.output.token(r, self.runner.sample(r, logits))
                self._shadow_ready(r)
                if r.status == Status.FINISHED:
                    self.scheduler.leave(g, r)
            self.metrics.running.labels(g.model).set(g.size)
        if self.scheduler.idle():  # background work never runs ahead of a waiting or prefilling request
            self._shadow_step()

    def _prefill_step(self) -> None:
        turn = self.scheduler.next_prefill()
        for x in turn.skipped:
            self.metrics.waiting.labels(x.model).dec()
            self.output.finish(x, "abort")
        r = turn.request
        if r is None:
            return
        if turn.starting:  # its first step: it has left the queue
            self.metrics.waiting.labels(r.model).dec()
            r.t_prefill_start = time.time()
            self.metrics.queue.labels(r.model).observe(r.t_prefill_start - r.created)
            self.metrics.queries.labels(r.model).inc(len(r.prompt.ids))
            self.runner.start_prefill(r, waiting=len(self.scheduler.waiting))
        if r.cancelled:
            self.output.finish(r, "abort")
            self.scheduler.prefill_ended(r)
            return
        res = self.runner.prefill_step(r)
        if res is None:
            return  # more chunks to go
        r.reuse, r.recomputed_layers, r.activation_at = res.info, res.recomputed_layers, res.activation_at
        r.from_model = self.host.name_of(res.info.sender)
        r.cache, r.length = res.cache, len(r.prompt.ids)
        self.output.prefilled(r)
        if res.info.kind == ShareKind.PROFILED and res.info.source is not None and self.guard.sample():
            r.shadow = ShadowJob(r.model, res.info.sender or "", res.info.source, res.info.plan, r.prompt, [],
                                 [int(res.logits.argmax())], res.logits.detach().float().clone(), res.info.reused_tokens)
        self.output.token(r, self.runner.sample(r, res.logits))
        self._shadow_ready(r)
        self.scheduler.prefill_ended(r)  # still running: it joins its model's decode group

    # ------------------------------------------------------------------ the quality guard's background work
    def _shadow_ready(self, r: Request) -> None:
        """A sampled request hands its check to the guard once it has its first N tokens (or ends)."""
        job = r.shadow
        if job is None or (len(r.out) < self.guard.settings.shadow_tokens and r.finish_reason is None):
            return
        r.shadow = None
        job.served = list(r.out[:self.guard.settings.shadow_tokens])
        job.plan_choices = job.plan_choices[:len(job.served)]
        if job.served:
            self.guard.submit(job)

    def _background_pending(self) -> bool:
        return self._shadow is not None or self.guard.pending()

    def _shadow_step(self) -> None:
        """Advance the current shadow check by one chunk (or start the next one)."""
        if self._shadow is None:
            job = self.guard.next_job()
            if job is None:
                return
            try:
                receiver = self.host.get(job.receiver).loaded
            except Exception:  # noqa: BLE001 - a model no longer served: drop the check
                return
            self._shadow = (job.receiver, self.guard.check_steps(job, receiver, self.settings.prefill_chunk))
        name, steps = self._shadow
        with self.host.active(name):
            try:
                next(steps)
            except StopIteration:
                self._shadow = None
            except Exception as e:  # noqa: BLE001 - a failed check is dropped, never a failed server
                log.warning("shadow check failed: %s", e)
                self._shadow = None

    def _fail_current(self, e: Exception) -> None:
        for r in self.scheduler.take_all_running():
            self.output.finish(r, "error", error=f"internal error: {e}")
