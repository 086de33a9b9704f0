"""NomicBert against nomic's reference outputs (tests/data/golden/nomic), both config forms, fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.encoder import Encoder
from model.packing import pack
from tests.conftest import NOMIC, load_golden, unpad

ATOL = 2e-5  # goldens are rounded to 6 decimals


def case_inputs(case: dict) -> tuple[list[list[int]], list[list[int]] | None]:
    ids = unpad(case["input_ids"], case["attention_mask"])
    types = unpad(case["token_type_ids"], case["attention_mask"]) if "token_type_ids" in case else None
    return ids, types


@pytest.mark.parametrize("folder", ["tiny", "tiny-hf5"])
def test_token_id_goldens(folder):
    # the tiny configs' own limits (128, 32) are below the longest golden case for the v5 form; lift it
    encoder = Encoder.load(str(NOMIC / folder), device="cpu", dtype="float32", max_input_tokens=128)
    cases = load_golden(NOMIC / folder)["cases"]
    assert len(cases) == 5
    for name, case in cases.items():
        ids, types = case_inputs(case)
        pooled = encoder.pooled(ids, types)
        if "mean_pooled" in case:
            np.testing.assert_allclose(pooled, case["mean_pooled"], atol=ATOL, err_msg=name)
        np.testing.assert_allclose(encoder.finish(pooled), case["mean_pooled_l2"], atol=ATOL, err_msg=name)
        np.testing.assert_allclose(encoder.finish(pooled, 32), case["matryoshka_32"], atol=ATOL, err_msg=name)


def test_last_hidden_state_and_debug_tensors():
    encoder = Encoder.load(str(NOMIC / "tiny"), device="cpu", dtype="float32")
    case = load_golden(NOMIC / "tiny")["cases"]["single"]
    ids, _ = case_inputs(case)
    with torch.inference_mode():
        hidden = encoder.model(pack(ids))
        emb = encoder.model.emb_ln(encoder.model.embeddings(pack(ids)))
    np.testing.assert_allclose(hidden.numpy(), case["last_hidden_state"][0], atol=ATOL)
    np.testing.assert_allclose(emb.numpy(), case["debug"]["emb_ln_out"][0], atol=ATOL)


@pytest.mark.parametrize("folder", ["nomic-text-tiny", "nomic-text-tiny-hf5"])
def test_text_goldens(folder):
    encoder = Encoder.load(str(NOMIC / folder), device="cpu", dtype="float32")
    cases = load_golden(NOMIC / folder)["cases"]
    ids = encoder.tokenize([c["text"] for c in cases])
    assert ids == [c["input_ids"] for c in cases]
    for case, tokens in zip(cases, ids):  # each text alone, as the goldens were made
        np.testing.assert_allclose(encoder.embed([tokens])[0], case["mean_pooled_l2"], atol=ATOL)
        np.testing.assert_allclose(encoder.embed([tokens], 32)[0], case["matryoshka_32"], atol=ATOL)
    # and all together in one batch: batchmates change nothing
    np.testing.assert_allclose(encoder.embed(ids), [c["mean_pooled_l2"] for c in cases], atol=ATOL)


def test_rotary_tables_match_the_reference_inv_freq():
    encoder = Encoder.load(str(NOMIC / "tiny"), device="cpu", dtype="float32")
    case = load_golden(NOMIC / "tiny")["cases"]["single"]
    np.testing.assert_allclose(encoder.model.rotary.inv_freq(1000.0, torch.device("cpu")), case["inv_freq"], rtol=1e-6)
