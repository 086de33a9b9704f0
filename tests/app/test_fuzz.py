"""Schemathesis fuzzes the server's own OpenAPI schema (bounded examples per operation) on a server with an embedder
and a reranker: no request it makes gets a 5xx, and every error is in the shape of its route's API (OpenAI's, TEI's,
Cohere's). Hypothesis builds raw JSON bodies of the values Python refuses or cannot echo (huge integers, lone
surrogates, NaN, deep nesting) at every field: each is a 4xx. Driven through hypothesis directly (schemathesis'
pytest plugin does not load under this pytest). Hypothesis properties of the batcher live in
test_batcher_properties.py."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import API_OF_PATH, COHERE, OPENAI, TEI
from tests.app.conftest import server_process
from tests.conftest import GOLDEN, NOMIC

EXAMPLES = 25
ERROR_KEYS = {OPENAI: {"message", "type", "param", "code"}, TEI: {"error", "error_type"}, COHERE: {"message"}}


@pytest.fixture(scope="module")
def pair_server():
    reranker = GOLDEN / "rerank" / "bert-cross-encoder-tiny"
    with server_process("--model", f"nomic-tiny={NOMIC / 'nomic-text-tiny'}", "--model", f"rr={reranker}") as server:
        yield server


def error_keys(path: str, body) -> set[str]:
    api = API_OF_PATH.get(path, OPENAI)
    if path == "/tokenize" and isinstance(body, dict) and "inputs" in body:  # TEI's form of /tokenize
        api = TEI
    if path == "/rerank" and isinstance(body, dict) and "documents" in body and "texts" not in body:  # Infinity's
        api = OPENAI
    return ERROR_KEYS[api]


def test_no_server_errors_on_any_operation(pair_server):
    schema = schemathesis.openapi.from_url(f"{pair_server.base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/embeddings", "/v1/models", "/tokenize", "/health", "/ready",
                                              "/rerank", "/v1/rerank", "/v2/rerank", "/v1/score"}
    seen = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(base_url=pair_server.base, timeout=30)
            seen.append(response.status_code)
            assert response.status_code < 500, (case.path, case.body, response.text)
            if response.status_code >= 400:
                body = response.json()
                shape = set(body["error"]) if isinstance(body.get("error"), dict) else set(body)
                assert shape == error_keys(case.path, case.body), (case.path, case.body, body)

        check()
    assert len(seen) >= len(operations) and any(s == 200 for s in seen) and any(400 <= s < 500 for s in seen)


# Issue 17.5: JSON values Python refuses or cannot echo, at every field (and as keys), on every route with a body.
NASTY = [
    "9" * 5000, "-" + "1" * 4400, "1e999", "-1e999", "NaN", "Infinity", "1.5e308", "2147483648", str(2**64), "-1",
    '"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"\\ud83d"', '""', '"   "', '"search_query"', "true", "null", "{}",
    '{"a": "\\ud800"}', "[" * 2000 + "]" * 2000, "[" * 300 + "1" + "]" * 300, '["\\ud800"]', "[101, 102]",
]
KEYS = ["input", "inputs", "texts", "query", "documents", "model", "dimensions", "encoding_format", "input_type",
        "long_input", "truncate", "top_n", "ids", "text_1", "text_2", "output_dimension", "\\ud800",
        "\\udfff\\u0000"]
# every route with a body: OpenAI's (and Infinity's), TEI's, Cohere's and the three rerank shapes
PATHS = ["/v1/embeddings", "/embeddings", "/tokenize", "/embed", "/", "/embed_all", "/similarity", "/decode",
         "/v2/embed", "/rerank", "/v1/rerank", "/v2/rerank", "/v1/score"]


def json_values():
    leaf = st.sampled_from(NASTY)
    return st.recursive(leaf, lambda inner: st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                        max_leaves=8)


@st.composite
def bodies(draw) -> bytes:
    pairs = draw(st.lists(st.tuples(st.sampled_from(KEYS), json_values()), min_size=1, max_size=4))
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in pairs) + "}").encode()


def test_no_json_value_makes_a_500(pair_server):
    seen = []

    @given(raw=bodies(), path=st.sampled_from(PATHS))
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(raw, path):
        r = httpx.post(pair_server.base + path, content=raw, headers={"content-type": "application/json"}, timeout=30)
        seen.append(r.status_code)
        assert r.status_code < 500, (path, raw[:300], r.text[:300])
        body = r.json()  # an error in some API's shape, never a plain-text 500
        if r.status_code >= 400 and path == "/v1/embeddings":
            assert set(body["error"]) == ERROR_KEYS[OPENAI]

    check()
    assert len(seen) >= 200 and any(400 <= s < 500 for s in seen)
