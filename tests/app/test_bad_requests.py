"""Malformed and hostile requests: each gets the right 4xx in OpenAI's error shape, never a 500 or a hang, and the
server keeps answering. Real server, real MiniLM."""

from __future__ import annotations

import json

import httpx
import pytest

URL = "/v1/embeddings"
OK = {"model": "all-MiniLM-L6-v2", "input": "hello"}


def body(**changes) -> bytes:
    return json.dumps({**OK, **changes}).encode()


# (name, raw body or None for a dict tweak, headers, expected status, expected param or None)
CASES = [
    ("input missing", json.dumps({"model": "all-MiniLM-L6-v2"}).encode(), None, 400, "input"),
    ("input null", body(input=None), None, 400, "input"),
    ("input number", body(input=42), None, 400, "input"),
    ("input bool", body(input=True), None, 400, "input"),
    ("input object", body(input={"text": "hi"}), None, 400, "input"),
    ("empty string", body(input=""), None, 400, "input"),
    ("empty list", body(input=[]), None, 400, "input"),
    ("list with an empty string", body(input=["ok", ""]), None, 400, "input"),
    ("empty token list inside", body(input=[[101, 102], []]), None, 400, "input"),
    ("mixed strings and ints", body(input=["a", 1]), None, 400, "input"),
    ("float token ids", body(input=[101.5, 102]), None, 400, "input"),
    ("ragged nesting", body(input=[[101, [102]]]), None, 400, "input"),
    ("deep nesting", body(input=[[[[[[101]]]]]]), None, 400, "input"),
    ("strings nested in lists", body(input=[["a"]]), None, 400, "input"),
    ("negative token id", body(input=[101, -1, 102]), None, 400, "input"),
    ("token id = vocab size", body(input=[101, 30522, 102]), None, 400, "input"),
    ("huge token id", body(input=[101, 2**62, 102]), None, 400, "input"),
    ("2049 inputs", body(input=["x"] * 2049), None, 400, "input"),
    ("over-long single string", body(input="word " * 5000), None, 400, "input"),
    ("NUL byte", body(input="bad\u0000text"), None, 400, "input"),
    ("lone surrogate", b'{"input": "bad \\ud800 text"}', None, 400, "input"),
    ("dimensions 0", body(dimensions=0), None, 400, "dimensions"),
    ("dimensions negative", body(dimensions=-5), None, 400, "dimensions"),
    ("dimensions above width", body(dimensions=385), None, 400, "dimensions"),
    ("dimensions float", body(dimensions=12.5), None, 400, "dimensions"),
    ("dimensions string", body(dimensions="64"), None, 400, "dimensions"),
    ("unknown encoding_format", body(encoding_format="int8"), None, 400, "encoding_format"),
    ("encoding_format null", body(encoding_format=None), None, 400, "encoding_format"),
    ("model not a string", body(model=7), None, 400, "model"),
    ("unknown model", body(model="gpt-4"), None, 404, "model"),
    ("unknown field", body(temperature=0.5), None, 400, "temperature"),
    ("unknown input_type", body(input_type="summarize"), None, 400, "input_type"),
    ("input_type on a model without prefixes", body(input_type="query"), None, 400, "input_type"),
    ("unknown long_input", body(long_input="drop"), None, 400, "long_input"),
    ("unknown priority", body(priority="urgent"), None, 400, "priority"),
    ("user not a string", body(user=123), None, 400, "user"),
    ("invalid JSON", b'{"input": "hi",', None, 400, None),
    ("JSON array body", b'["hi"]', None, 400, None),
    ("JSON string body", b'"hi"', None, 400, None),
    ("empty body", b"", None, 400, None),
    ("invalid UTF-8", b'{"input": "\xff\xfe"}', None, 400, None),
    ("duplicate keys", b'{"input": "a", "input": "b"}', None, 400, "input"),
    ("deeply nested JSON (recursion)", b"[" * 100_000 + b"]" * 100_000, None, 400, None),
    ("wrong content type", body(), {"content-type": "text/plain"}, 415, None),
    ("form content type", b"input=hi", {"content-type": "application/x-www-form-urlencoded"}, 415, None),
    ("body over the size limit", b'{"input": "' + b"a" * (17 * 1024 * 1024) + b'"}', None, 413, None),
    # valid JSON that Python itself refuses or cannot echo (issue 17.5): 500s before
    ("integer past Python's digit limit", b'{"input": "hi", "dimensions": ' + b"9" * 5000 + b"}", None, 400, None),
    ("token id past the digit limit", b'{"input": [101, ' + b"1" * 5000 + b"]}", None, 400, None),
    ("lone surrogate in an unknown key", b'{"input": "hi", "\\ud800": 1}', None, 400, None),
    ("lone surrogate in the model", b'{"input": "hi", "model": "\\udfff"}', None, 404, "model"),
    ("lone surrogate in input_type", b'{"input": "hi", "input_type": "x\\ud800"}', None, 400, "input_type"),
    ("duplicate surrogate keys", b'{"\\ud800": 1, "\\ud800": 2}', None, 400, "\\ud800"),
    ("NaN", b'{"input": "hi", "dimensions": NaN}', None, 400, None),
    ("Infinity among token ids", b'{"input": [101, Infinity]}', None, 400, None),
    ("float overflow", b'{"input": "hi", "dimensions": 1e999}', None, 400, "dimensions"),
]


@pytest.mark.parametrize("name, raw, headers, status, param", CASES, ids=[c[0] for c in CASES])
def test_bad_request(minilm_server, name, raw, headers, status, param):
    h = {"content-type": "application/json", **(headers or {})}
    r = httpx.post(minilm_server.base + URL, content=raw, headers=h, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"] == ("invalid_request_error" if status < 500 else err["type"])
    if param is not None:
        assert err["param"] == param, err
    # and the server still answers
    assert httpx.post(minilm_server.base + URL, json=OK).status_code == 200


@pytest.mark.parametrize(
    "value, got",
    [
        ([], "got an empty list"),
        (None, "got null"),
        (5, "got an integer"),
        ({"text": "hi"}, "got an object"),
        (["a", 1], "got a list of strings with an integer at input[1]"),
        ([[101, 102], []], "got an empty token-id list at input[1]"),
        ([[101, "x"]], "got a list of token-id lists with a string at input[0][1]"),
    ],
)
def test_a_bad_input_names_the_field_and_the_accepted_forms(minilm_server, value, got):
    """Issue 18.7: not pydantic's `Invalid value for 'input.str': Input should be a valid string`."""
    r = httpx.post(minilm_server.base + URL, json={"input": value})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "input" and err["code"] == "invalid_value"
    assert err["message"] == (
        f"'input' must be a non-empty string, a list of strings, a list of token ids or a list of token-id lists; {got}"
    )
    r = httpx.post(minilm_server.base + "/tokenize", json={"input": value})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(
        "'input' must be a non-empty string or a list of strings; "
    )


def test_empty_and_whitespace_only_inputs(minilm_server, minilm):
    """The decision (README): "" is a 400 (as OpenAI); whitespace-only text is text and is embedded. On BERT
    vocabularies its tokens are only [CLS] and [SEP], so every such string gets the same vector."""
    r = httpx.post(minilm_server.base + URL, json={"input": ["ok", ""]})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Input 1 is an empty string"
    spaces = httpx.post(minilm_server.base + URL, json={"input": ["   ", "\n\t "], "encoding_format": "float"})
    assert spaces.status_code == 200 and spaces.json()["usage"]["prompt_tokens"] == 4
    first, second = (d["embedding"] for d in spaces.json()["data"])
    assert max(abs(a - b) for a, b in zip(first, second)) < 1e-6
    expected = minilm.embed([[101, 102]])[0]
    assert max(abs(a - b) for a, b in zip(first, expected)) < 1e-5


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    "text",
    [
        "مرحبا بالعالم",  # right-to-left
        "\u202eevil\u202c override",  # RTL override character
        "e\u0301\u0302\u0303\u0304 combining marks",
        "zero\u200bwidth",
        "emoji 🤖🧪",
    ],
)
def test_unusual_but_valid_text_is_embedded(minilm_server, text):
    r = httpx.post(minilm_server.base + URL, json={"input": text})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) > 0


def test_unknown_route_and_method(minilm_server):
    r = httpx.get(minilm_server.base + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(minilm_server.base + URL)
    assert r.status_code == 405 and "error" in r.json()


def test_oversized_headers_are_refused(minilm_server):
    """uvicorn caps the request head at 64 KiB (h11_max_incomplete_event_size): a 4xx, or the connection closed."""
    try:
        r = httpx.post(minilm_server.base + URL, json=OK, headers={"x-junk": "a" * 200_000}, timeout=10)
        assert 400 <= r.status_code < 500
    except (httpx.ReadError, httpx.RemoteProtocolError):
        pass  # refused before any handler ran
    assert httpx.post(minilm_server.base + URL, json=OK).status_code == 200
