"""Prometheus metrics, named like vLLM's with a ``droidspeak:`` prefix and a ``model_name`` label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LAT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        m = ["model_name"]
        self.ttft = Histogram("droidspeak:time_to_first_token_seconds", "Time to first token", m, registry=r, buckets=_LAT)
        self.itl = Histogram("droidspeak:inter_token_latency_seconds", "Time between output tokens", m, registry=r,
                             buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56))
        self.e2e = Histogram("droidspeak:e2e_request_latency_seconds", "End-to-end request latency", m, registry=r,
                             buckets=_LAT)
        self.prefill = Histogram("droidspeak:request_prefill_time_seconds", "Prefill time", m, registry=r, buckets=_LAT)
        self.queue = Histogram("droidspeak:request_queue_time_seconds", "Time waiting before prefill", m, registry=r,
                               buckets=_LAT)
        self.recomputed = Histogram("droidspeak:recomputed_layer_fraction", "Fraction of layers recomputed per request",
                                    m, registry=r, buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
        self.queries = Counter("droidspeak:prefix_cache_queries", "Prompt tokens looked up in the store", m, registry=r)
        self.hits = Counter("droidspeak:prefix_cache_hits", "Prompt tokens reused from the store, by kind "
                            "(same_model, exact_cross_model, cross_model)", m + ["kind"], registry=r)
        self.requests = Counter("droidspeak:request_success", "Finished requests", m + ["finished_reason"], registry=r)
        self.prompt_tokens = Counter("droidspeak:prompt_tokens", "Prompt tokens", m, registry=r)
        self.generation_tokens = Counter("droidspeak:generation_tokens", "Generated tokens", m, registry=r)
        self.fallbacks = Counter("droidspeak:store_fallbacks", "Requests that recomputed missing or bad entries", m,
                                 registry=r)
        self.running = Gauge("droidspeak:num_requests_running", "Requests decoding", m, registry=r)
        self.waiting = Gauge("droidspeak:num_requests_waiting", "Requests queued", m, registry=r)
        self.store_bytes = Gauge("droidspeak:store_bytes", "Bytes held per store tier", ["tier"], registry=r)
        self.store_errors = Gauge("droidspeak:store_errors", "Storage errors per tier", ["tier"], registry=r)
        pair = m + ["from_model"]
        self.shadow_checks = Counter("droidspeak:shadow_checks", "Profiled hits re-checked against the receiver's own "
                                     "prefill", pair, registry=r)
        self.shadow_agreement = Gauge("droidspeak:shadow_agreement", "Rolling agreement of the served plan's greedy "
                                      "choices with the receiver's own (teacher-forced)", pair, registry=r)
        self.shadow_kl = Gauge("droidspeak:shadow_first_token_kl", "Rolling first-token KL between the served plan "
                               "and the receiver's own prefill", pair, registry=r)
        self.plan_widened = Counter("droidspeak:plan_widened", "Plans the quality guard widened", pair, registry=r)

    def observe_store(self, store) -> None:
        """Refresh the store gauges (bytes and errors per tier) before an exposition."""
        if store is None:
            return
        for t in store.tier_stats():
            self.store_bytes.labels(t["name"]).set(t["bytes"])
            self.store_errors.labels(t["name"]).set(t["errors"])
