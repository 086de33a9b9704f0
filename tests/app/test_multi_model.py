"""Several models in one server (`--model NAME=SOURCE`, repeatable), against real servers on loopback: each model
answers as it does served alone, requests route by `model`, metrics are per model, /ready waits for every model,
and one model's overload (429) does not stop the other."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.__main__ import load_settings
from app.settings import Settings
from model.encoder import Encoder
from tests.app.conftest import server_process, thread_server, wait_ready
from tests.app.fakes import WrappedEncoder
from tests.conftest import NOMIC

TINY = NOMIC / "nomic-text-tiny"
TEXTS = [f"sentence {i} about {'berlin ' * (i % 7)}and rivers" for i in range(24)]


@pytest.fixture(scope="module")
def tiny():
    return Encoder.load(str(TINY), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def pair_server(minilm_dir):
    with server_process("--model", f"mini={minilm_dir}", "--model", f"nomic={TINY}", "--max-wait-ms", "5") as server:
        yield server


def embed(base: str, texts: list[str], model: str | None = None) -> httpx.Response:
    body = {"input": texts, "encoding_format": "float"} | ({"model": model} if model else {})
    return httpx.post(f"{base}/v1/embeddings", json=body, timeout=60)


def by_model(base: str, name: str) -> dict[str, float]:
    """Samples of one model's series, summed over their other labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for s in family.samples:
            if s.labels.get("model") == name:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def test_settings_take_one_model_as_before_or_several_named(monkeypatch):
    assert load_settings([]).models == [("all-MiniLM-L6-v2", "packaged:all-MiniLM-L6-v2")]
    assert load_settings(["--model", "/m/x"]).models == [("/m/x", "/m/x")]
    assert load_settings(["--model", "/m/x", "--served-model-name", "x"]).models == [("x", "/m/x")]
    two = load_settings(["--model", "embed=nomic-ai/nomic-embed-text-v1.5", "--model", "rerank=/m/bge"])
    assert two.models == [("embed", "nomic-ai/nomic-embed-text-v1.5"), ("rerank", "/m/bge")]
    monkeypatch.setenv("EMBED_MODEL", "BAAI/bge-small-en-v1.5")
    assert Settings().models == [("BAAI/bge-small-en-v1.5", "BAAI/bge-small-en-v1.5")]
    monkeypatch.setenv("EMBED_MODEL", '["a=/m/a", "b=/m/b"]')
    assert Settings().models == [("a", "/m/a"), ("b", "/m/b")]
    for bad in (["a=/m/a", "a=/m/b"], ["=/m/a"], ["a="]):
        with pytest.raises(ValueError):
            Settings(model=bad)
    assert Settings(model=["/m/a", "/m/b"], served_model_name="x").models == [("x", "/m/a"), ("/m/b", "/m/b")]
    with pytest.raises(ValueError, match="served_model_name"):
        Settings(model=["a=/m/a", "b=/m/b"], served_model_name="x")


def test_each_model_answers_as_served_alone_under_concurrent_traffic(pair_server, minilm, tiny):
    base = pair_server.base
    expected = {"mini": minilm.embed(minilm.tokenize(TEXTS)), "nomic": tiny.embed(tiny.tokenize(TEXTS))}
    before = {name: by_model(base, name) for name in expected}

    async def traffic():
        async with httpx.AsyncClient(timeout=60) as client:
            jobs = [
                (name, i, client.post(f"{base}/v1/embeddings", json={"model": name, "input": TEXTS[i : i + 3]}))
                for i in range(0, len(TEXTS), 3)
                for name in expected
            ]
            return [(name, i, await r) for name, i, r in [(n, i, asyncio.ensure_future(c)) for n, i, c in jobs]]

    for name, i, r in asyncio.run(traffic()):
        assert r.status_code == 200, r.text
        assert r.json()["model"] == name
        got = [d["embedding"] for d in r.json()["data"]]
        np.testing.assert_allclose(got, expected[name][i : i + 3], atol=1e-5)
    for name in expected:  # the work is counted under each model's own label
        after = by_model(base, name)
        assert after["embed_embeddings_total"] - before[name].get("embed_embeddings_total", 0) == len(TEXTS)
        assert after["embed_batch_size_count"] > before[name].get("embed_batch_size_count", 0)
        assert after["embed_requests_total"] - before[name].get("embed_requests_total", 0) == len(TEXTS) // 3


def test_routing_default_unknown_and_listing(pair_server, minilm, tiny):
    base = pair_server.base
    default = embed(base, ["no model named"])
    assert default.status_code == 200 and default.json()["model"] == "mini"  # the first --model
    np.testing.assert_allclose(
        default.json()["data"][0]["embedding"], minilm.embed(minilm.tokenize(["no model named"]))[0], atol=1e-5
    )
    unknown = embed(base, ["x"], model="nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    listed = httpx.get(f"{base}/v1/models").json()["data"]
    assert [(m["id"], m["kind"]) for m in listed] == [("mini", "embedding"), ("nomic", "embedding")]
    assert [m["dimensions"] for m in listed] == [384, tiny.info.hidden_size]
    assert httpx.get(f"{base}/v1/models/nomic").json()["id"] == "nomic"
    assert httpx.get(f"{base}/v1/models/nope").status_code == 404
    tok = httpx.post(f"{base}/tokenize", json={"model": "nomic", "input": "hi"}).json()
    assert tok["model"] == "nomic" and tok["max_input_tokens"] == 8192
    metrics = httpx.get(f"{base}/metrics").text
    labels = {s.labels.get("model") for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert labels <= {"mini", "nomic", ""}, labels  # bounded: configured names only ("" = reached no model)


class SlowWarmup(WrappedEncoder):
    def __init__(self, real, gate: threading.Event):
        super().__init__(real)
        self.gate = gate

    def warmup(self) -> None:
        self.gate.wait(30)


def test_ready_only_once_every_model_is_warm(tiny):
    gate = threading.Event()
    encoders = {"a": WrappedEncoder(tiny), "b": SlowWarmup(tiny, gate)}
    settings = Settings(model=["a=fake-a", "b=fake-b"], max_wait_ms=1)
    try:
        with thread_server(settings, None, encoders=encoders, ready=False) as (base, _):
            time.sleep(0.3)  # model a is warm by now, b waits at the gate
            assert httpx.get(f"{base}/ready").status_code == 503
            gate.set()
            wait_ready(base, timeout=30)
            assert embed(base, ["now"], model="b").status_code == 200
    finally:
        gate.set()


def test_one_models_overload_does_not_stop_the_other(tiny):
    """Model `slow` (0.2 s per batch) is flooded past its queue bound and answers 429s; model `fast` keeps answering
    200s meanwhile, each within about one of `slow`'s batches (the compute slots are shared, first come first served,
    so `fast` waits for at most the batch ahead of it, never for `slow`'s queue)."""
    batch_s = 0.2
    settings = Settings(model=["slow=fake-slow", "fast=fake-fast"], max_wait_ms=1, max_queue_tokens=400,
                        max_batch_tokens=64, encoder_workers=1)
    encoders = {"slow": WrappedEncoder(tiny, delay_s=batch_s), "fast": WrappedEncoder(tiny)}
    flood = [[101, 2000 + i, 2001, 2002, 2003, 2004, 2005, 102] for i in range(16)]  # 128 tokens, two batches

    async def scenario(base):
        async with httpx.AsyncClient(timeout=60) as client:
            slow = [
                asyncio.ensure_future(client.post(f"{base}/v1/embeddings", json={"model": "slow", "input": flood}))
                for _ in range(12)
            ]
            await asyncio.sleep(0.3)
            fast = []
            for i in range(5):
                start = time.perf_counter()
                r = await client.post(f"{base}/v1/embeddings", json={"model": "fast", "input": f"quick {i}"})
                fast.append((r, time.perf_counter() - start))
            return await asyncio.gather(*slow), fast

    with thread_server(settings, None, encoders=encoders) as (base, _):
        slow, fast = asyncio.run(scenario(base))
        rejected_slow = by_model(base, "slow").get("embed_rejected_total", 0)
        rejected_fast = by_model(base, "fast").get("embed_rejected_total", 0)
    statuses = [r.status_code for r in slow]
    assert 429 in statuses and set(statuses) <= {200, 429}, statuses
    assert all(r.status_code == 200 for r, _ in fast)
    worst = max(s for _, s in fast)
    assert worst < 3 * batch_s + 0.2, f"fast model waited {worst:.2f} s behind the slow one"
    assert rejected_slow == statuses.count(429) and rejected_fast == 0
