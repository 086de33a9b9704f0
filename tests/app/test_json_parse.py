"""The body parser (app/routes/common.py `loads`): orjson's fast path gives exactly what the strict stdlib parse gives,
and every body the strict parse refuses (duplicate keys above all, which orjson merges silently) is still refused
with the strict parse's own error, however the duplicate is dressed up."""

from __future__ import annotations

import json

import pytest

from app.errors import APIError
from app.routes.common import _strict_loads, loads

SAME = [
    b'{"input": "hello"}',
    b'{"input": "Title: a: b:: c", "model": "m:1"}',  # colons inside strings
    b'{"input": ["a:b", "c", "d:e:f"], "encoding_format": "base64"}',
    b'{"input": [[101, 2000, 102], [101, 102]], "dimensions": 64}',
    b'{"input": [101, 18446744073709551615]}',  # past i64, within u64: an int on both paths
    b'{"input": "caf\\u00e9 \\u2603", "user": "x"}',
    b'{"input": "{braces} in text: fine"}',  # a second `{`: the strict parse, same result
    b'{"query": "q", "texts": ["x: y"], "raw_scores": true, "top_n": null}',
    b'{"documents": [{"text": "a:b"}, {"text": "c"}], "query": "q"}',  # nested objects: the strict parse
    b'  {"input": "spaces around"}  \n',
    b'{"input": [[1.0, 2.5]], "x": -0.0, "y": 1e-300}',
]

REFUSED = [
    b'{"input": "a", "input": "b"}',
    b'{"input": "a:b", "input": "c"}',  # the dropped value's colon
    b'{"a": "x", "a": "\\u003a"}',  # an escaped colon to balance the count
    b'{"a": 1, "a": 2, "b": "\\u003A"}',
    b'{"input": ["p:q"], "input": ["r"]}',
    b'{"input": "hi", "dimensions": NaN}',
    b'{"input": "hi",',
    b"",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"input": [101, ' + b"1" * 5000 + b"]}",
    b'{"input": "\xff\xfe"}',
]


@pytest.mark.parametrize("raw", SAME)
def test_the_fast_path_equals_the_strict_parse(raw):
    assert loads(raw) == _strict_loads(raw) == json.loads(raw)


@pytest.mark.parametrize("raw", REFUSED)
def test_what_the_strict_parse_refuses_stays_refused(raw):
    with pytest.raises(APIError) as strict:
        _strict_loads(raw)
    with pytest.raises(APIError) as fast:
        loads(raw)
    assert (fast.value.status, fast.value.message) == (strict.value.status, strict.value.message)


def test_lone_surrogates_reach_the_schema_as_the_strict_parse_reads_them():
    """orjson refuses them; the strict parse keeps them, so the schema names the field (tests/app/test_bad_requests)."""
    assert loads(b'{"input": "bad \\ud800 text"}') == {"input": "bad \ud800 text"}


@pytest.mark.parametrize("raw", SAME[:6])
def test_openai_and_tei_bodies_take_the_fast_path(monkeypatch, raw):
    import app.routes.common as common

    def strict(raw):
        raise AssertionError("the strict parse ran")

    monkeypatch.setattr(common, "_strict_loads", strict)
    assert loads(raw) == json.loads(raw)
