"""Schemathesis fuzzes the server's own OpenAPI schema (bounded examples per operation): no request it makes gets a
5xx, and every error is OpenAI-shaped. Driven through hypothesis directly (schemathesis' pytest plugin does not
load under this pytest). Hypothesis properties of the batcher live in test_batcher_properties.py."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

EXAMPLES = 25


def test_no_server_errors_on_any_operation(nomic_server):
    schema = schemathesis.openapi.from_url(f"{nomic_server.base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/embeddings", "/v1/models", "/tokenize", "/health", "/ready"}
    seen = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(base_url=nomic_server.base, timeout=30)
            seen.append(response.status_code)
            assert response.status_code < 500, (case.path, case.body, response.text)
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        check()
    assert len(seen) >= len(operations) and any(s == 200 for s in seen) and any(400 <= s < 500 for s in seen)
