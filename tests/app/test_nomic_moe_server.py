"""nomic-embed-text-v2-moe through the real server: the nomic-moe goldens with texts in (alone, in one request, and as
concurrent requests the batcher packs together), /v1/models' experts, the folder's query/passage prompts, Matryoshka,
long inputs, the cache and the bulk priority."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from model.encoder import Encoder
from tests.app.conftest import server_process
from tests.app.test_features import embed, samples
from tests.conftest import GOLDEN, load_golden

MOE = GOLDEN / "nomic-moe" / "nomic-moe-tiny"
CASES = load_golden(MOE)["cases"]
ATOL = 2e-5
LIMIT = 300  # above the longest golden (285 tokens), so a doubled text is long


@pytest.fixture(scope="module")
def moe_server():
    args = ("--model", str(MOE), "--served-model-name", "v2-moe-tiny", "--max-input-tokens", str(LIMIT))
    with server_process(*args, "--cache-bytes", "1000000") as server:
        yield server


def vectors(response: dict) -> list[list[float]]:
    return [d["embedding"] for d in response["data"]]


def test_models_card_shows_the_experts(moe_server):
    card = httpx.get(f"{moe_server.base}/v1/models").json()["data"][0]
    assert card["experts"] == {"num_experts": 4, "top_k": 2, "layers": [1]}
    assert (card["model_type"], card["pooling"], card["dimensions"]) == ("nomic_bert", "mean", 64)
    assert (card["max_input_tokens"], card["max_input_tokens_source"]) == (LIMIT, "--max-input-tokens")
    assert card["task_types"] == {"query": "search_query: ", "passage": "search_document: "}


def test_goldens_alone_together_and_concurrent(moe_server):
    base, texts = moe_server.base, [c["text"] for c in CASES]
    expected = [c["mean_pooled_l2"] for c in CASES]
    for case in CASES:
        r = embed(base, model="v2-moe-tiny", input=case["text"])
        np.testing.assert_allclose(r["data"][0]["embedding"], case["mean_pooled_l2"], atol=ATOL)
        assert r["usage"]["prompt_tokens"] == len(case["input_ids"])
    np.testing.assert_allclose(vectors(embed(base, input=texts)), expected, atol=ATOL)
    np.testing.assert_allclose(vectors(embed(base, input=texts, dimensions=32)),
                               [c["matryoshka_32"] for c in CASES], atol=ATOL)
    # every text its own request, all at once: the batcher packs different lengths into shared forwards
    with ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(lambda t: embed(base, input=[t, t[: len(t) // 2]])["data"][0]["embedding"], texts))
    np.testing.assert_allclose(answers, expected, atol=ATOL)


def test_input_types_find_the_folders_prompts(moe_server):
    query, document = CASES[0], CASES[1]  # "search_query: ..." and "search_document: ..." goldens
    bare_query = query["text"].removeprefix("search_query: ")
    bare_document = document["text"].removeprefix("search_document: ")
    for input_type in ("query", "search_query"):
        r = embed(moe_server.base, input=bare_query, input_type=input_type)
        np.testing.assert_allclose(r["data"][0]["embedding"], query["mean_pooled_l2"], atol=ATOL)
        assert r["usage"]["prompt_tokens"] == len(query["input_ids"])
    for input_type in ("passage", "search_document", "document"):
        r = embed(moe_server.base, input=bare_document, input_type=input_type)
        np.testing.assert_allclose(r["data"][0]["embedding"], document["mean_pooled_l2"], atol=ATOL)
    r = httpx.post(f"{moe_server.base}/v1/embeddings", json={"input": "x", "input_type": "clustering"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_type"


def long_input_expectations() -> tuple[list[int], np.ndarray, np.ndarray]:
    """A text over the limit, and what chunking and truncating it must give, computed in-process."""
    encoder = Encoder.load(str(MOE), device="cpu", dtype="float32", max_input_tokens=LIMIT)
    text = CASES[10]["text"] + " " + CASES[10]["text"]
    ids = encoder.tokenize([text])[0]
    assert len(ids) > LIMIT
    windows = encoder.windows(ids)
    assert all(len(w) <= LIMIT and w[0] == 0 and w[-1] == 2 for w in windows)  # <s> ... </s> in every window
    weights = np.array([len(w) for w in windows], dtype=np.float32)[:, None]
    expected_chunk = encoder.finish(((encoder.pooled(windows) * weights).sum(0) / weights.sum())[None])[0]
    expected_trunc = encoder.embed([encoder.truncate(ids)])[0]
    return ids, expected_chunk, expected_trunc


def test_long_inputs_through_the_server(moe_server):
    ids, expected_chunk, expected_trunc = long_input_expectations()
    text = CASES[10]["text"] + " " + CASES[10]["text"]
    r = httpx.post(f"{moe_server.base}/v1/embeddings", json={"input": text})
    assert r.status_code == 400 and f"{len(ids)} tokens" in r.json()["error"]["message"]
    chunk = embed(moe_server.base, input=text, long_input="chunk")
    trunc = embed(moe_server.base, input=text, long_input="truncate")
    np.testing.assert_allclose(chunk["data"][0]["embedding"], expected_chunk, atol=1e-5)
    np.testing.assert_allclose(trunc["data"][0]["embedding"], expected_trunc, atol=1e-5)
    assert trunc["usage"]["prompt_tokens"] == LIMIT


def test_cache_and_bulk_priority(moe_server):
    base, texts = moe_server.base, [c["text"] for c in CASES[:4]]
    body = {"input": texts, "encoding_format": "base64", "priority": "bulk"}
    first = httpx.post(f"{base}/v1/embeddings", json=body)
    before = samples(base)
    second = httpx.post(f"{base}/v1/embeddings", json=body)
    assert first.status_code == 200 and first.content == second.content
    assert samples(base)["embed_cache_hits_total"] - before["embed_cache_hits_total"] == len(texts)
    bulk = embed(base, input=texts, priority="bulk", dimensions=32)
    np.testing.assert_allclose(vectors(bulk), [c["matryoshka_32"] for c in CASES[:4]], atol=ATOL)
