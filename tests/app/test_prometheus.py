"""A real Prometheus (Debian's `prometheus`, on loopback) scrapes /metrics; promtool lints the exposition."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from tests.app.conftest import free_port


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: install Debian's `prometheus` package (scripts/test.sh does)")
    return path


def test_promtool_check_metrics(nomic_server):
    httpx.post(f"{nomic_server.base}/v1/embeddings", json={"input": ["a", "b c"]})
    text = httpx.get(f"{nomic_server.base}/metrics").text
    result = subprocess.run([require("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_real_prometheus_scrapes_embed_series(nomic_server, tmp_path):
    httpx.post(f"{nomic_server.base}/v1/embeddings", json={"input": ["scraped", "twice over"]})
    port = free_port()
    target = nomic_server.base.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: embeddings\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            require("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, series = time.monotonic() + 45, []
        while time.monotonic() < deadline and not series:
            time.sleep(1)
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": '{__name__=~"embed_.+"}'})
                series = r.json()["data"]["result"] if r.status_code == 200 else []
            except httpx.TransportError:
                pass
        names = {s["metric"]["__name__"] for s in series}
        assert {"embed_requests_total", "embed_batch_size_bucket", "embed_model_info", "embed_queue_depth"} <= names
        up = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up"}).json()["data"]["result"]
        assert up and up[0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(10)
