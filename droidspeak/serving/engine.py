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

from ..store.cache import CacheStore
from .config import Settings
from .host import Hosted, ModelHost
from .metrics import Metrics
from .output import OutputProcessor
from .request import QueueFull, Request
from .runner import ModelRunner
from .scheduler import Scheduler

log = logging.getLogger("droidspeak.engine")
__all__ = ["Engine", "Hosted", "ModelHost", "QueueFull", "Request"]


class Engine:
    def __init__(self, host: ModelHost, store: CacheStore | None, settings: Settings, metrics: Metrics | None = None):
        self.host, self.store, self.settings = host, store, settings
        self.metrics = metrics or Metrics()
        self.scheduler = Scheduler(settings.max_waiting)
        self.runner = ModelRunner(host, store, settings)
        self.output = OutputProcessor(host, self.metrics, settings.max_model_len)
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

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while self.scheduler.wait_for_work(0.5):
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
        for g in list(self.scheduler.groups.values()):
            for r in g.reqs:
                if r.cancelled and r.id not in g.leaving:
                    g.leaving.add(r.id)
                    self.output.finish(r, "abort")
            for r, logits in self.runner.decode(g):
                self.output.token(r, self.runner.sample(r, logits))
                if r.finish_reason is not None:
                    g.leaving.add(r.id)
            self.metrics.running.labels(g.model).set(g.size)

    def _prefill_step(self) -> None:
        r, skipped = self.scheduler.next_prefill()
        for x in skipped:
            self.metrics.waiting.labels(x.model).dec()
            self.output.finish(x, "abort")
        if r is None:
            return
        if r.steps is None:  # its first step: it leaves the queue
            self.metrics.waiting.labels(r.model).dec()
            r.t_prefill_start = time.time()
            self.metrics.queue.labels(r.model).observe(r.t_prefill_start - r.created)
            self.metrics.queries.labels(r.model).inc(len(r.prompt.ids))
            self.runner.start_prefill(r, waiting=len(self.scheduler.waiting))
        if r.cancelled:
            self.scheduler.prefill_done()
            self.output.finish(r, "abort")
            return
        res = self.runner.prefill_step(r)
        if res is None:
            return  # more chunks to go
        self.scheduler.prefill_done()
        r.reuse, r.recomputed_layers, r.activation_at = res.info, res.recomputed_layers, res.activation_at
        r.from_model = self.host.name_of(res.info.sender)
        r.cache, r.length = res.cache, len(r.prompt.ids)
        self.output.prefilled(r)
        self.output.token(r, self.runner.sample(r, res.logits))
        if r.finish_reason is None:
            self.scheduler.join(r)

    def _fail_current(self, e: Exception) -> None:
        r = self.scheduler.prefilling
        if r is not None:
            self.scheduler.prefill_done()
            self.output.finish(r, "error", error=f"internal error: {e}")
        for g in self.scheduler.groups.values():
            for x in g.reqs + g.pending:
                self.output.finish(x, "error", error=f"internal error: {e}")
        self.scheduler.groups.clear()
