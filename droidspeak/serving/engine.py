"""The serving engine: a loop that schedules, runs and postprocesses, one step at a time.

``droidspeak serve`` runs the loop on the process's main thread and the HTTP server on another
(:meth:`Engine.run`): on this CPU, torch runs a third slower in a thread that is not the main one
(its OpenMP workers do not spin-wait between the many small operations of a forward), and the
engine is where the forwards are. Embedded and in tests it runs on a thread of its own
(:meth:`Engine.start`).

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
        self._counts: dict[str, int] = {}  # running requests per model, as the gauge last said
        self.started = time.time()
        self.external = False  # the loop runs where its owner calls run() (the main thread); the app starts none
        self.warming = False  # prefilling the start's throwaway prompt (/health says "starting")
        self._running = threading.Event()
        self._done = threading.Event()

    # ------------------------------------------------------------------ public (any thread)
    def run(self) -> None:
        """Serve until stopped: the loop, in the calling thread (after the warm-up, on the same thread)."""
        self.warming = True
        try:
            self.runner.warm_up(self.settings.warmup_tokens)
        except Exception as e:  # noqa: BLE001 - a failed warm-up only means the first request pays it
            log.warning("warm-up failed, serving without it: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        finally:
            self.warming = False
        self._running.set()
        try:
            self._loop()
        finally:
            self._running.clear()
            self._done.set()

    def start(self) -> "Engine":
        """Serve on a thread of its own (returns once it serves, after the warm-up)."""
        t = threading.Thread(target=self.run, name="droidspeak-engine", daemon=True)
        t.start()
        while not self._running.wait(0.05) and t.is_alive():
            pass
        return self

    @property
    def running(self) -> bool:
        return self._running.is_set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work, let running requests finish (up to ``timeout``), then stop."""
        self.scheduler.stop()
        if self._running.is_set():
            self._done.wait(timeout)

    @property
    def stopping(self) -> bool:
        return self.scheduler.stopping

    def submit(self, req: Request) -> None:
        req.group = self.host.group_of(req.model)
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
        self._count_running()
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
        _, steps = self._shadow
        try:
            next(steps)
        except StopIteration:
            self._shadow = None
        except Exception as e:  # noqa: BLE001 - a failed check is dropped, never a failed server
            log.warning("shadow check failed: %s", e)
            self._shadow = None

    def _count_running(self) -> None:
        """The running-requests gauge per model (a decode group holds several models' requests)."""
        now: dict[str, int] = {}
        for g in self.scheduler.decode_groups():
            for r in g.reqs + g.pending:
                if r.status != Status.FINISHED:
                    now[r.model] = now.get(r.model, 0) + 1
        for model in set(now) | set(self._counts):
            self.metrics.running.labels(model).set(now.get(model, 0))
        self._counts = now

    def _fail_current(self, e: Exception) -> None:
        for r in self.scheduler.take_all_running():
            self.output.finish(r, "error", error=f"internal error: {e}")
