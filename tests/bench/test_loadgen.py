"""The load generator against a real loopback HTTP server: bounded, counted, loopback only, spread over processes."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import loadgen


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator's pooled connections expect
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        payload = json.dumps({"seen": json.loads(body)}).encode()
        self.send_response(500 if json.loads(body).get("fail") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


class Backlogged(ThreadingHTTPServer):
    request_queue_size = 128  # 40 connections open at once
    daemon_threads = True


@pytest.fixture(scope="module")
def url():
    server = Backlogged(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/embeddings"
    server.shutdown()


def test_one_process_counts_requests_embeddings_and_errors(url):
    bodies = [{"input": ["a", "b"]}, {"input": "c"}, {"input": "d", "fail": True}]
    result = asyncio.run(loadgen.run_load(url, bodies, concurrency=3, max_requests=30, max_s=10))
    assert result.requests + result.errors == 30
    assert result.errors == 10 and "HTTP 500" in result.first_error
    assert result.embeddings == 10 * 2 + 10 * 1
    assert result.percentile_ms(50) > 0


def test_spread_splits_concurrency_over_processes_and_merges(url):
    bodies = [{"input": [f"text {i}"]} for i in range(8)]
    result = loadgen.run_load_spread(url, bodies, concurrency=40, max_requests=200, max_s=20)
    assert result.errors == 0
    assert 200 <= result.requests <= 200 + 3  # three processes, each rounding its share up
    assert result.embeddings == result.requests == len(result.latencies_s)


def test_only_loopback_is_ever_loaded():
    with pytest.raises(ValueError, match="loopback"):
        loadgen.run_load_spread("http://10.0.0.1:8000/v1/embeddings", [{"input": "x"}], 32, 10, 1)
