"""Turning sampled tokens into what a client sees: text deltas, stop strings, finish reasons, metrics."""

from __future__ import annotations

import time

from ..core.decode import stop_ids
from .host import ModelHost
from .metrics import Metrics
from .request import Request, Status


class OutputProcessor:
    def __init__(self, host: ModelHost, metrics: Metrics, max_model_len: int):
        self.host, self.metrics, self.max_model_len = host, metrics, max_model_len
        self.stops = {n: stop_ids(h.loaded.tokenizer) for n, h in host.models.items()}

    def prefilled(self, r: Request) -> None:
        """Record a finished prefill's figures (its ReuseInfo is on the request)."""
        m, info = self.metrics, r.reuse
        assert info is not None and r.t_prefill_start is not None
        m.prefill.labels(r.model).observe(time.time() - r.t_prefill_start)
        m.prompt_tokens.labels(r.model).inc(len(r.prompt.ids))
        m.recomputed.labels(r.model).observe(len(r.recomputed_layers) / self.host.get(r.model).loaded.num_layers)
        if info.reused_tokens:
            m.hits.labels(r.model, info.kind.metric_label).inc(info.reused_tokens)
        if info.fallback:
            m.fallbacks.labels(r.model).inc()

    def token(self, r: Request, tok: int) -> None:
        """A sampled token: stream its text, or finish the request (stop token, stop string, length)."""
        now = time.time()
        m = self.metrics
        if r.t_first is None:
            r.t_first = now
            m.ttft.labels(r.model).observe(now - r.created)
        elif r.t_last is not None:
            m.itl.labels(r.model).observe(now - r.t_last)
        r.t_last = now
        if tok in self.stops[r.model] and not r.ignore_eos:
            self.finish(r, "stop")
            return
        r.out.append(tok)
        if r.sampled_logprob is not None:
            r.out_logprobs.append(r.sampled_logprob)
            r.sampled_logprob = None
        text = self.host.get(r.model).loaded.detokenize(r.out)
        delta = text[len(r.text):]
        stop_hit = next((s for s in r.stop if s and s in text), None)
        if stop_hit is not None:
            cut = text.index(stop_hit)
            delta = text[len(r.text):cut] if cut > len(r.text) else ""
            r.text = text[:cut]
            self._send(r, delta)
            self.finish(r, "stop")
            return
        if not text.endswith("\ufffd"):  # hold back half a UTF-8 character
            r.text = text
            self._send(r, delta)
        if r.constraint is not None and r.constraint.done:  # the grammar's answer is complete
            self.finish(r, "stop")
        elif len(r.out) >= r.max_tokens or r.length + 1 >= self.max_model_len:
            self.finish(r, "length")

    @staticmethod
    def _send(r: Request, delta: str) -> None:
        """A text delta, with the tokens it covers (``out[start:end]``, for their logprobs)."""
        if delta:
            r.on_event("token", {"text": delta, "start": r.sent, "end": len(r.out)})
            r.sent = len(r.out)

    def finish(self, r: Request, reason: str, error: str | None = None) -> None:
        """The one place a request ends (stop, length, abort, error): its last event and its figures."""
        if r.finish_reason is not None and reason != "error":
            return
        r.finish_reason = reason
        if r.status != Status.FINISHED:
            r.move_to(Status.FINISHED)
        now = time.time()
        self.metrics.e2e.labels(r.model).observe(now - r.created)
        self.metrics.requests.labels(r.model, reason).inc()
        self.metrics.generation_tokens.labels(r.model).inc(len(r.out))
        r.on_event("done", {"finish_reason": reason, "error": error})
