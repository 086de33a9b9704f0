"""The NomicBert path through the server: the nomic-text-tiny goldens (text in), both config forms, Matryoshka."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.app.conftest import server_process
from tests.conftest import NOMIC, load_golden


def check_goldens(base: str, model: str, folder) -> None:
    cases = load_golden(folder)["cases"]
    for case in cases:  # each text alone, as the goldens were made
        body = {"model": model, "input": case["text"], "encoding_format": "float"}
        r = httpx.post(f"{base}/v1/embeddings", json=body)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], case["mean_pooled_l2"], atol=2e-5)
        assert r.json()["usage"]["prompt_tokens"] == len(case["input_ids"])
    body = {"model": model, "input": [c["text"] for c in cases], "dimensions": 32, "encoding_format": "float"}
    data = httpx.post(f"{base}/v1/embeddings", json=body).json()["data"]
    np.testing.assert_allclose([d["embedding"] for d in data], [c["matryoshka_32"] for c in cases], atol=2e-5)


def test_legacy_config_goldens(nomic_server):
    check_goldens(nomic_server.base, "nomic-tiny", NOMIC / "nomic-text-tiny")


def test_v5_config_goldens():
    with server_process("--model", str(NOMIC / "nomic-text-tiny-hf5")) as server:
        model = httpx.get(f"{server.base}/v1/models").json()["data"][0]
        assert model["max_input_tokens"] == 8192
        assert model["max_input_tokens_source"] == "sentence_bert_config.json max_seq_length"
        check_goldens(server.base, model["id"], NOMIC / "nomic-text-tiny-hf5")


@pytest.mark.parametrize("dimensions", [0, -1, 65, 1000])
def test_dimensions_out_of_range(nomic_server, dimensions):
    r = httpx.post(f"{nomic_server.base}/v1/embeddings", json={"input": "hi", "dimensions": dimensions})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


def test_max_input_tokens_setting_is_shown_and_enforced():
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--max-input-tokens", "10") as server:
        card = httpx.get(f"{server.base}/v1/models").json()["data"][0]
        assert (card["max_input_tokens"], card["max_input_tokens_source"]) == (10, "--max-input-tokens")
        r = httpx.post(f"{server.base}/v1/embeddings", json={"input": "one two three four five six seven eight nine"})
        assert r.status_code == 400 and "11 tokens" in r.json()["error"]["message"]
