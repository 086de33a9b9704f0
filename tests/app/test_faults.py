"""Faults, against real uvicorn on loopback with fault-injecting encoders (the fakes only make the fault
deterministic; the model, tokenizer and HTTP stack are real)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from app.settings import Settings
from model.encoder import Encoder
from tests.app.conftest import thread_server
from tests.app.fakes import WrappedEncoder
from tests.conftest import NOMIC, ROOT

POISON = 7  # a token id the failing fake refuses


@pytest.fixture(scope="module")
def tiny():
    return Encoder.load(str(NOMIC / "nomic-text-tiny"), device="cpu", dtype="float32")


def settings(**kw) -> Settings:
    return Settings(model="fake", **({"max_wait_ms": 1} | kw))


def post(base: str, body: dict, **kw) -> httpx.Response:
    return httpx.post(f"{base}/v1/embeddings", json={"encoding_format": "float", **body}, timeout=30, **kw)


def test_encoder_exception_fails_only_its_batch(tiny, caplog):
    fake = WrappedEncoder(
        tiny, fail=lambda batch: ValueError("kernel exploded") if any(POISON in s for s in batch) else None
    )
    with thread_server(settings(), fake) as (base, _), caplog.at_level(logging.ERROR, logger="app"):
        bad = post(base, {"input": [[101, POISON, 102]]}, headers={"x-request-id": "req-poison-1"})
        assert bad.status_code == 500
        err = bad.json()["error"]
        assert err["type"] == "server_error" and "req-poison-1" in err["message"]
        assert bad.headers["x-request-id"] == "req-poison-1"
        good = post(base, {"input": "still fine"})
        assert good.status_code == 200
    assert any("req-poison-1" in r.getMessage() and "kernel exploded" in r.getMessage() for r in caplog.records)


def test_out_of_memory_splits_the_batch_and_retries(tiny):
    fake = WrappedEncoder(tiny, oom_above=2)
    texts = [f"text number {i} " * (i + 1) for i in range(9)]
    with thread_server(settings(), fake) as (base, _):
        r = post(base, {"input": texts})
    assert r.status_code == 200
    expected = tiny.embed(tiny.tokenize(texts))
    np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], expected, atol=1e-5)
    assert any(len(b) > 2 for b in fake.batches) and any(len(b) <= 2 for b in fake.batches)


def test_disconnected_client_costs_no_compute(tiny):
    fake = WrappedEncoder(tiny, delay_s=0.4)
    abandoned = [101, 4242, 4243, 102]
    with thread_server(settings(), fake) as (base, _):

        async def scenario():
            async with httpx.AsyncClient(timeout=30) as client:
                busy = asyncio.create_task(client.post(f"{base}/v1/embeddings", json={"input": [[101, 1000, 102]]}))
                await asyncio.sleep(0.1)  # the worker is now busy with `busy`
                with pytest.raises(httpx.ReadTimeout):
                    await client.post(f"{base}/v1/embeddings", json={"input": [abandoned]}, timeout=0.1)
                return await busy

        assert asyncio.run(scenario()).status_code == 200
        time.sleep(0.6)  # anything still queued would have run by now
        assert post(base, {"input": "after"}).status_code == 200
    assert not fake.seen(abandoned)


def test_deadline_drops_queued_work(tiny):
    fake = WrappedEncoder(tiny, delay_s=0.5)
    late = [101, 3131, 102]
    with thread_server(settings(request_timeout_s=0.2), fake) as (base, _):

        async def scenario():
            async with httpx.AsyncClient(timeout=30) as client:
                first = asyncio.create_task(client.post(f"{base}/v1/embeddings", json={"input": [[101, 1000, 102]]}))
                await asyncio.sleep(0.05)
                second = await client.post(f"{base}/v1/embeddings", json={"input": [late]})
                return await first, second

        first, second = asyncio.run(scenario())
    assert first.status_code == 200
    assert second.status_code == 503 and second.json()["error"]["code"] == "queue_timeout"
    assert "Retry-After" in second.headers
    assert not fake.seen(late)


def test_dead_worker_fails_health(tiny):
    fake = WrappedEncoder(
        tiny, fail=lambda batch: SystemExit("worker killed") if any(POISON in s for s in batch) else None
    )
    with thread_server(settings(), fake) as (base, _):
        assert httpx.get(f"{base}/health").status_code == 200
        r = post(base, {"input": [[101, POISON, 102]]})
        assert r.status_code >= 500 and "error" in r.json()
        deadline = time.monotonic() + 5
        while httpx.get(f"{base}/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{base}/health").status_code == 503
        assert httpx.get(f"{base}/ready").status_code == 503
        after = post(base, {"input": "anyone there?"})
        assert after.status_code == 503 and after.json()["error"]["code"] == "worker_died"


def test_model_that_fails_to_load_exits_non_zero_with_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "app", "--model", "/nonexistent/model", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: model failed to load: model folder /nonexistent/model does not exist"
    assert "Traceback" not in result.stderr


def test_invalid_setting_exits_with_a_clear_line():
    result = subprocess.run(
        [sys.executable, "-m", "app", "--max-batch-tokens", "-5"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "max_batch_tokens" in result.stderr and "Traceback" not in result.stderr
