"""The BERT family: the real all-MiniLM-L6-v2 and a tiny DistilBERT against transformers' outputs."""

from __future__ import annotations

import numpy as np

from model.encoder import Encoder
from tests.conftest import GOLDEN, load_golden


def test_minilm_tokens_and_embeddings(minilm):
    golden = load_golden(GOLDEN / "minilm")
    cases = golden["cases"]
    ids = minilm.tokenize([c["text"] for c in cases])
    assert [len(i) for i in ids] == [c["full_token_count"] for c in cases]
    assert minilm.info.max_input_tokens == golden["max_seq_length"] == 256
    truncated = [minilm.truncate(i) for i in ids]
    assert truncated == [c["input_ids"] for c in cases]
    assert sum(len(i) > 256 for i in ids) >= 2  # the long texts really are truncated
    cosine = (minilm.embed(truncated) * np.array([c["embedding"] for c in cases])).sum(1)
    assert cosine.min() >= 0.99999, cosine.min()


def test_minilm_batch_equals_single(minilm):
    cases = load_golden(GOLDEN / "minilm")["cases"]
    ids = [minilm.truncate(i) for i in minilm.tokenize([c["text"] for c in cases])]
    batched = minilm.embed(ids)
    for row, tokens in zip(batched, ids):
        np.testing.assert_allclose(row, minilm.embed([tokens])[0], atol=1e-5)


def test_distilbert_golden():
    folder = GOLDEN / "distilbert" / "distilbert-text-tiny"
    encoder = Encoder.load(str(folder), device="cpu", dtype="float32")
    cases = load_golden(folder)["cases"]
    ids = encoder.tokenize([c["text"] for c in cases])
    assert ids == [c["input_ids"] for c in cases]
    np.testing.assert_allclose(encoder.embed(ids), [c["mean_pooled_l2"] for c in cases], atol=2e-5)


def test_dimensions_truncate_and_renormalise(minilm):
    ids = minilm.tokenize(["a short sentence"])
    full, small = minilm.embed(ids)[0], minilm.embed(ids, 64)[0]
    assert small.shape == (64,)
    np.testing.assert_allclose(small, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
