"""ModernBERT and XLM-R through a real server: every golden via /v1/embeddings (texts in, all lengths in one request
and across concurrent requests), what /v1/models says about each model, and `--strict-dimensions`."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import numpy as np
import pytest

from tests.app.conftest import server_process
from tests.conftest import GOLDEN, NOMIC, load_golden

MODELS = {  # served name -> (folder, golden key)
    "mb": ("modernbert/modernbert-embed-tiny", "mean_pooled_l2"),
    "mb-legacy": ("modernbert/modernbert-embed-tiny-legacy-config", "mean_pooled_l2"),
    "mb-cls": ("modernbert/modernbert-embed-tiny-cls", "cls_pooled_l2"),
    "e5": ("xlmr/xlmr-e5-tiny", "mean_pooled_l2"),
    "bge-m3": ("xlmr/xlmr-bge-m3-tiny", "cls_pooled_l2"),
}


@pytest.fixture(scope="module")
def families_server():
    args = [a for name, (folder, _) in MODELS.items() for a in ("--model", f"{name}={GOLDEN / folder}")]
    with server_process(*args, "--max-wait-ms", "20") as server:
        yield server


def embed(base: str, model: str, texts: list[str], **extra) -> httpx.Response:
    return httpx.post(f"{base}/v1/embeddings", json={"model": model, "input": texts, **extra}, timeout=60)


@pytest.mark.parametrize("model", list(MODELS))
def test_every_golden_in_one_request(families_server, model):
    folder, key = MODELS[model]
    cases = load_golden(GOLDEN / folder)["cases"]
    texts = [c["text"] for c in cases if "prompt_name" not in c]
    want = [c[key] for c in cases if "prompt_name" not in c]
    r = embed(families_server.base, model, texts)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], want, atol=2e-5)
    assert r.json()["usage"]["prompt_tokens"] == sum(len(c["input_ids"]) for c in cases if "prompt_name" not in c)


def test_prompts_are_input_types(families_server):
    """multilingual-e5's `query: ` / `passage: ` prompts (config_sentence_transformers.json) as input_type."""
    cases = [c for c in load_golden(GOLDEN / "xlmr/xlmr-e5-tiny")["cases"] if "prompt_name" in c]
    assert {c["prompt_name"] for c in cases} == {"query", "passage"}
    for case in cases:
        r = embed(families_server.base, "e5", [case["text"]], input_type=case["prompt_name"])
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], case["mean_pooled_l2"], atol=2e-5)
        assert r.json()["usage"]["prompt_tokens"] == len(case["input_ids"])


def test_concurrent_requests_of_mixed_lengths_batch_together(families_server):
    """Each text its own request, all at once, so the batcher packs texts of 3 to 495 tokens together."""
    jobs = []
    for model, (folder, key) in MODELS.items():
        for case in load_golden(GOLDEN / folder)["cases"]:
            if "prompt_name" not in case:
                jobs.append((model, case["text"], case[key]))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=families_server.base, timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/v1/embeddings", json={"model": m, "input": t}) for m, t, _ in jobs
            ))

    for (_, _, want), r in zip(jobs, asyncio.run(run())):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], want, atol=2e-5)


def test_models_card_says_architecture_pooling_limit_and_matryoshka(families_server):
    cards = {c["id"]: c for c in httpx.get(f"{families_server.base}/v1/models").json()["data"]}
    assert set(cards) == set(MODELS)
    mb, e5, bge = cards["mb"], cards["e5"], cards["bge-m3"]
    assert (mb["architecture"], mb["model_type"], mb["kind"], mb["pooling"]) == (
        "ModernBertModel", "modernbert", "embedding", "mean")
    assert (mb["max_input_tokens"], mb["max_input_tokens_source"]) == (8192, "sentence_bert_config.json max_seq_length")
    assert cards["mb-cls"]["pooling"] == "cls" and cards["mb-legacy"]["architecture"] == "ModernBertModel"
    assert (e5["architecture"], e5["pooling"], e5["max_input_tokens"]) == ("XLMRobertaModel", "mean", 512)
    assert e5["task_types"] == {"query": "query: ", "passage": "passage: "}
    assert (bge["pooling"], bge["experts"], bge["matryoshka"], bge["matryoshka_dimensions"]) == ("cls", None, False,
                                                                                                  None)
    assert all(c["score_activation"] is None for c in cards.values())
    # not trained for it, and not strict: dimensions still truncate and re-normalise (today's behaviour)
    r = embed(families_server.base, "e5", ["truncate me"], dimensions=16)
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 16


def test_strict_dimensions(tmp_path):
    """--strict-dimensions: `dimensions` below the full width only for Matryoshka models (nomic, or config.json's
    matryoshka_dimensions, then only those widths); a 400 otherwise."""
    listed = tmp_path / "mb-listed"
    shutil.copytree(GOLDEN / "modernbert/modernbert-embed-tiny", listed)
    config = json.loads((listed / "config.json").read_text()) | {"matryoshka_dimensions": [16, 32, 64]}
    (listed / "config.json").write_text(json.dumps(config))
    models = {"nomic": NOMIC / "nomic-text-tiny", "e5": GOLDEN / "xlmr/xlmr-e5-tiny", "listed": listed}
    args = [a for name, folder in models.items() for a in ("--model", f"{name}={folder}")]
    with server_process(*args, "--strict-dimensions") as server:
        cards = {c["id"]: c for c in httpx.get(f"{server.base}/v1/models").json()["data"]}
        assert cards["nomic"]["matryoshka"] and cards["nomic"]["matryoshka_dimensions"] is None
        assert (cards["listed"]["matryoshka"], cards["listed"]["matryoshka_dimensions"]) == (True, [16, 32, 64])
        assert not cards["e5"]["matryoshka"]
        assert embed(server.base, "nomic", ["ok"], dimensions=24).status_code == 200
        assert embed(server.base, "listed", ["ok"], dimensions=32).status_code == 200
        assert embed(server.base, "e5", ["ok"], dimensions=64).status_code == 200  # the full width is no truncation
        for model, dims, says in (("e5", 32, "for no smaller width"), ("listed", 24, "only to [16, 32, 64]")):
            r = embed(server.base, model, ["no"], dimensions=dims)
            error = r.json()["error"]
            assert r.status_code == 400 and error["param"] == "dimensions" and says in error["message"], r.text
