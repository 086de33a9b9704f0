"""XLM-RoBERTa (multilingual-e5, bge-m3 dense) against sentence-transformers (tests/data/golden/xlmr): mean and CLS
pooling, prompts as input types, RoBERTa positions from the model's pad id, the 512-token limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import encoder
from model.encoder import Encoder
from model.errors import ConfigError
from model.packing import pack
from tests.conftest import GOLDEN, load_golden, unpad

XLMR = GOLDEN / "xlmr"
ATOL = 2e-5  # goldens are rounded to 6 decimals


def load(folder) -> Encoder:
    return Encoder.load(str(XLMR / folder), device="cpu", dtype="float32")


@pytest.mark.parametrize("folder, key", [("xlmr-e5-tiny", "mean_pooled_l2"), ("xlmr-bge-m3-tiny", "cls_pooled_l2")])
def test_goldens_alone_and_batched(folder, key):
    enc = load(folder)
    assert (enc.info.architecture, enc.info.pooling) == ("XLMRobertaModel", key.split("_")[0])
    cases = load_golden(XLMR / folder)["cases"]
    # a case with a prompt_name was encoded with that prompt: the text the user sends, after the model's prefix
    ids = [enc.tokenize([c["text"]], enc.info.prompts[c["prompt_name"]] if "prompt_name" in c else "")[0]
           for c in cases]
    assert ids == [c["input_ids"] for c in cases]
    assert max(map(len, ids)) > 400 and min(map(len, ids)) < 10
    want = np.array([c[key] for c in cases])
    np.testing.assert_allclose(enc.embed(ids), want, atol=ATOL)
    for tokens, row in zip(ids, want):
        np.testing.assert_allclose(enc.embed([tokens])[0], row, atol=ATOL)


def test_prompts_are_input_types_and_the_limit_is_the_table():
    e5, bge = load("xlmr-e5-tiny"), load("xlmr-bge-m3-tiny")
    assert e5.info.prompts == {"query": "query: ", "passage": "passage: "}
    assert bge.info.prompts == {}
    assert (e5.info.max_input_tokens, e5.info.limit_source) == (512, "sentence_bert_config.json max_seq_length")
    with pytest.raises(ConfigError, match="exceeds the model's 512 position embeddings"):
        Encoder.load(str(XLMR / "xlmr-e5-tiny"), device="cpu", dtype="float32", max_input_tokens=513)


def test_padded_batch_and_positions():
    enc = load("xlmr-e5-tiny")
    golden = load_golden(XLMR / "xlmr-e5-tiny")
    batch = golden["padded_batch"]
    np.testing.assert_allclose(enc.embed(unpad(batch["input_ids"], batch["attention_mask"])), batch["mean_pooled_l2"],
                               atol=ATOL)
    single = golden["single"]
    packed = pack([[0, 5, 6], single["input_ids"]])
    positions = enc.model.positions(packed).tolist()
    assert positions[:3] == [2, 3, 4] and positions[3:] == single["position_ids"]
    with torch.inference_mode():
        hidden = enc.model(pack([single["input_ids"]]))
    np.testing.assert_allclose(hidden.numpy(), single["last_hidden_state"], atol=ATOL)


def test_a_pad_id_inside_a_sequence_is_numbered_as_transformers_does():
    """transformers: position = cumsum(ids != pad) * (ids != pad) + pad, per sequence."""
    enc = load("xlmr-e5-tiny")
    seqs = [[0, 7, 1, 8, 2], [0, 1, 1, 9, 2]]
    got = enc.model.positions(pack(seqs)).tolist()
    want = []
    for seq in seqs:
        ids = torch.tensor(seq)
        real = (ids != 1).long()
        want += (torch.cumsum(real, 0) * real + 1).tolist()
    assert got == want == [2, 3, 1, 4, 5, 2, 1, 1, 3, 4]


def test_cls_pooling_stops_the_last_layer_at_the_first_tokens(monkeypatch):
    """A CLS-pooled embedder (bge-m3) runs its last layer's out-projection and MLP on each sequence's first token
    only: the same vectors as pooling the full last hidden state, for equal and mixed lengths; a mean-pooled one
    (e5) keeps every token."""
    bge, e5 = load("xlmr-bge-m3-tiny"), load("xlmr-e5-tiny")
    assert bge._first_tokens and not e5._first_tokens
    cases = load_golden(XLMR / "xlmr-bge-m3-tiny")["cases"]
    ids = [bge.tokenize([c["text"]])[0] for c in cases]
    calls = []
    real = bge._forward
    monkeypatch.setattr(bge, "_forward", lambda packed, **kw: calls.append(kw) or real(packed, **kw))
    long = max(ids, key=len)
    assert len(long) >= encoder.FIRST_TOKENS_FROM
    for batch in (ids, [long[:40]] * 3, [long, ids[0][:7], long[:30]]):
        fast = bge.run(bge.prepare(batch))
        monkeypatch.setattr(bge, "_first_tokens", False)
        full = bge.run(bge.prepare(batch))
        monkeypatch.setattr(bge, "_first_tokens", True)
        assert fast.shape == full.shape == (len(batch), bge.info.hidden_size)
        np.testing.assert_allclose(fast, full, rtol=0, atol=1e-5)
    assert calls[::2] == [{"first_tokens": True}] * 3 and calls[1::2] == [{}] * 3
    calls.clear()
    bge.run(bge.prepare([long[: encoder.FIRST_TOKENS_FROM - 1]]))
    assert calls == [{}]  # too short to gain: every token to the end
