"""Security settings against a real server: the API key, logs without secrets or input text, CORS off unless
configured, /metrics on its own port."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.app.conftest import free_port, server_process
from tests.conftest import NOMIC

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def locked_server():
    metrics_port = free_port()
    with server_process(
        "--model",
        str(NOMIC / "nomic-text-tiny"),
        "--api-key",
        KEY,
        "--log-json",
        "--metrics-port",
        str(metrics_port),
        "--served-model-name",
        "tiny",
    ) as server:
        server.metrics_port = metrics_port
        yield server


def test_api_key_required_on_the_api(locked_server):
    base = locked_server.base
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}, {"authorization": f"Basic {KEY}"}):
        r = httpx.post(f"{base}/v1/embeddings", json={"input": "hi"}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{base}/v1/models").status_code == 401
    assert httpx.post(f"{base}/tokenize", json={"input": "hi"}).status_code == 401
    ok = httpx.post(f"{base}/v1/embeddings", json={"input": "hi"}, headers={"authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    assert len(sdk.embeddings.create(model="tiny", input="hi").data[0].embedding) == 64
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0).embeddings.create(model="tiny", input="x")
    for path in ("/health", "/ready"):  # probes stay open
        assert httpx.get(f"{base}{path}").status_code == 200


def test_metrics_on_a_separate_port(locked_server):
    assert httpx.get(f"{locked_server.base}/metrics").status_code == 404
    r = httpx.get(f"http://127.0.0.1:{locked_server.metrics_port}/metrics")
    assert r.status_code == 200 and "embed_requests_total" in r.text


def test_json_access_logs_without_key_or_text(locked_server):
    secret_text = "my very private sentence"
    headers = {"authorization": f"Bearer {KEY}", "x-request-id": "trace-42"}
    assert (
        httpx.post(f"{locked_server.base}/v1/embeddings", json={"input": secret_text}, headers=headers).status_code
        == 200
    )
    log = locked_server.output_containing("trace-42")
    assert KEY not in log and secret_text not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    mine = [r for r in records if r.get("request_id") == "trace-42"]
    assert len(mine) == 1
    assert mine[0]["status"] == 200 and mine[0]["tokens"] > 0 and mine[0]["latency_ms"] > 0
    assert mine[0]["path"] == "/v1/embeddings"


def test_inputs_logged_only_with_the_debug_setting():
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--log-json", "--log-inputs") as server:
        httpx.post(f"{server.base}/v1/embeddings", json={"input": "debug me please"})
        assert "debug me please" in server.output_containing("debug me please")


def test_cors_off_by_default_and_on_when_configured(nomic_server):
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    r = httpx.options(f"{nomic_server.base}/v1/embeddings", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--cors-origins", "https://app.example") as server:
        r = httpx.options(f"{server.base}/v1/embeddings", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = httpx.options(f"{server.base}/v1/embeddings", headers={**preflight, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_metrics_and_models_show_the_folder_name_not_its_path():
    folder = NOMIC / "nomic-text-tiny"
    with server_process("--model", str(folder)) as server:
        assert httpx.get(f"{server.base}/v1/models").json()["data"][0]["id"] == "nomic-text-tiny"
        metrics = httpx.get(f"{server.base}/metrics").text
        assert 'model="nomic-text-tiny"' in metrics and str(folder.parent) not in metrics
        ok = httpx.post(f"{server.base}/v1/embeddings", json={"model": "nomic-text-tiny", "input": "hi"})
        assert ok.status_code == 200 and ok.json()["model"] == "nomic-text-tiny"


def test_trailing_slash_is_not_redirected_to_the_clients_host(nomic_server):
    r = httpx.post(
        f"{nomic_server.base}/v1/embeddings/", json={"input": "hi"}, headers={"host": "evil.example"}
    )
    assert r.status_code == 404 and "location" not in r.headers
    assert r.json()["error"]["code"] == "not_found"
