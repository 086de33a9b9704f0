"""Prometheus config and alert rules (promtool), and the Grafana dashboard: it loads, every panel has a
query, every query is valid PromQL, and the required views are there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "docker" / "prometheus"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "embeddings.json"


def test_promtool_check_config(promtool_bin, run_tool):
    result = run_tool([promtool_bin, "check", "config", PROMETHEUS / "prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules(promtool_bin, run_tool):
    result = run_tool([promtool_bin, "check", "rules", PROMETHEUS / "alerts.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool_bin, run_tool):
    """The alerts fire on the situations they name, and stay quiet on a healthy server."""
    result = run_tool([promtool_bin, "test", "rules", "alerts.test.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_the_issue():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    exprs = {name: rule["expr"] for name, rule in alerts.items()}
    assert any("up{" in e and "== 0" in e for e in exprs.values()), "target down"
    assert any("histogram_quantile(0.99" in e and "embed_request_duration_seconds_bucket" in e for e in exprs.values())
    assert any("embed_queue_tokens" in e for e in exprs.values()), "queue saturation"
    assert any("embed_rejected_total" in e for e in exprs.values()), "rejections"
    assert any('status=~"5.."' in e for e in exprs.values()), "5xx rate"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    tested = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())
    fired = {
        case["alertname"] for test in tested["tests"] for case in test.get("alert_rule_test", []) if case["exp_alerts"]
    }
    assert fired == set(alerts), f"alerts without a firing unit test: {set(alerts) - fired}"


# --- Grafana --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_loads(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_panel_has_a_query(dashboard):
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        targets = panel.get("targets")
        assert targets, f"panel {panel['title']!r} has no query"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r} target {target.get('refId')}: empty"
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_queries_are_valid_promql(deploy_queries, promql, promtool_bin, run_tool, tmp_path):
    """promtool parses each query (Grafana variables replaced) as the expression of a recording rule."""
    queries = deploy_queries["dashboard"]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": promql.substitute(q.expr)} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run_tool([promtool_bin, "check", "rules", path])
    sources = "\n".join(f"dashboard:query_{i} = {q.source}" for i, q in enumerate(queries))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{sources}"


def test_dashboard_shows_what_the_issue_asks(dashboard):
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    exprs = " ".join(target["expr"] for panel in panels for target in panel["targets"])
    for needle in [
        "rate(embed_requests_total",  # requests/s
        "rate(embed_embeddings_total",  # embeddings/s
        "rate(embed_tokens_total",  # tokens/s
        "histogram_quantile(0.5, sum by (le) (rate(embed_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(embed_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(embed_request_duration_seconds_bucket",
        "embed_queue_depth",
        "embed_batch_size",
        "embed_padding_ratio",
        'status=~"4..|5.."',  # errors by status
        "sum by (reason) (rate(embed_rejected_total",
        "embed_cache_hits_total",
    ]:
        assert needle in exprs, f"dashboard lacks {needle}"


@pytest.mark.parametrize(
    "expr, names",
    [
        (
            'sum by (route, status) (rate(embed_requests_total{route=~".*embeddings.*"}[$__rate_interval]))',
            {"embed_requests_total"},
        ),
        ("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) > 2", {"x_bucket"}),
        ("sum(rate(a_sum[1m])) / clamp_min(sum(rate(b_count[1m])), 1e-9)", {"a_sum", "b_count"}),
        ('absent(up{job="embeddings"})', {"up"}),
        ("max by (instance) (q) > 1.6e6 and on(instance) r", {"q", "r"}),
    ],
)  # fmt: skip
def test_promql_metric_names(promql, expr, names):
    assert promql.metric_names(expr) == names
