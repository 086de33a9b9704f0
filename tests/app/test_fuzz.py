"""Schemathesis fuzzes the server's own OpenAPI schema (bounded examples per operation) on a server with an embedder
and a reranker: no request it makes gets a 5xx, and every error is in the shape of its route's API (OpenAI's, TEI's,
Cohere's). Driven through hypothesis directly (schemathesis' pytest plugin does not load under this pytest).
Hypothesis properties of the batcher live in test_batcher_properties.py."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

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
