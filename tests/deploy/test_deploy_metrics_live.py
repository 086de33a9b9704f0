"""Every metric the deploy files query (Grafana dashboard, alert rules, Prometheus adapter) is one a real
server exports: `python -m app` on the tiny NomicBert, one embeddings request, then its /metrics."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.slow

# The contract of app/metrics.py the deploy files are written against.
CONTRACT = {
    "embed_requests_total", "embed_request_duration_seconds_bucket", "embed_queue_wait_seconds_bucket",
    "embed_batch_size_bucket", "embed_batch_tokens_bucket", "embed_padding_ratio_bucket",
    "embed_inference_duration_seconds_bucket", "embed_tokens_total", "embed_embeddings_total", "embed_queue_depth",
    "embed_queue_tokens", "embed_in_flight_requests", "embed_model_info", "embed_rejected_total",
    "embed_cache_hits_total", "embed_cache_misses_total", "embed_cache_bytes",
}  # fmt: skip


def test_every_queried_metric_is_exported(live_metrics, deploy_queries, promql):
    missing = []
    for queries in deploy_queries.values():
        for query in queries:
            for name in sorted(promql.metric_names(query.expr) - promql.synthetic):
                if name not in live_metrics.names:
                    missing.append(f"{query.source}: {name}")
    exported = sorted(n for n in live_metrics.names if n.startswith("embed_"))
    assert not missing, "queried but not exported:\n  " + "\n  ".join(missing) + f"\nexported: {exported}"


def test_contract_metrics_are_exported(live_metrics):
    assert not CONTRACT - live_metrics.names, f"missing: {sorted(CONTRACT - live_metrics.names)}"


def _samples(text: str, name: str) -> list[dict[str, str]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_label_values_match_the_query_filters(live_metrics):
    """The dashboard and alerts select `route=~".*embeddings.*"` and `status=~"5.."`-style codes."""
    durations = _samples(live_metrics.text, "embed_request_duration_seconds_count")
    assert any(re.fullmatch(".*embeddings.*", labels.get("route", "")) for labels in durations), durations
    requests = _samples(live_metrics.text, "embed_requests_total")
    ok = [labels for labels in requests if re.fullmatch(".*embeddings.*", labels.get("route", ""))]
    assert any(re.fullmatch("2..", labels.get("status", "")) for labels in ok), requests
    (info,) = _samples(live_metrics.text, "embed_model_info")
    assert {"model", "architecture", "device", "dtype", "max_input_tokens", "dimensions"} <= set(info)
