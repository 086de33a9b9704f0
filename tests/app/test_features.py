"""Beyond the peers, against real servers: task prefixes, long inputs (truncate, chunk), the embedding cache,
priorities (a query is not stuck behind bulk work), and /tokenize."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from model.encoder import Encoder
from tests.app.conftest import server_process, thread_server
from tests.app.fakes import WrappedEncoder
from tests.conftest import NOMIC

TEXT = "What is the capital of France?"


def embed(base: str, **body) -> dict:
    r = httpx.post(f"{base}/v1/embeddings", json={"encoding_format": "float", **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def samples(base: str) -> dict[str, float]:
    """Each sample's value summed over its label sets (every metric carries a `model` label)."""
    text = httpx.get(f"{base}/metrics").text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def test_input_type_prepends_the_prefix_and_counts_it(nomic_server):
    base = nomic_server.base
    plain = embed(base, input="search_query: " + TEXT)
    typed = embed(base, input=TEXT, input_type="search_query")
    alias = embed(base, input=TEXT, input_type="query")
    bare = embed(base, input=TEXT)
    np.testing.assert_allclose(typed["data"][0]["embedding"], plain["data"][0]["embedding"], atol=1e-6)
    np.testing.assert_allclose(alias["data"][0]["embedding"], plain["data"][0]["embedding"], atol=1e-6)
    assert typed["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] > bare["usage"]["prompt_tokens"]
    tasks = httpx.get(f"{base}/v1/models").json()["data"][0]["task_types"]
    assert tasks == {
        "search_query": "search_query: ",
        "search_document": "search_document: ",
        "classification": "classification: ",
        "clustering": "clustering: ",
    }


def test_server_default_input_type_and_folder_prompts(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(NOMIC / "nomic-text-tiny", folder)
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "q: ", "passage": "p: "}})
    )
    with server_process("--model", str(folder), "--default-input-type", "passage") as server:
        assert httpx.get(f"{server.base}/v1/models").json()["data"][0]["task_types"] == {
            "query": "q: ",
            "passage": "p: ",
        }
        default = embed(server.base, input=TEXT)
        passage = embed(server.base, input=TEXT, input_type="passage")
        query = embed(server.base, input=TEXT, input_type="query")
        assert default == passage and query["data"] != passage["data"]
        counted = httpx.post(f"{server.base}/tokenize", json={"input": TEXT}).json()["data"][0]
        assert counted["tokens"][1:3] == ["p", ":"] and counted["count"] == default["usage"]["prompt_tokens"]


def test_long_inputs_error_truncate_chunk():
    limit = 16
    encoder = Encoder.load(str(NOMIC / "nomic-text-tiny"), device="cpu", dtype="float32", max_input_tokens=limit)
    text = " ".join(f"word{i}" for i in range(40))
    ids = encoder.tokenize([text])[0]
    assert len(ids) >= 3 * limit
    windows = encoder.windows(ids)
    assert all(len(w) <= limit and w[0] == 101 and w[-1] == 102 for w in windows)
    pooled = encoder.pooled(windows)
    weights = np.array([len(w) for w in windows], dtype=np.float32)[:, None]
    expected_chunk = encoder.finish(((pooled * weights).sum(0) / weights.sum())[None])[0]
    expected_trunc = encoder.embed([encoder.truncate(ids)])[0]
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--max-input-tokens", str(limit)) as server:
        r = httpx.post(f"{server.base}/v1/embeddings", json={"input": text})
        assert r.status_code == 400 and f"{len(ids)} tokens" in r.json()["error"]["message"]
        chunk = embed(server.base, input=text, long_input="chunk")
        trunc = embed(server.base, input=text, long_input="truncate")
        np.testing.assert_allclose(chunk["data"][0]["embedding"], expected_chunk, atol=1e-5)
        np.testing.assert_allclose(trunc["data"][0]["embedding"], expected_trunc, atol=1e-5)
        assert chunk["usage"]["prompt_tokens"] == sum(len(w) for w in windows)
        assert trunc["usage"]["prompt_tokens"] == limit
        # token ids are cut exactly as given (no [SEP] re-appended)
        cut = embed(server.base, input=ids, long_input="truncate")
        np.testing.assert_allclose(cut["data"][0]["embedding"], encoder.embed([ids[:limit]])[0], atol=1e-5)
    with server_process(
        "--model", str(NOMIC / "nomic-text-tiny"), "--max-input-tokens", str(limit), "--long-input", "chunk"
    ) as server:  # the server default
        np.testing.assert_allclose(embed(server.base, input=text)["data"][0]["embedding"], expected_chunk, atol=1e-5)


def test_cache_answers_repeats_with_identical_bytes():
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--cache-bytes", "1000000") as server:
        body = {"input": ["cached one", "cached two"], "encoding_format": "base64", "dimensions": 32}
        first = httpx.post(f"{server.base}/v1/embeddings", json=body)
        before = samples(server.base)
        second = httpx.post(f"{server.base}/v1/embeddings", json=body)
        after = samples(server.base)
        assert first.content == second.content
        assert after["embed_cache_hits_total"] - before["embed_cache_hits_total"] == 2
        assert after["embed_batch_size_count"] == before["embed_batch_size_count"]  # no batch ran for the repeat
        assert after["embed_cache_bytes"] > 0 and before["embed_cache_misses_total"] >= 2
        # the key includes dimensions and the task prefix
        other = httpx.post(f"{server.base}/v1/embeddings", json={**body, "dimensions": 16})
        assert other.json()["data"][0]["embedding"] != first.json()["data"][0]["embedding"]
        assert samples(server.base)["embed_cache_misses_total"] == after["embed_cache_misses_total"] + 2


def test_cache_is_off_by_default(nomic_server):
    assert samples(nomic_server.base)["embed_cache_bytes"] == 0


def test_a_query_behind_three_bulk_requests_waits_about_two_batch_times():
    """Issue 18.6 as the user ran it, scaled down: three bulk requests of 1,024 short texts, then one short query.
    Batches take 0.4 s (a fake delay on top of the real tiny model), longer than the 200 ms starvation window, and
    the query arrives 0.3 s into a bulk batch. Before, that made every dispatch let "starved" bulk go first and the
    query waited for all of the bulk still queued (9 or more batches, 3.6 s and up); now it waits for the running
    batch, then its own."""
    batch_s = 0.4
    encoder = WrappedEncoder(
        Encoder.load(str(NOMIC / "nomic-text-tiny"), device="cpu", dtype="float32"), delay_s=batch_s
    )
    # otherwise the defaults but GPU-sized batches: 256 texts per batch
    settings = Settings(model="fake", max_wait_ms=1, encoder_workers=1, max_batch_tokens=16384)
    texts = [f"document {i} about the weather in city number {i % 97}" for i in range(1024)]

    async def scenario(base, batcher):
        async with httpx.AsyncClient(timeout=120) as client:
            bulk = [
                asyncio.create_task(client.post(f"{base}/v1/embeddings", json={"input": texts})) for _ in range(3)
            ]
            while batcher.queue_items < 3 * 1024 - 3 * 256:  # all three tokenised and queued (the server's view)
                await asyncio.sleep(0.005)
            started = len(encoder.batches)
            while len(encoder.batches) == started:  # the next bulk batch starts now
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.3)
            start = time.perf_counter()
            query = await client.post(f"{base}/v1/embeddings", json={"input": "search_query: where?"})
            query_s = time.perf_counter() - start
            return query, query_s, await asyncio.gather(*bulk)

    with thread_server(settings, encoder) as (base, app):
        query, query_s, done = asyncio.run(scenario(base, app.state.runtime.default.batcher))
    assert query.status_code == 200
    assert all(r.status_code == 200 and len(r.json()["data"]) == 1024 for r in done)  # bulk not starved either
    after = next(i for i, b in enumerate(encoder.batches) if len(b) == 1)  # the query's batch
    assert query_s < 4 * batch_s, f"query took {query_s:.3f} s, batch time {batch_s} s, {after} bulk batches first"


def test_tokenize(nomic_server):
    encoder = Encoder.load(str(NOMIC / "nomic-text-tiny"), device="cpu", dtype="float32")
    r = httpx.post(f"{nomic_server.base}/tokenize", json={"input": [TEXT, "hi"], "input_type": "search_query"})
    assert r.status_code == 200, r.text
    out = r.json()
    expected = encoder.tokenize([TEXT, "hi"], "search_query: ")
    assert [d["input_ids"] for d in out["data"]] == expected
    assert [d["count"] for d in out["data"]] == [len(x) for x in expected]
    assert out["data"][0]["tokens"][:4] == ["[CLS]", "search", "_", "query"]
    assert out["usage"]["prompt_tokens"] == sum(map(len, expected)) and out["max_input_tokens"] == 8192
    # the same count /v1/embeddings bills
    billed = embed(nomic_server.base, input=[TEXT, "hi"], input_type="search_query")["usage"]["prompt_tokens"]
    assert billed == out["usage"]["prompt_tokens"]
    assert httpx.post(f"{nomic_server.base}/tokenize", json={"input": ""}).status_code == 400
