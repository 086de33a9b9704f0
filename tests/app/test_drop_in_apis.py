"""TEI, Cohere and Infinity clients against a real server on loopback, changing only the base URL: huggingface_hub's
InferenceClient.feature_extraction, llama-index's TextEmbeddingsInference, cohere.ClientV2.embed (every embedding
type against the float vectors), plain httpx on Infinity's /embeddings and /models and TEI's other routes. Every
route's vectors equal /v1/embeddings' for the same text (1e-6), asked concurrently with other requests; bad input on
each new route answers in that route's shape and status, never a 500."""

from __future__ import annotations

import asyncio

import cohere
import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

from app.quantize import CALIBRATION_TEXTS
from model.encoder import Encoder
from tests.app.conftest import server_process
from tests.conftest import GOLDEN, NOMIC

TINY = NOMIC / "nomic-text-tiny"
TEXTS = ["What is the capital of France?", "Paris is the capital of France.", "rotary embeddings " * 20]
ATOL = 1e-6


@pytest.fixture(scope="module")
def server():
    reranker = GOLDEN / "rerank" / "bert-cross-encoder-tiny"
    with server_process("--model", f"nomic={TINY}", "--model", f"rr={reranker}", "--max-input-tokens", "64") as s:
        yield s


@pytest.fixture(scope="module")
def tiny():
    return Encoder.load(str(TINY), device="cpu", dtype="float32", max_input_tokens=64)


def openai(base: str, texts, **extra) -> np.ndarray:
    r = httpx.post(f"{base}/v1/embeddings", json={"input": texts, "encoding_format": "float", **extra}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]])


def test_huggingface_hub_feature_extraction(server):
    client = InferenceClient(base_url=server.base)
    got = client.feature_extraction(TEXTS[0])
    np.testing.assert_allclose(np.asarray(got).reshape(-1), openai(server.base, [TEXTS[0]])[0], atol=ATOL)
    raw = client.feature_extraction(TEXTS[0], normalize=False)
    np.testing.assert_allclose(np.asarray(raw).reshape(-1), openai(server.base, [TEXTS[0]], normalize=False)[0],
                               atol=ATOL)
    assert abs(np.linalg.norm(raw) - 1) > 1e-3  # really unnormalised
    query = client.feature_extraction(TEXTS[0], prompt_name="search_query")
    np.testing.assert_allclose(np.asarray(query).reshape(-1),
                               openai(server.base, [TEXTS[0]], input_type="search_query")[0], atol=ATOL)
    long = "word " * 200  # over the 64-token limit
    cut = client.feature_extraction(long, truncate=True)
    np.testing.assert_allclose(np.asarray(cut).reshape(-1), openai(server.base, [long], long_input="truncate")[0],
                               atol=ATOL)
    with pytest.raises(Exception) as err:  # truncate false: TEI's 413 (its validation error)
        client.feature_extraction(long, truncate=False)
    assert "413" in str(err.value)


def test_llama_index_text_embeddings_inference(server):
    embedder = TextEmbeddingsInference(model_name="nomic", base_url=server.base, embed_batch_size=2)
    got = embedder.get_text_embedding_batch(TEXTS)
    np.testing.assert_allclose(got, openai(server.base, TEXTS, long_input="truncate"), atol=ATOL)
    np.testing.assert_allclose(embedder.get_query_embedding(TEXTS[0]), openai(server.base, [TEXTS[0]])[0], atol=ATOL)


def test_cohere_embed_every_type_against_float(server, tiny):
    co = cohere.ClientV2(base_url=server.base, api_key="unused")
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    out = co.embed(model="nomic", texts=TEXTS[:2], input_type="search_document", embedding_types=types,
                   output_dimension=32)
    e = out.embeddings
    floats = np.array(e.float_)
    np.testing.assert_allclose(floats, openai(server.base, TEXTS[:2], input_type="search_document", dimensions=32),
                               atol=ATOL)
    bits = np.packbits(floats > 0, axis=-1)
    assert np.array_equal(np.array(e.ubinary), bits) and np.array_equal(np.array(e.binary), bits.astype(int) - 128)
    decoded = np.frombuffer(__import__("base64").b64decode(e.base64[0]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats[0], atol=ATOL)
    # int8/uint8: the calibrated ranges are each dimension's min/max over the calibration texts' own embeddings
    calib = tiny.embed(tiny.tokenize(CALIBRATION_TEXTS, "search_document: "), dimensions=32)
    lo, hi = calib.min(0), calib.max(0)
    step = (hi - lo) / 256
    inside = (floats >= lo) & (floats <= hi)
    for kind, offset in (("uint8", 0), ("int8", 128)):
        levels = np.array(getattr(e, kind)) + offset
        assert levels.min() >= 0 and levels.max() <= 255
        decoded = lo + (levels + 0.5) * step
        assert np.all(np.abs(decoded - floats)[inside] <= step[np.nonzero(inside)[1]] + 1e-6), kind  # one step
        assert np.all(levels[floats < lo] == 0) and np.all(levels[floats > hi] == 255)  # clipped at the ends
    assert out.meta.billed_units.input_tokens > 0


def test_every_route_equals_v1_embeddings_under_concurrent_traffic(server):
    base = server.base
    reference = openai(base, TEXTS, long_input="truncate")
    calls = [
        ("/embed", {"inputs": TEXTS, "truncate": True}, lambda j: j),
        ("/", {"inputs": TEXTS, "truncate": True}, lambda j: j),
        ("/embeddings", {"input": TEXTS, "long_input": "truncate"}, lambda j: [d["embedding"] for d in j["data"]]),
        ("/v2/embed", {"texts": TEXTS}, lambda j: j["embeddings"]["float"]),
    ]

    async def run():
        async with httpx.AsyncClient(timeout=60) as client:
            noise = [client.post(f"{base}/v1/embeddings", json={"input": [f"noise {i}", "x " * i]}) for i in range(12)]
            wanted = [client.post(f"{base}{path}", json=body) for path, body, _ in calls]
            return (await asyncio.gather(*wanted, *noise))[: len(calls)]

    for (path, _, pick), r in zip(calls, asyncio.run(run())):
        assert r.status_code == 200, (path, r.text)
        np.testing.assert_allclose(pick(r.json()), reference, atol=ATOL, err_msg=path)
    sim = httpx.post(f"{base}/similarity", json={"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]},
                                                 "parameters": {"truncate": True}}).json()
    np.testing.assert_allclose(sim, reference[1:] @ reference[0], atol=1e-5)


def test_normalize_false_and_left_truncation_everywhere(server, tiny):
    base, long = server.base, "first words then " + "many middle words " * 30 + "the very end"
    raw = openai(base, [TEXTS[0]], normalize=False)[0]
    np.testing.assert_allclose(raw, tiny.finish(tiny.pool_sorted(tiny.tokenize([TEXTS[0]])), normalize=False)[0],
                               atol=1e-5)
    tei = httpx.post(f"{base}/embed", json={"inputs": TEXTS[0], "normalize": False}).json()[0]
    cohere_raw = httpx.post(f"{base}/v2/embed", json={"texts": [TEXTS[0]], "normalize": False}).json()
    np.testing.assert_allclose(tei, raw, atol=ATOL)
    np.testing.assert_allclose(cohere_raw["embeddings"]["float"][0], raw, atol=ATOL)
    ids = tiny.tokenize([long])[0]
    left = ids[:1] + ids[len(ids) - 63 :]  # [CLS] + the last 62 text tokens + [SEP]
    expected = tiny.embed([left])[0]
    by_tei = httpx.post(f"{base}/embed", json={"inputs": long, "truncate": True, "truncation_direction": "Left"})
    by_cohere = httpx.post(f"{base}/v2/embed", json={"texts": [long], "truncate": "START"})
    np.testing.assert_allclose(by_tei.json()[0], expected, atol=1e-5)
    np.testing.assert_allclose(by_cohere.json()["embeddings"]["float"][0], expected, atol=1e-5)
    assert httpx.post(f"{base}/v2/embed", json={"texts": [long], "truncate": "NONE"}).status_code == 400


def test_vllm_truncate_prompt_tokens_and_cohere_max_tokens_cut_each_input(server, tiny):
    """vLLM's truncate_prompt_tokens on /v1/embeddings (the openai SDK's extra_body, as vLLM's docs send it) and
    Cohere's max_tokens on /v2/embed (the cohere SDK) cut each input to that many tokens, special tokens kept: the
    vectors of the tokenised text cut by hand. -1 is the model's limit; under long_input error (Cohere's truncate
    NONE) a longer input is refused, under chunk it is averaged over windows of that many."""
    from openai import OpenAI

    base, text, k = server.base, "rotary embeddings " * 8, 10  # ~42 tokens: within the 64-token limit
    ids = tiny.tokenize([text])[0]
    assert len(ids) > 3 * k
    want = tiny.embed([ids[: k - 1] + ids[-1:]])[0]  # [CLS] + the first 8 text tokens + [SEP]
    client = OpenAI(base_url=f"{base}/v1", api_key="unused")
    out = client.embeddings.create(model="nomic", input=[text, "short"], encoding_format="float",
                                   extra_body={"truncate_prompt_tokens": k})
    np.testing.assert_allclose(out.data[0].embedding, want, atol=1e-5)
    np.testing.assert_allclose(out.data[1].embedding, openai(base, ["short"])[0], atol=ATOL)  # within the limit
    assert out.usage.prompt_tokens == k + len(tiny.tokenize(["short"])[0])
    full = openai(base, [text])[0]
    assert not np.allclose(full, want, atol=1e-3)  # a cut vector and the whole one are cached apart
    np.testing.assert_allclose(openai(base, [text], truncate_prompt_tokens=k)[0], want, atol=1e-5)
    left = openai(base, [text], truncate_prompt_tokens=k, truncation_direction="left")[0]
    np.testing.assert_allclose(left, tiny.embed([ids[:1] + ids[len(ids) - (k - 1) :]])[0], atol=1e-5)
    np.testing.assert_allclose(openai(base, [ids], truncate_prompt_tokens=k)[0], tiny.embed([ids[:k]])[0],
                               atol=1e-5)  # token ids are cut exactly as given
    chunked = openai(base, [text], truncate_prompt_tokens=k, long_input="chunk", normalize=False)[0]
    windows = tiny.windows(ids, k)
    assert len(windows) > 1 and all(len(w) <= k for w in windows)
    pooled = tiny.pool_sorted(windows)
    mean = (pooled * np.array([[len(w)] for w in windows])).sum(0) / sum(map(len, windows))
    np.testing.assert_allclose(chunked, tiny.finish(mean[None], normalize=False)[0], atol=1e-5)
    long = "word " * 200  # over the server's 64-token limit
    np.testing.assert_allclose(openai(base, [long], truncate_prompt_tokens=-1)[0],
                               openai(base, [long], long_input="truncate")[0], atol=ATOL)
    refused = httpx.post(f"{base}/v1/embeddings", json={"input": text, "truncate_prompt_tokens": k,
                                                        "long_input": "error"})
    assert refused.status_code == 400 and "over the request's limit of 10" in refused.json()["error"]["message"]
    for bad in (0, 65, -2, "ten"):
        r = httpx.post(f"{base}/v1/embeddings", json={"input": text, "truncate_prompt_tokens": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "truncate_prompt_tokens", (bad, r.text)

    co = cohere.ClientV2(base_url=base, api_key="unused")
    doc_ids = tiny.tokenize([text], "search_document: ")[0]
    by_cohere = co.embed(model="nomic", texts=[text], input_type="search_document", embedding_types=["float"],
                         max_tokens=k, truncate="END")
    np.testing.assert_allclose(by_cohere.embeddings.float_[0], tiny.embed([doc_ids[: k - 1] + doc_ids[-1:]])[0],
                               atol=1e-5)
    assert by_cohere.meta.billed_units.input_tokens == k
    none = httpx.post(f"{base}/v2/embed", json={"texts": [text], "max_tokens": k, "truncate": "NONE"})
    assert none.status_code == 400 and "set truncate to END or START" in none.json()["message"], none.text
    fits = httpx.post(f"{base}/v2/embed", json={"texts": ["short"], "max_tokens": k, "truncate": "NONE"})
    assert fits.status_code == 200, fits.text
    over = httpx.post(f"{base}/v2/embed", json={"texts": ["short"], "max_tokens": 65})
    assert over.status_code == 400 and "'max_tokens' is 65" in over.json()["message"], over.text


def test_tei_tokenize_decode_info_embed_all(server, tiny):
    base = server.base
    tokens = httpx.post(f"{base}/tokenize", json={"inputs": ["héllo world"], "add_special_tokens": True}).json()[0]
    assert [t["id"] for t in tokens] == tiny.tokenize(["héllo world"])[0]
    assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert tokens[1]["text"] == "héllo" and (tokens[1]["start"], tokens[1]["stop"]) == (0, 6)  # UTF-8 bytes
    bare = httpx.post(f"{base}/tokenize", json={"inputs": "hi", "add_special_tokens": False}).json()[0]
    assert all(not t["special"] for t in bare)
    ours = httpx.post(f"{base}/tokenize", json={"input": "hi"}).json()  # today's form, told apart by the body
    assert ours["data"][0]["input_ids"] == tiny.tokenize(["hi"])[0]
    assert httpx.post(f"{base}/decode", json={"ids": [[101, 7592, 2088, 102]]}).json() == ["hello world"]
    info = httpx.get(f"{base}/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["max_input_length"] == 64
    assert info["served_model_name"] == "nomic" and info["model_dtype"] == "float32"
    assert info["max_batch_tokens"] == 512  # the CPU default (app/runtime.py CPU_BATCH_TOKENS)
    assert "reranker" in httpx.get(f"{base}/info", params={"model": "rr"}).json()["model_type"]
    per_token = httpx.post(f"{base}/embed_all", json={"inputs": TEXTS[:2]}).json()
    for text, got in zip(TEXTS[:2], per_token):
        ids = tiny.tokenize([text])[0]
        hidden = tiny.token_vectors([ids])[0]
        assert len(got) == len(ids)
        np.testing.assert_allclose(got, hidden, atol=1e-5)
        np.testing.assert_allclose(np.mean(got, axis=0), tiny.pool_sorted([ids])[0], atol=1e-5)  # mean pooling


def test_infinity_models_and_embedding_type_extension(server):
    models = httpx.get(f"{server.base}/models").json()["data"]
    assert [(m["id"], m["capabilities"]) for m in models] == [("nomic", ["embed"]), ("rr", ["rerank"])]
    floats = openai(server.base, TEXTS[:2])
    bits = httpx.post(f"{server.base}/v1/embeddings", json={"input": TEXTS[:2], "embedding_type": "ubinary"}).json()
    assert np.array_equal([d["embedding"] for d in bits["data"]], np.packbits(floats > 0, axis=-1))


@pytest.mark.parametrize(
    "path, body, status, keys",
    [
        ("/embed", {"inputs": []}, 400, {"error", "error_type"}),
        ("/embed", {"inputs": "word " * 200, "truncate": False}, 413, {"error", "error_type"}),
        ("/embed", {"inputs": ["a"] * 5000}, 413, {"error", "error_type"}),
        ("/embed", {"inputs": ["a", [1, 2]]}, 422, {"error", "error_type"}),
        ("/embed", {"inputs": "a", "prompt_name": "nope"}, 422, {"error", "error_type"}),
        ("/embed", {"inputs": "a", "dimensions": 10_000}, 422, {"error", "error_type"}),
        ("/embed", {"inputs": "a", "dimensions": 0}, 422, {"error", "error_type"}),  # TEI: "should be positive"
        ("/embed", {"inputs": "a", "model": "rr"}, 400, {"error", "error_type"}),
        ("/embed_all", {"inputs": ""}, 400, {"error", "error_type"}),
        ("/similarity", {"inputs": {"source_sentence": "a", "sentences": []}}, 400, {"error", "error_type"}),
        ("/similarity", {"inputs": "a"}, 422, {"error", "error_type"}),
        ("/tokenize", {"inputs": []}, 400, {"error", "error_type"}),
        ("/decode", {"ids": []}, 400, {"error", "error_type"}),
        ("/decode", {"ids": [10**9]}, 422, {"error", "error_type"}),
        ("/v2/embed", {"texts": []}, 400, {"message"}),
        ("/v2/embed", {"texts": ["a"], "embedding_types": ["nope"]}, 400, {"message"}),
        ("/v2/embed", {"texts": ["a"], "model": "nope"}, 404, {"message"}),
        ("/v2/embed", {"texts": ["a"], "images": ["x"]}, 400, {"message"}),
        ("/embeddings", {"input": ""}, 400, {"message", "type", "param", "code"}),
        ("/", {"inputs": None}, 422, {"error", "error_type"}),
        ("/", {"inputs": "a", "dimensions": -1}, 422, {"error", "error_type"}),
        ("/v1/embeddings", {"input": "a", "embedding_type": "int4"}, 400, {"message", "type", "param", "code"}),
    ],
)
def test_bad_input_in_each_routes_own_shape(server, path, body, status, keys):
    r = httpx.post(f"{server.base}{path}", json=body, timeout=30)
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()
    assert set(err["error"] if isinstance(err.get("error"), dict) else err) == keys, err


def test_an_input_over_the_limit_says_how_to_truncate_in_the_routes_own_terms(server):
    long = "word " * 200  # over the 64-token limit
    tei = httpx.post(f"{server.base}/embed", json={"inputs": long, "truncate": False}).json()["error"]
    assert "set truncate to true" in tei and "long_input" not in tei, tei
    cohere_ = httpx.post(f"{server.base}/v2/embed", json={"texts": [long], "truncate": "NONE"}).json()["message"]
    assert "set truncate to END or START" in cohere_ and "long_input" not in cohere_, cohere_
    openai_ = httpx.post(f"{server.base}/v1/embeddings", json={"input": long}).json()["error"]["message"]
    assert "set long_input to 'truncate' or 'chunk'" in openai_


def test_info_of_an_unknown_model_is_teis_404(server):
    r = httpx.get(f"{server.base}/info", params={"model": "nope"})
    assert r.status_code == 404 and set(r.json()) == {"error", "error_type"} and "nope" in r.json()["error"]


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/embed", {"inputs": None}, "'inputs' must be a non-empty string, a list of strings, a list of token ids or a "
         "list of token-id lists; got null"),
        ("/embed", {"inputs": ["a", [1, 2]]}, "got a list of strings with a list at inputs[1] (not mixed)"),
        ("/embed_all", {"inputs": [[]]}, "got an empty token-id list at inputs[0]"),
        ("/tokenize", {"inputs": ["a", 1]}, "'inputs' must be a non-empty string or a list of strings; got a list of "
         "strings with an integer at inputs[1]"),
        ("/decode", {"ids": [[1], [2, "x"]]}, "'ids' must be a list of token ids or a list of token-id lists; got a "
         "list of token-id lists with a string at ids[1][1]"),
        ("/v1/score", {"model": "rr", "text_1": "q", "text_2": []}, "'text_2' must be a non-empty string or a list "
         "of strings; got an empty list"),
        ("/v2/rerank", {"model": "rr", "query": "q", "documents": ["a", {"text": 1}]}, "'documents' must be a list of "
         'strings or of {"text": string} objects; documents[1] is an object of other keys or types'),
    ],
)
def test_a_malformed_field_is_named_with_what_it_takes(server, path, body, message):
    """Not pydantic's first union branch (`inputs.str`, `text_2.str`, `documents.0.str`): the field, its forms and
    the element at fault, in the route's own error shape."""
    r = httpx.post(f"{server.base}{path}", json=body)
    assert r.status_code in (400, 422), r.text
    err = r.json()
    text = err["error"] if path in ("/embed", "/embed_all", "/tokenize", "/decode") else (
        err["message"] if path == "/v2/rerank" else err["error"]["message"])
    assert message in text, text


def test_openapi_lists_every_route_grouped_by_api(server):
    doc = httpx.get(f"{server.base}/openapi.json").json()
    tags = {path: {t for op in ops.values() for t in op.get("tags", [])} for path, ops in doc["paths"].items()}
    expected = {
        "/v1/embeddings": "OpenAI", "/v1/models": "OpenAI", "/embed": "TEI", "/": "TEI", "/embed_all": "TEI",
        "/similarity": "TEI", "/decode": "TEI", "/info": "TEI", "/rerank": "TEI", "/v2/embed": "Cohere",
        "/v1/rerank": "Cohere", "/v2/rerank": "Cohere", "/embeddings": "Infinity", "/models": "Infinity",
        "/v1/score": "vLLM", "/health": "Server",
    }
    for path, tag in expected.items():
        assert tags.get(path) == {tag}, (path, tags.get(path))
    assert [t["name"] for t in doc["tags"]] == ["OpenAI", "TEI", "Cohere", "Infinity", "vLLM", "Server"]
    embed_schema = doc["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"inputs", "normalize", "truncate", "truncation_direction", "prompt_name", "dimensions"} <= set(
        embed_schema["properties"])
