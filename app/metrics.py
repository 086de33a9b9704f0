"""Prometheus metrics, prefix `embed_`, in a registry of the app's own (so several apps can live in one process).
Every metric carries a `model` label whose values are only the configured served names (bounded), or "" for a
request that reached no model (probes, unknown routes, bodies that do not parse). Every metric is documented in
the README's metrics table."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
RATIO_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
NO_MODEL = ""  # the `model` label of a request that reached no served model
REJECT_REASONS = ("overloaded", "draining", "timeout")


class Metrics:
    def __init__(self, models: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        m = ["model"]
        self.requests = Counter(
            "embed_requests", "HTTP requests by route and status", ["model", "route", "status"], registry=r
        )
        self.request_duration = Histogram(
            "embed_request_duration_seconds", "HTTP request latency", ["model", "route"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "embed_queue_wait_seconds", "Time an input waited in the queue", m, buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("embed_batch_size", "Inputs per encoder batch", m, buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "embed_batch_tokens", "Real tokens per encoder batch", m, buckets=TOKEN_BUCKETS, registry=r
        )
        self.padding_ratio = Histogram(
            "embed_padding_ratio", "Padded share of the tokens a batch computed", m, buckets=RATIO_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            "embed_inference_duration_seconds", "Encoder time per batch", m, buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("embed_tokens", "Input tokens embedded or scored", m, registry=r)
        self.embeddings = Counter("embed_embeddings", "Embeddings returned", m, registry=r)
        self.rerank_pairs = Counter("embed_rerank_pairs", "Query-document pairs scored", m, registry=r)
        self.queue_depth = Gauge("embed_queue_depth", "Inputs waiting in the queue", m, registry=r)
        self.queue_tokens = Gauge("embed_queue_tokens", "Tokens waiting in the queue", m, registry=r)
        self.in_flight = Gauge("embed_in_flight_requests", "HTTP requests being served", m, registry=r)
        self.rejected = Counter("embed_rejected", "Requests refused by reason", ["model", "reason"], registry=r)
        self.cache_hits = Counter("embed_cache_hits", "Embedding cache hits", m, registry=r)
        self.cache_misses = Counter("embed_cache_misses", "Embedding cache misses", m, registry=r)
        self.cache_bytes = Gauge("embed_cache_bytes", "Bytes held by the embedding cache", m, registry=r)
        self.model_info = Gauge(
            "embed_model_info",
            "The served model (value 1)",
            ["model", "kind", "architecture", "device", "dtype", "max_input_tokens", "dimensions"],
            registry=r,
        )
        self.in_flight.labels(NO_MODEL)
        for name in models:  # every series exists from the start, so rate() and absent() see zeros, not gaps
            for reason in REJECT_REASONS:
                self.rejected.labels(name, reason)
            for metric in (self.tokens, self.embeddings, self.rerank_pairs, self.cache_hits, self.cache_misses,
                           self.in_flight, self.cache_bytes):
                metric.labels(name)

    def observe_batch(
        self, model: str, size: int, real_tokens: int, cost_tokens: int, waits: list[float], compute_s: float
    ) -> None:
        self.batch_size.labels(model).observe(size)
        self.batch_tokens.labels(model).observe(real_tokens)
        ratio = max(0.0, (cost_tokens - real_tokens) / cost_tokens) if cost_tokens else 0.0
        self.padding_ratio.labels(model).observe(ratio)
        self.inference_duration.labels(model).observe(compute_s)
        queue_wait = self.queue_wait.labels(model)
        for wait in waits:
            queue_wait.observe(wait)
