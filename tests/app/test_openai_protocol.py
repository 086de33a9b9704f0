"""The OpenAI protocol against a real server (`python -m app`, real MiniLM): the official SDK, base64 and float,
dimensions, input shapes, usage, and 64 concurrent clients whose answers equal their single-request answers."""

from __future__ import annotations

import asyncio
import base64
import random

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "naïve café — crème brûlée",
    "東京は日本の首都です。",
    "x",
]


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)


def test_openai_sdk_base64_default_and_float(minilm_server, minilm):
    reference = minilm.embed(minilm.tokenize(TEXTS))
    sdk = client(minilm_server)
    default = sdk.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)  # the SDK asks for base64
    as_float = sdk.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS, encoding_format="float")
    for response in (default, as_float):
        assert [d.index for d in response.data] == list(range(len(TEXTS)))
        for d, ref in zip(response.data, reference):
            assert cosine(d.embedding, ref) >= 0.99999
    assert default.usage.prompt_tokens == sum(len(ids) for ids in minilm.tokenize(TEXTS))
    assert default.usage.total_tokens == default.usage.prompt_tokens
    assert default.model == "all-MiniLM-L6-v2"


def test_base64_is_little_endian_float32(minilm_server):
    body = {"model": "all-MiniLM-L6-v2", "input": "hello", "encoding_format": "base64"}
    b64 = httpx.post(f"{minilm_server.base}/v1/embeddings", json=body).json()["data"][0]["embedding"]
    body["encoding_format"] = "float"
    floats = httpx.post(f"{minilm_server.base}/v1/embeddings", json=body).json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    assert decoded.shape == (384,)
    np.testing.assert_allclose(decoded, floats, rtol=1e-6)


def test_dimensions_through_the_sdk(minilm_server, minilm):
    out = client(minilm_server).embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[:2], dimensions=64)
    reference = minilm.embed(minilm.tokenize(TEXTS[:2]), dimensions=64)
    for d, ref in zip(out.data, reference):
        assert len(d.embedding) == 64
        assert cosine(d.embedding, ref) >= 0.99999
        assert abs(np.linalg.norm(d.embedding) - 1) < 1e-5


def test_token_id_inputs_are_used_as_given(minilm_server, minilm):
    ids = minilm.tokenize(TEXTS[:2])
    url = f"{minilm_server.base}/v1/embeddings"
    many = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": ids, "encoding_format": "float"}).json()
    one = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": ids[0], "encoding_format": "float"}).json()
    text = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": TEXTS[0]}).json()
    np.testing.assert_allclose(many["data"][0]["embedding"], one["data"][0]["embedding"], atol=1e-6)
    np.testing.assert_allclose(many["data"][0]["embedding"], text["data"][0]["embedding"], atol=1e-6)
    assert many["usage"]["prompt_tokens"] == len(ids[0]) + len(ids[1])
    # no special tokens added: ids without [CLS]/[SEP] give a different vector
    bare = httpx.post(url, json={"input": ids[0][1:-1]}).json()["data"][0]["embedding"]
    assert cosine(bare, one["data"][0]["embedding"]) < 0.9999


def test_over_long_input_is_a_400_with_count_and_limit(minilm_server):
    long_text = "word " * 400
    r = httpx.post(f"{minilm_server.base}/v1/embeddings", json={"input": long_text})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "402 tokens" in err["message"] and "256" in err["message"]
    r = httpx.post(f"{minilm_server.base}/v1/embeddings", json={"input": long_text, "long_input": "truncate"})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 256


def test_64_concurrent_clients_match_single_requests(minilm_server):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    requests = []
    for i in range(64):
        n_inputs = rng.choice([1, 1, 2, 5])
        requests.append([" ".join(rng.choices(words, k=rng.randint(1, 120))) + f" #{i}" for _ in range(n_inputs)])
    url = f"{minilm_server.base}/v1/embeddings"

    def batch_count() -> float:
        text = httpx.get(f"{minilm_server.base}/metrics").text
        hist = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
        return hist["embed_batch_size_count"].value, hist["embed_batch_size_sum"].value

    singles = {}
    with httpx.Client(timeout=60) as c:
        for inputs in requests:
            for text in inputs:
                singles[text] = c.post(url, json={"input": text, "encoding_format": "float"}).json()["data"][0][
                    "embedding"
                ]
    batches_before, items_before = batch_count()

    async def fire():
        async with httpx.AsyncClient(timeout=60) as ac:
            return await asyncio.gather(
                *(ac.post(url, json={"input": inputs, "encoding_format": "float"}) for inputs in requests)
            )

    responses = asyncio.run(fire())
    batches_after, items_after = batch_count()
    for inputs, response in zip(requests, responses):
        assert response.status_code == 200
        data = response.json()["data"]
        assert [d["index"] for d in data] == list(range(len(inputs)))
        for text, d in zip(inputs, data):
            np.testing.assert_allclose(d["embedding"], singles[text], atol=1e-5)
    n_items = sum(len(r) for r in requests)
    assert items_after - items_before == n_items
    assert (items_after - items_before) / (batches_after - batches_before) > 1, "no batch formed"


def test_models_list(minilm_server):
    models = client(minilm_server).models.list()
    assert [m.id for m in models.data] == ["all-MiniLM-L6-v2"]
    card = httpx.get(f"{minilm_server.base}/v1/models").json()["data"][0]
    assert card["max_input_tokens"] == 256 and card["dimensions"] == 384 and card["object"] == "model"


def test_unknown_model_is_a_404_model_not_found(minilm_server):
    with pytest.raises(openai.NotFoundError) as err:
        client(minilm_server).embeddings.create(model="text-embedding-3-large", input="hi")
    assert err.value.body["code"] == "model_not_found"
