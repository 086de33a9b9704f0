"""Prometheus metrics, prefix `embed_`, in a registry of the app's own (so several apps can live in one process).
Every metric is documented in the README's metrics table."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
RATIO_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("embed_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.request_duration = Histogram(
            "embed_request_duration_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "embed_queue_wait_seconds", "Time an input waited in the queue", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("embed_batch_size", "Inputs per encoder batch", buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "embed_batch_tokens", "Real tokens per encoder batch", buckets=TOKEN_BUCKETS, registry=r
        )
        self.padding_ratio = Histogram(
            "embed_padding_ratio", "Padded share of the tokens a batch computed", buckets=RATIO_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            "embed_inference_duration_seconds", "Encoder time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("embed_tokens", "Input tokens embedded", registry=r)
        self.embeddings = Counter("embed_embeddings", "Embeddings returned", registry=r)
        self.queue_depth = Gauge("embed_queue_depth", "Inputs waiting in the queue", registry=r)
        self.queue_tokens = Gauge("embed_queue_tokens", "Tokens waiting in the queue", registry=r)
        self.in_flight = Gauge("embed_in_flight_requests", "HTTP requests being served", registry=r)
        self.rejected = Counter("embed_rejected", "Requests refused by reason", ["reason"], registry=r)
        self.cache_hits = Counter("embed_cache_hits", "Embedding cache hits", registry=r)
        self.cache_misses = Counter("embed_cache_misses", "Embedding cache misses", registry=r)
        self.cache_bytes = Gauge("embed_cache_bytes", "Bytes held by the embedding cache", registry=r)
        self.model_info = Gauge(
            "embed_model_info",
            "The served model (value 1)",
            ["model", "architecture", "device", "dtype", "max_input_tokens", "dimensions"],
            registry=r,
        )
        for reason in ("overloaded", "draining", "timeout"):
            self.rejected.labels(reason)

    def observe_batch(
        self, size: int, real_tokens: int, cost_tokens: int, waits: list[float], compute_s: float
    ) -> None:
        self.batch_size.observe(size)
        self.batch_tokens.observe(real_tokens)
        self.padding_ratio.observe(max(0.0, (cost_tokens - real_tokens) / cost_tokens) if cost_tokens else 0.0)
        self.inference_duration.observe(compute_s)
        for wait in waits:
            self.queue_wait.observe(wait)
