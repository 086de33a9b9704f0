"""The encoder on CUDA: exactness in fp32 (TF32 off), bf16 against fp32, packed batch == alone, NTK past the
trained length, and the server answering goldens on the GPU. Skipped without CUDA; run on the device machine with
`python -m pytest tests/gpu`. `GPU_TESTS_DEVICE=cpu` runs the same checks on the CPU (to check the tests)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from model.encoder import Encoder
from tests.conftest import NOMIC, load_golden, unpad

DEVICE = os.environ.get("GPU_TESTS_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def no_tf32():
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def load(folder, dtype="float32", **kw) -> Encoder:
    return Encoder.load(str(folder), device=DEVICE, dtype=dtype, **kw)


@pytest.mark.parametrize("folder", ["tiny", "tiny-hf5"])
def test_token_goldens_fp32(folder):
    enc = load(NOMIC / folder, max_input_tokens=128)
    for name, case in load_golden(NOMIC / folder)["cases"].items():
        ids = unpad(case["input_ids"], case["attention_mask"])
        types = unpad(case["token_type_ids"], case["attention_mask"]) if "token_type_ids" in case else None
        pooled = enc.pooled(ids, types)
        np.testing.assert_allclose(enc.finish(pooled), case["mean_pooled_l2"], atol=1e-4, err_msg=name)
        np.testing.assert_allclose(enc.finish(pooled, 32), case["matryoshka_32"], atol=1e-4, err_msg=name)


@pytest.mark.parametrize("folder", ["nomic-text-tiny", "nomic-text-tiny-hf5"])
def test_text_goldens_fp32_and_bf16(folder):
    cases = load_golden(NOMIC / folder)["cases"]
    fp32, bf16 = load(NOMIC / folder), load(NOMIC / folder, "bfloat16")
    ids = fp32.tokenize([c["text"] for c in cases])
    exact = fp32.embed(ids)
    np.testing.assert_allclose(exact, [c["mean_pooled_l2"] for c in cases], atol=1e-4)
    cosine = (bf16.embed(ids) * exact).sum(1)
    assert cosine.min() >= 0.999, cosine


def test_packed_batch_equals_alone_fp32():
    enc = load(NOMIC / "nomic-text-tiny")
    rng = np.random.default_rng(0)
    seqs = [[101, *rng.integers(1000, 30000, n).tolist(), 102] for n in (3, 200, 17, 511, 64, 1)]
    together = enc.pooled(seqs)
    for row, seq in zip(together, seqs):
        np.testing.assert_allclose(row, enc.pooled([seq])[0], atol=1e-5)


def test_ntk_beyond_the_trained_length(tmp_path):
    folder = tmp_path / "ntk"
    shutil.copytree(NOMIC / "nomic-text-tiny", folder)
    config = json.loads((folder / "config.json").read_text()) | {
        "rotary_scaling_factor": 2.0,
        "max_trained_positions": 64,
    }
    (folder / "config.json").write_text(json.dumps(config))
    enc, cpu = load(folder), Encoder.load(str(folder), device="cpu", dtype="float32")
    rng = np.random.default_rng(1)
    seqs = [[101, *rng.integers(1000, 30000, n).tolist(), 102] for n in (300, 40, 150)]
    np.testing.assert_allclose(enc.pooled(seqs), cpu.pooled(seqs), atol=1e-4)
    for row, seq in zip(enc.pooled(seqs), seqs):
        np.testing.assert_allclose(row, enc.pooled([seq])[0], atol=1e-5)


def test_long_inputs_8192_tokens_alone_and_many(tmp_path):
    enc = load(NOMIC / "nomic-text-tiny", "bfloat16" if DEVICE == "cuda" else "float32")
    long = [101, *([2000] * 8190), 102]
    count = 64 if DEVICE == "cuda" else 4
    out = enc.embed([long] * count, max_batch_tokens=65536)
    assert out.shape == (count, 64) and np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[-1], atol=1e-3)


def test_server_on_the_device_answers_goldens():
    import httpx

    from tests.app.conftest import server_process

    cases = load_golden(NOMIC / "nomic-text-tiny")["cases"]
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--device", DEVICE, "--dtype", "float32") as server:
        card = httpx.get(f"{server.base}/v1/models").json()["data"][0]
        assert card["device"].startswith(DEVICE)
        body = {"input": [c["text"] for c in cases], "encoding_format": "float"}
        data = httpx.post(f"{server.base}/v1/embeddings", json=body, timeout=60).json()["data"]
        np.testing.assert_allclose([d["embedding"] for d in data], [c["mean_pooled_l2"] for c in cases], atol=1e-4)
        body["dimensions"] = 32
        data = httpx.post(f"{server.base}/v1/embeddings", json=body, timeout=60).json()["data"]
        np.testing.assert_allclose([d["embedding"] for d in data], [c["matryoshka_32"] for c in cases], atol=1e-4)
