"""model/inputs.py: the input rules the server, the CLI and the Ray job share, on a real encoder."""

from __future__ import annotations

import numpy as np
import pytest

from model import inputs
from model.encoder import Encoder
from tests.conftest import NOMIC

LIMIT = 16


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load(str(NOMIC / "nomic-text-tiny"), device="cpu", dtype="float32", max_input_tokens=LIMIT)


@pytest.mark.parametrize(
    ("text", "code", "reason"),
    [
        ("", "empty_input", "is an empty string"),
        ("a\x00b", "invalid_text", "contains a NUL character"),
        ("a\ud800b", "invalid_text", "contains a lone surrogate (not valid Unicode text)"),
    ],
)
def test_refused_texts(text, code, reason):
    with pytest.raises(inputs.Rejected) as info:
        inputs.check_text(text)
    assert (info.value.code, info.value.reason, info.value.param) == (code, reason, "input")


def test_whitespace_and_ids_rules():
    inputs.check_text("   ")  # whitespace is text: it is embedded
    inputs.check_ids([0, 5, 9], vocab_size=10)
    with pytest.raises(inputs.Rejected, match="empty token list"):
        inputs.check_ids([], vocab_size=10)
    with pytest.raises(inputs.Rejected, match=r"token id 10, outside the vocabulary \[0, 10\)"):
        inputs.check_ids([1, 10], vocab_size=10)


def test_task_prefix_names_and_aliases(encoder):
    prompts = encoder.info.prompts
    assert inputs.task_prefix(prompts, None) == ("", "")
    assert inputs.task_prefix(prompts, "query") == ("search_query", "search_query: ")
    assert inputs.task_prefix(prompts, "search_document") == ("search_document", "search_document: ")
    with pytest.raises(inputs.Rejected) as info:
        inputs.task_prefix(prompts, "nonsense")
    assert info.value.param == "input_type" and "known: classification, clustering" in info.value.reason


def test_long_input_rule_and_chunk_mean(encoder):
    ids = encoder.tokenize([" ".join(f"word{i}" for i in range(40))])[0]
    with pytest.raises(inputs.Rejected) as info:
        inputs.fit(encoder, ids, "error", from_text=True)
    assert info.value.code == "context_length_exceeded" and f"has {len(ids)} tokens" in info.value.reason
    assert inputs.fit(encoder, ids, "truncate", from_text=True) == [encoder.truncate(ids)]
    windows = inputs.fit(encoder, ids, "chunk", from_text=True)
    assert windows == encoder.windows(ids) and len(windows) >= 3
    assert inputs.fit(encoder, ids, "chunk", from_text=False) == [ids[i : i + LIMIT] for i in range(0, len(ids), LIMIT)]
    # the chunk mean is weighted by each window's tokens: equal to the mean over every token of every window
    pooled = encoder.pooled(windows)
    lengths = [len(w) for w in windows]
    by_token = np.repeat(pooled, lengths, axis=0).mean(0)
    np.testing.assert_allclose(inputs.mean_of_windows(list(pooled), lengths), by_token, rtol=1e-5, atol=1e-6)


def test_prepare_and_embed_inputs_mix_texts_ids_and_refusals(encoder):
    long_text = " ".join(f"word{i}" for i in range(40))
    prepared = inputs.prepare_inputs(encoder, ["hello", "", [101, 7592, 102], [], long_text], "", "chunk")
    assert prepared[1] == "text is an empty string" and prepared[3] == "input_ids is an empty token list"
    good = [p for p in prepared if not isinstance(p, str)]
    vectors = inputs.embed_inputs(encoder, good, dimensions=None, batch_tokens=32)
    assert vectors.shape == (3, encoder.info.hidden_size)
    np.testing.assert_allclose(vectors[0], encoder.embed(encoder.tokenize(["hello"]))[0], atol=1e-6)
    np.testing.assert_allclose(vectors[1], encoder.embed([[101, 7592, 102]])[0], atol=1e-6)
    windows = good[2]
    expected = encoder.finish(inputs.mean_of_windows(list(encoder.pooled(windows)), [len(w) for w in windows])[None])
    np.testing.assert_allclose(vectors[2], expected[0], atol=1e-6)
    refused = inputs.prepare_inputs(encoder, [long_text], "", "error")
    assert refused == [f"text has {len(encoder.tokenize([long_text])[0])} tokens, over this model's maximum of "
                       f"{LIMIT} (use --long-input truncate or chunk)"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"text": "hi", "id": 3}', ("hi", 3, None)),
        (b'{"input_ids": [1, 2]}', ([1, 2], None, None)),
        (b'{"text": ""}', (None, None, "text is an empty string")),
        (b'{"text": "\\ud800"}', (None, None, "text contains a lone surrogate (not valid Unicode text)")),
        (b'{"text": 5}', (None, None, "text is not a string")),
        (b'{"input_ids": [1, true]}', (None, None, "input_ids must be a list of integers")),
        (b'{"foo": 1}', (None, None, inputs.RECORD_SHAPE)),
        (b"[1]", (None, None, inputs.RECORD_SHAPE)),
        (b"{nope", (None, None, "not JSON (Expecting property name enclosed in double quotes)")),
        (b'{"text": "\xff"}', (None, None, "not JSON ('utf-8' codec can't decode byte 0xff in position 10: invalid "
                                          "start byte)")),
    ],
)
def test_read_record(line, expected):
    assert inputs.read_record(line) == expected


def test_character_cap_refuses_cuts_or_keeps_before_tokenising(encoder):
    per_token = 8
    text = " ".join(f"word{i}" for i in range(400))  # ~2,700 characters, far over 16 tokens x 8 characters
    with pytest.raises(inputs.Rejected) as info:
        inputs.cap_text(text, "error", LIMIT, per_token)
    assert info.value.code == "context_length_exceeded" and f"has {len(text)} characters" in info.value.reason
    assert inputs.cap_text(text, "chunk", LIMIT, per_token) is text
    cut = inputs.cap_text(text, "truncate", LIMIT, per_token)
    assert len(cut) <= LIMIT * per_token and text.startswith(cut) and text[len(cut)] == " "
    # exact: those characters hold more than the limit's tokens, so truncating them equals truncating the whole
    whole = encoder.tokenize([text])[0]
    assert encoder.truncate(encoder.tokenize([cut])[0]) == encoder.truncate(whole)
    assert inputs.cap_text("short", "error", LIMIT, per_token) == "short"
