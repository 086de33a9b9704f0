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
from tokenizers import Tokenizer

from model.encoder import Encoder
from model.tokenizer import Pair
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
        ("/rerank", {"model": "bert", "query": "q", "texts": ["ok", long_doc], "truncate": False}, 413, "validation"),
        ("/v1/rerank", {"model": "bert", "query": "q", "documents": ["ok", long_doc], "truncate": False}, 400, None),
        ("/v1/score", {"model": "bert", "text_1": "q", "text_2": ["ok", long_doc], "truncate": False}, 400, None),
        ("/rerank", {"model": "mini", "query": "q", "texts": ["a"]}, 400, "validation"),
        ("/v2/rerank", {"model": "mini", "query": "q", "documents": ["a"]}, 400, None),
        ("/v1/score", {"model": "mini", "text_1": "q", "text_2": "a"}, 400, None),
        ("/rerank", {"model": "bert", "query": "q", "texts": "not a list"}, 422, "validation"),
        ("/rerank", {"model": "bert", "query": "q", "texts": ["a"], "truncation_direction": "Up"}, 422, "validation"),
        ("/v2/rerank", {"model": "bert", "query": "q", "documents": ["a"], "top_n": -1}, 400, None),
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


def reference(name: str) -> Encoder:
    return Encoder.load(str(RERANK / FAMILIES[name]), device="cpu", dtype="float32")


def library_pairs(name: str, query: str, documents: list[str], limit: int, direction: str = "right") -> list[Pair]:
    """The pairs as the `tokenizers` library cuts them itself (longest first, from `direction`): TEI's rule."""
    tok = Tokenizer.from_file(str(RERANK / FAMILIES[name] / "tokenizer.json"))
    tok.enable_truncation(limit, strategy="longest_first", direction=direction)
    return [Pair(e.ids, e.type_ids) for e in tok.encode_batch([(query, d) for d in documents])]


def scores_by_index(ranks: list[dict]) -> list[float]:
    return [r["score"] for r in sorted(ranks, key=lambda r: r["index"])]


@pytest.mark.parametrize("name", ["bert", "xlmr"])
def test_tei_left_truncation_cuts_the_pairs_starts(rerankers, name):
    """TEI's truncation_direction Left on /rerank: a pair over the limit loses tokens longest-first from the texts'
    starts (the `tokenizers` truncation TEI runs), so the document's end is what is scored."""
    query = "where does the river flow"
    documents = ["short document", "start words " * 400 + "the spree flows through berlin", "berlin " * 10]
    body = {"model": name, "query": query, "texts": documents, "truncate": True, "raw_scores": True}
    left = httpx.post(f"{rerankers.base}/rerank", json=body | {"truncation_direction": "Left"}, timeout=60)
    right = httpx.post(f"{rerankers.base}/rerank", json=body | {"truncation_direction": "Right"}, timeout=60)
    assert left.status_code == 200 and right.status_code == 200, left.text
    model = reference(name)
    want_left = model.score(library_pairs(name, query, documents, 512, "left"))
    want_right = model.score(library_pairs(name, query, documents, 512, "right"))
    np.testing.assert_allclose(scores_by_index(left.json()), want_left, atol=ATOL)
    np.testing.assert_allclose(scores_by_index(right.json()), want_right, atol=ATOL)
    assert abs(want_left[1] - want_right[1]) > 1e-4  # the long document really is cut from the other side
    assert scores_by_index(left.json())[::2] == pytest.approx(scores_by_index(right.json())[::2], abs=ATOL)
    refused = httpx.post(f"{rerankers.base}/rerank", json=body | {"truncate": False, "truncation_direction": "Left"})
    assert refused.status_code == 413 and refused.json()["error_type"] == "validation"


def test_vllm_truncate_prompt_tokens_cuts_each_pair_to_that_many(rerankers):
    """vLLM's truncate_prompt_tokens on /v1/score and /v1/rerank cuts each pair longest-first to that many tokens:
    on a server at the model's own limit, 64 gives the goldens' `*_max_length_64` scores (sentence-transformers at
    max_length 64)."""
    base = rerankers.base
    for name, case in cases(True):
        body = {"model": name, "text_1": case["query"], "text_2": case["documents"], "truncate_prompt_tokens": 64}
        score = httpx.post(f"{base}/v1/score", json=body, timeout=60)
        assert score.status_code == 200, score.text
        np.testing.assert_allclose([d["score"] for d in score.json()["data"]], expected(case, "predict_default"),
                                   atol=ATOL, err_msg=f"{name} {case['name']}")
        assert score.json()["usage"]["prompt_tokens"] == sum(len(p["input_ids"]) for p in case["pairs"])
        rerank = httpx.post(f"{base}/v1/rerank", json={"model": name, "query": case["query"],
                                                       "documents": case["documents"], "truncate_prompt_tokens": 64})
        assert rerank.status_code == 200, rerank.text
        assert [r["index"] for r in rerank.json()["results"]] == rank_order(case)
        for r in rerank.json()["results"]:
            assert r["relevance_score"] == pytest.approx(case["pairs"][r["index"]]["predict_default"], abs=ATOL)
    short = httpx.post(f"{base}/v1/score", json={"model": "bert", "text_1": "q", "text_2": ["a b c d e f g h"],
                                                 "truncate_prompt_tokens": 6}).json()
    assert short["usage"]["prompt_tokens"] == 6


def test_infinity_rerank_at_teis_path_in_infinitys_shape(rerankers, rerankers_64):
    """Infinity's POST /rerank shares TEI's path: a body with `documents` gets Infinity's answer (`object: rerank`,
    results best first with `relevance_score`, the text only with return_documents, `top_n`, raw logits with
    raw_scores), scored as every golden says; its model default picks the first reranker; a pair over the limit is
    cut, as Infinity's tokenizer does; its errors come in OpenAI's shape, as Infinity sends them. TEI's body at the
    same path still gets TEI's answer."""
    for server, limit_64 in ((rerankers, False), (rerankers_64, True)):
        for name, case in cases(limit_64):
            body = {"model": name, "query": case["query"], "documents": case["documents"], "return_documents": True}
            r = httpx.post(f"{server.base}/rerank", json=body, timeout=60)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["object"] == "rerank" and out["model"] == name and out["id"].startswith("infinity-")
            assert isinstance(out["created"], int) and out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"]
            assert [x["index"] for x in out["results"]] == rank_order(case), (name, case["name"])
            for x in out["results"]:
                assert x["relevance_score"] == pytest.approx(case["pairs"][x["index"]]["predict_default"], abs=ATOL)
                assert x["document"] == case["documents"][x["index"]]
    base = rerankers.base
    documents = ["berlin is in germany", "paris is in france", "berlin " * 700]  # the last is over bert's 512
    out = httpx.post(f"{base}/rerank", json={"query": "where is berlin", "documents": documents, "top_n": 2}).json()
    assert out["model"] == "bert" and len(out["results"]) == 2  # Infinity's default model: the first reranker
    assert all(set(x) == {"relevance_score", "index"} for x in out["results"])  # return_documents defaults to false
    cohere_ = httpx.post(f"{base}/v1/rerank", json={"model": "bert", "query": "where is berlin",
                                                    "documents": documents, "top_n": 2}).json()
    assert [x["index"] for x in out["results"]] == [x["index"] for x in cohere_["results"]]
    raw = httpx.post(f"{base}/rerank", json={"model": "bert", "query": "where is berlin", "documents": documents[:2],
                                             "raw_scores": True}).json()
    tei_raw = httpx.post(f"{base}/rerank", json={"model": "bert", "query": "where is berlin", "texts": documents[:2],
                                                 "raw_scores": True}).json()
    assert isinstance(tei_raw, list) and {x["index"]: x["score"] for x in tei_raw} == pytest.approx(
        {x["index"]: x["relevance_score"] for x in raw["results"]}, abs=ATOL)
    for bad in ({"documents": []}, {"documents": ["a"], "top_n": 0}, {"documents": ["a"], "model": "nope"},
                {"documents": ["a"], "model": "mini"}, {"documents": "a"}, {"documents": ["a"], "unknown": 1}):
        r = httpx.post(f"{base}/rerank", json={"query": "q"} | bad)
        assert 400 <= r.status_code < 500, (bad, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, (bad, r.text)


def test_vllm_defaults_top_n_0_and_truncate_prompt_tokens_minus_1(rerankers):
    """What vLLM's own request model sends by default and documents: top_n 0 returns every document, and
    truncate_prompt_tokens -1 cuts at the model's limit (the same scores as truncating there, a document over it
    included)."""
    base = rerankers.base
    documents = ["berlin is in germany", "paris is in france", "berlin " * 700]  # the last is over bert's 512
    plain = httpx.post(f"{base}/v1/rerank", json={"model": "bert", "query": "where is berlin", "documents": documents})
    assert plain.status_code == 200, plain.text
    for body in ({"top_n": 0}, {"top_n": 0, "truncate_prompt_tokens": -1}, {"truncate_prompt_tokens": -1}):
        got = httpx.post(f"{base}/v1/rerank", json={"model": "bert", "query": "where is berlin",
                                                    "documents": documents} | body)
        assert got.status_code == 200, (body, got.text)
        results, want = got.json()["results"], plain.json()["results"]
        assert [r["index"] for r in results] == [r["index"] for r in want] and len(results) == 3, body
        assert [r["relevance_score"] for r in results] == pytest.approx([r["relevance_score"] for r in want],
                                                                        abs=ATOL), body
    score = httpx.post(f"{base}/v1/score", json={"model": "bert", "text_1": "where is berlin", "text_2": documents,
                                                 "truncate_prompt_tokens": -1})
    assert score.status_code == 200, score.text
    by_index = {r["index"]: r["relevance_score"] for r in plain.json()["results"]}
    assert [d["score"] for d in score.json()["data"]] == pytest.approx([by_index[i] for i in range(3)], abs=ATOL)


def test_cohere_max_tokens_per_doc_cuts_each_document_before_pairing(rerankers):
    """Cohere's max_tokens_per_doc (through the cohere SDK) cuts each document to that many of its own tokens, then
    pairs it: the same scores as sending the documents' first words that hold exactly those tokens."""
    base = rerankers.base
    client = cohere.ClientV2(base_url=base, api_key="unused")
    query = "rivers of berlin"
    text = "the spree and the havel flow through berlin and brandenburg into the elbe"
    start = " ".join(text.split()[:6])
    for name in ("bert", "xlmr", "modernbert"):
        tok = reference(name).tokenizer
        whole, head = (ids[tok.head_specials : len(ids) - tok.tail_specials] for ids in tok.encode([text, start]))
        assert whole[: len(head)] == head  # the first six words are the text's first len(head) tokens
        out = client.rerank(model=name, query=query, documents=[text, text, "berlin"], max_tokens_per_doc=len(head))
        prefix = httpx.post(f"{base}/v1/rerank", json={"model": name, "query": query,
                                                       "documents": [start, "berlin"]}).json()
        got = {r.index: r.relevance_score for r in out.results}
        want = {r["index"]: r["relevance_score"] for r in prefix["results"]}
        assert got[0] == pytest.approx(want[0], abs=ATOL) and got[1] == pytest.approx(want[0], abs=ATOL), name
        assert got[2] == pytest.approx(want[1], abs=ATOL), name  # a shorter document is not touched
        full = httpx.post(f"{base}/v1/rerank", json={"model": name, "query": query, "documents": [text]})
        assert full.json()["results"][0]["relevance_score"] != pytest.approx(got[0], abs=1e-4)
    # a document over the model's limit, cut by max_tokens_per_doc, fits even with truncation off
    long = httpx.post(f"{base}/v2/rerank", json={"model": "bert", "query": query, "documents": ["berlin " * 700],
                                                 "max_tokens_per_doc": 100, "truncate": False}).json()
    assert long["meta"]["tokens"]["input_tokens"] == 100 + 3 + 3  # [CLS] rivers of berlin [SEP] ... [SEP]


def test_token_counts_out_of_range_are_400s_in_each_routes_shape(rerankers):
    base = rerankers.base
    checks = [
        ("/v1/score", {"text_1": "q", "text_2": ["a"], "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ("/v1/score", {"text_1": "q", "text_2": ["a"], "truncate_prompt_tokens": 2}, "pair template alone takes 3"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "truncate_prompt_tokens": 1}, "truncate_prompt_tokens"),
        ("/v1/score", {"text_1": "q", "text_2": ["a"], "truncate_prompt_tokens": 513}, "512"),
        ("/v1/score", {"text_1": ["q"], "text_2": ["a"], "truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "truncate_prompt_tokens": -1, "truncate": False}, "truncate"),
        ("/v1/score", {"text_1": "q", "text_2": ["a"], "truncate_prompt_tokens": 8, "truncate": False}, "truncate"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "truncate_prompt_tokens": 10**6}, "512"),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": 0}, "max_tokens_per_doc"),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": 513}, "512"),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": "ten"}, "max_tokens_per_doc"),
        ("/v2/rerank", {"query": "q", "documents": ["a"], "truncate_prompt_tokens": 8, "truncate": False}, "truncate"),
    ]
    for path, body, says in checks:
        r = httpx.post(f"{base}{path}", json=body | {"model": "bert"})
        assert r.status_code == 400, (path, body, r.text)
        if path == "/v1/score":
            assert r.json()["error"]["type"] == "invalid_request_error" and says in r.json()["error"]["message"]
        else:
            assert set(r.json()) == {"message"} and says in r.json()["message"], r.json()
