"""Rerank routes against real servers on loopback with the real tiny cross-encoders (tests/data/golden/rerank):
every golden through TEI's /rerank and the Cohere/Jina /v1/rerank (scores within 2e-5 of sentence-transformers, orders
equal), concurrently and with mixed lengths in one request; the cohere SDK; top_n, return_documents, 1,000
documents, empty lists, over-limit pairs with and without truncation, the wrong model kind; vLLM's /v1/score; an
embedder and a reranker side by side."""

from __future__ import annotations

import asyncio
import json

import cohere
import httpx
import numpy as np
import pytest

from model.encoder import Encoder
from tests.app.conftest import server_process
from tests.conftest import GOLDEN, load_golden

RERANK = GOLDEN / "rerank"
FAMILIES = {"bert": "bert-cross-encoder-tiny", "xlmr": "xlmr-reranker-tiny", "modernbert": "modernbert-reranker-tiny"}
ATOL = 2e-5


def models_args() -> list[str]:
    return [arg for name, folder in FAMILIES.items() for arg in ("--model", f"{name}={RERANK / folder}")]


@pytest.fixture(scope="module")
def rerankers(minilm_dir):
    """The three rerankers at their own limits, plus an embedder (first, so it is the default model)."""
    with server_process("--model", f"mini={minilm_dir}", *models_args(), "--max-wait-ms", "5") as server:
        yield server


@pytest.fixture(scope="module")
def rerankers_64():
    """The same rerankers at a 64-token limit (the goldens' `*_max_length_64` cases)."""
    with server_process(*models_args(), "--max-input-tokens", "64", "--max-wait-ms", "5") as server:
        yield server


def cases(limit_64: bool):
    for name, folder in FAMILIES.items():
        for case in load_golden(RERANK / folder)["cases"]:
            if case["name"].endswith("_max_length_64") == limit_64:
                yield name, case


def expected(case: dict, key: str) -> np.ndarray:
    return np.array([p[key] for p in sorted(case["pairs"], key=lambda p: p["document_index"])])


def rank_order(case: dict) -> list[int]:
    return [r["corpus_id"] for r in case["rank"]]


async def post_all(base: str, bodies: list[tuple[str, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(f"{base}{path}", json=body) for path, body in bodies))


@pytest.mark.parametrize("limit_64", [False, True], ids=["model-limit", "limit-64"])
def test_every_golden_through_both_shapes_concurrently(rerankers, rerankers_64, limit_64):
    server = rerankers_64 if limit_64 else rerankers
    todo = list(cases(limit_64))
    bodies = []
    for name, case in todo:
        bodies += [
            ("/rerank", {"model": name, "query": case["query"], "texts": case["documents"], "truncate": True}),
            ("/rerank", {"model": name, "query": case["query"], "texts": case["documents"], "truncate": True,
                         "raw_scores": True}),
            ("/v1/rerank", {"model": name, "query": case["query"], "documents": case["documents"]}),
        ]
    answers = asyncio.run(post_all(server.base, bodies))  # every case of every model at once: batched together
    for i, (name, case) in enumerate(todo):
        tei, raw, jina = (r.json() for r in answers[3 * i : 3 * i + 3])
        assert all(r.status_code == 200 for r in answers[3 * i : 3 * i + 3]), (name, case["name"])
        assert [r["index"] for r in tei] == rank_order(case), (name, case["name"])
        got = np.zeros(len(case["documents"]))
        for r in tei:
            got[r["index"]] = r["score"]
        np.testing.assert_allclose(got, expected(case, "predict_default"), atol=ATOL, err_msg=f"{name} {case['name']}")
        for r in raw:
            got[r["index"]] = r["score"]
        np.testing.assert_allclose(got, expected(case, "logit"), atol=ATOL, err_msg=f"{name} {case['name']}")
        assert [r["index"] for r in jina["results"]] == rank_order(case)
        for r in jina["results"]:
            assert r["relevance_score"] == pytest.approx(case["pairs"][r["index"]]["predict_default"], abs=ATOL)
            assert r["document"] == {"text": case["documents"][r["index"]]}
        assert jina["model"] == name
        assert jina["usage"]["total_tokens"] == sum(len(p["input_ids"]) for p in case["pairs"])


def test_cohere_sdk_v2_and_v1_rerank(rerankers):
    (_, case), *_ = [c for c in cases(False) if c[1]["name"] == "mixed_lengths" and c[0] == "xlmr"]
    v2 = cohere.ClientV2(base_url=rerankers.base, api_key="unused")
    out = v2.rerank(model="xlmr", query=case["query"], documents=case["documents"], top_n=3)
    assert [r.index for r in out.results] == rank_order(case)[:3]
    for r in out.results:
        assert r.relevance_score == pytest.approx(case["pairs"][r.index]["predict_default"], abs=ATOL)
    assert out.id and out.meta.api_version.version == "2"
    v1 = cohere.Client(base_url=rerankers.base, api_key="unused")
    old = v1.rerank(model="xlmr", query=case["query"], documents=case["documents"], return_documents=True, top_n=2)
    assert [r.index for r in old.results] == rank_order(case)[:2]
    assert old.results[0].document.text == case["documents"][old.results[0].index]
    with pytest.raises(cohere.core.api_error.ApiError) as err:
        v2.rerank(model="nope", query="q", documents=["d"])
    assert err.value.status_code == 404 and "nope" in err.value.body["message"]


def test_tei_shape_options_and_a_thousand_documents(rerankers):
    base = rerankers.base
    documents = [f"document {i}: " + "berlin " * (i % 23) + "and its rivers" for i in range(1000)]
    r = httpx.post(f"{base}/rerank", json={"model": "bert", "query": "rivers of berlin", "texts": documents,
                                           "return_text": True}, timeout=120)
    assert r.status_code == 200
    ranks = r.json()
    assert sorted(x["index"] for x in ranks) == list(range(1000))
    scores = [x["score"] for x in ranks]
    assert scores == sorted(scores, reverse=True) and all(x["text"] == documents[x["index"]] for x in ranks)
    reference = Encoder.load(str(RERANK / FAMILIES["bert"]), device="cpu", dtype="float32")
    logits = reference.score(reference.tokenize_pairs("rivers of berlin", documents, truncate=False))
    np.testing.assert_allclose([x["score"] for x in sorted(ranks, key=lambda x: x["index"])], logits, atol=ATOL)
    # Cohere shape: top_n and return_documents
    jina = httpx.post(f"{base}/v1/rerank", json={"model": "bert", "query": "rivers of berlin", "documents": documents,
                                                 "top_n": 5, "return_documents": False}, timeout=120).json()
    assert [x["index"] for x in jina["results"]] == [x["index"] for x in ranks[:5]]
    assert all("document" not in x for x in jina["results"])
    plain = httpx.post(f"{base}/rerank", json={"model": "bert", "query": "q", "texts": ["a", "b"]}).json()
    assert all("text" not in x for x in plain)


def test_no_model_named_goes_to_the_first_reranker(rerankers):
    body = {"query": "q", "texts": ["a document"]}
    named = httpx.post(f"{rerankers.base}/rerank", json=body | {"model": "bert"}).json()
    assert httpx.post(f"{rerankers.base}/rerank", json=body).json() == named  # not the default embedder


def test_bad_rerank_requests_answer_in_each_routes_shape(rerankers):
    base = rerankers.base
    long_doc = "berlin " * 700  # ~700 tokens with the query: over bert's 512
    checks = [
        # (path, body, status, what the error must say)
        ("/rerank", {"model": "bert", "query": "q", "texts": []}, 400, "empty"),
        ("/v1/rerank", {"model": "bert", "query": "q", "documents": []}, 400, None),
        ("/v2/rerank", {"model": "bert", "query": "", "documents": ["a"]}, 400, None),
        ("/rerank", {"model": "bert", "query": "q", "texts": ["ok", long_doc], "truncate": False}, 422, "validation"),
        ("/v1/rerank", {"model": "bert", "query": "q", "documents": ["ok", long_doc], "truncate": False}, 400, None),
        ("/v1/score", {"model": "bert", "text_1": "q", "text_2": ["ok", long_doc], "truncate": False}, 400, None),
        ("/rerank", {"model": "mini", "query": "q", "texts": ["a"]}, 400, "validation"),
        ("/v2/rerank", {"model": "mini", "query": "q", "documents": ["a"]}, 400, None),
        ("/v1/score", {"model": "mini", "text_1": "q", "text_2": "a"}, 400, None),
        ("/rerank", {"model": "bert", "query": "q", "texts": "not a list"}, 422, "validation"),
        ("/rerank", {"model": "bert", "query": "q", "texts": ["a"], "truncation_direction": "Left"}, 422, "validation"),
        ("/v2/rerank", {"model": "bert", "query": "q", "documents": ["a"], "top_n": 0}, 400, None),
        ("/v2/rerank", {"model": "bert", "query": "q", "documents": ["a"], "unknown": 1}, 400, None),
        ("/v1/score", {"model": "bert", "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400, None),
        ("/rerank", {"model": "nope", "query": "q", "texts": ["a"]}, 404, "validation"),
    ]
    for path, body, status, error_type in checks:
        r = httpx.post(f"{base}{path}", json=body, timeout=60)
        assert r.status_code == status, (path, body, r.status_code, r.text)
        err = r.json()
        if path == "/rerank":  # TEI: {"error", "error_type"}
            assert set(err) == {"error", "error_type"} and err["error_type"] == error_type, err
        elif path.endswith("/rerank"):  # Cohere: {"message"}
            assert set(err) == {"message"} and err["message"], err
        else:  # vLLM's score: OpenAI's shape
            assert err["error"]["message"] and err["error"]["type"] == "invalid_request_error", err
    over = httpx.post(f"{base}/v1/rerank", json={"model": "bert", "query": "q", "documents": ["ok", long_doc],
                                                 "truncate": False}).json()
    assert "Document 1" in over["message"] and "512" in over["message"]
    kind = httpx.post(f"{base}/v2/rerank", json={"model": "mini", "query": "q", "documents": ["a"]}).json()
    assert "embedding model" in kind["message"]
    wrong = httpx.post(f"{base}/v1/embeddings", json={"model": "bert", "input": "a"}).json()["error"]
    assert wrong["code"] == "wrong_model_kind" and "reranker" in wrong["message"]
    # with truncation (the default on the Cohere shape), the long document is scored
    cut = httpx.post(f"{base}/v1/rerank", json={"model": "bert", "query": "q", "documents": ["ok", long_doc]})
    assert cut.status_code == 200 and cut.json()["usage"]["total_tokens"] == 512 + 5


def test_vllm_score_one_to_many_and_zipped(rerankers):
    (_, case), *_ = [c for c in cases(False) if c[1]["name"] == "non_ascii" and c[0] == "modernbert"]
    base = rerankers.base
    one = httpx.post(f"{base}/v1/score", json={"model": "modernbert", "text_1": case["query"],
                                               "text_2": case["documents"]}).json()
    assert [d["index"] for d in one["data"]] == list(range(len(case["documents"])))
    np.testing.assert_allclose([d["score"] for d in one["data"]], expected(case, "predict_default"), atol=ATOL)
    zipped = httpx.post(f"{base}/v1/score", json={"model": "modernbert", "text_1": [case["query"]] * 2,
                                                  "text_2": case["documents"][:2]}).json()
    np.testing.assert_allclose([d["score"] for d in zipped["data"]], expected(case, "predict_default")[:2], atol=ATOL)


def test_embedder_and_reranker_side_by_side(rerankers, minilm):
    """Concurrent embedding and rerank traffic in one process: each answer as the model gives it alone, and the
    metrics counted under each model's label."""
    base = rerankers.base
    texts = [f"text {i} " + "word " * i for i in range(12)]
    (_, case), *_ = [c for c in cases(False) if c[1]["name"] == "mixed_lengths" and c[0] == "bert"]
    bodies = []
    for i in range(6):
        bodies.append(("/v1/embeddings", {"model": "mini", "input": texts[2 * i : 2 * i + 2]}))
        bodies.append(("/rerank", {"query": case["query"], "texts": case["documents"], "raw_scores": True}))
    answers = asyncio.run(post_all(base, bodies))
    vectors = minilm.embed(minilm.tokenize(texts))
    for i in range(6):
        emb, rr = answers[2 * i].json(), answers[2 * i + 1].json()
        np.testing.assert_allclose([d["embedding"] for d in emb["data"]], vectors[2 * i : 2 * i + 2], atol=1e-5)
        got = {x["index"]: x["score"] for x in rr}
        np.testing.assert_allclose([got[j] for j in range(5)], expected(case, "logit"), atol=ATOL)
    metrics = httpx.get(f"{base}/metrics").text
    assert 'embed_rerank_pairs_total{model="bert"}' in metrics
    pairs = next(line for line in metrics.splitlines() if line.startswith('embed_rerank_pairs_total{model="bert"}'))
    assert float(pairs.split()[-1]) >= 30
    assert 'embed_rerank_pairs_total{model="mini"} 0.0' in metrics
    listed = {m["id"]: m["kind"] for m in httpx.get(f"{base}/v1/models").json()["data"]}
    assert listed == {"mini": "embedding", "bert": "reranker", "xlmr": "reranker", "modernbert": "reranker"}
    assert json.loads(httpx.get(f"{base}/ready").text)["status"] == "ready"
