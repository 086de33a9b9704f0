"""Schemathesis fuzzes the server's own OpenAPI schema (bounded examples per operation): no request it makes gets a
5xx, and every error is OpenAI-shaped. Hypothesis builds raw JSON bodies of the values Python refuses or cannot echo
(huge integers, lone surrogates, NaN, deep nesting) at every field: each is a 4xx. Driven through hypothesis directly
(schemathesis' pytest plugin does not load under this pytest). Hypothesis properties of the batcher live in
test_batcher_properties.py."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# Issue 17.5: JSON values Python refuses or cannot echo, at every field (and as keys), on both body routes.
NASTY = [
    "9" * 5000, "-" + "1" * 4400, "1e999", "-1e999", "NaN", "Infinity", "1.5e308", "2147483648", str(2**64), "-1",
    '"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"\\ud83d"', '""', '"   "', '"search_query"', "true", "null", "{}",
    '{"a": "\\ud800"}', "[" * 2000 + "]" * 2000, "[" * 300 + "1" + "]" * 300, '["\\ud800"]', "[101, 102]",
]
KEYS = ["input", "model", "dimensions", "encoding_format", "user", "input_type", "long_input", "priority",
        "\\ud800", "\\udfff\\u0000"]


def json_values():
    leaf = st.sampled_from(NASTY)
    return st.recursive(leaf, lambda inner: st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                        max_leaves=8)


@st.composite
def bodies(draw) -> bytes:
    pairs = draw(st.lists(st.tuples(st.sampled_from(KEYS), json_values()), min_size=1, max_size=4))
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in pairs) + "}").encode()


def test_no_json_value_makes_a_500(minilm_server):
    seen = []

    @given(raw=bodies(), path=st.sampled_from(["/v1/embeddings", "/tokenize"]))
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(raw, path):
        r = httpx.post(minilm_server.base + path, content=raw, headers={"content-type": "application/json"}, timeout=30)
        seen.append(r.status_code)
        assert r.status_code < 500, (raw[:300], r.text[:300])
        if r.status_code >= 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}

    check()
    assert len(seen) >= 150 and any(400 <= s < 500 for s in seen)
