"""The encoder on the device: goldens in fp32 (TF32 off) and in the default bf16, packed batches against each input
alone (fp32 exactly, bf16 through varlen flash attention), dynamic NTK past the trained length in bf16 against fp32,
8192-token inputs, and no host synchronisation inside a forward. Run on the device machine with
`python -m pytest tests/gpu` (bench/gpu_check.sh does); `GPU_TESTS_DEVICE=cpu` runs them on the CPU."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from model.packing import mean_pool
from tests.conftest import GOLDEN, NOMIC, load_golden, unpad
from tests.gpu.conftest import ON_GPU, cosines, gpu_only, load, needs_device, random_ids

pytestmark = needs_device
BF16_PATH = "varlen" if ON_GPU else "sdpa"  # what bf16 runs through on this device (asserted below)


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
    assert bf16.info.packed_attention is (BF16_PATH == "varlen")
    ids = fp32.tokenize([c["text"] for c in cases])
    exact = fp32.embed(ids)
    np.testing.assert_allclose(exact, [c["mean_pooled_l2"] for c in cases], atol=1e-4)
    assert cosines(bf16.embed(ids), exact).min() >= 0.999


def test_bert_family_golden_fp32_and_bf16():
    folder = GOLDEN / "distilbert" / "distilbert-text-tiny"
    cases = load_golden(folder)["cases"]
    fp32, bf16 = load(folder), load(folder, "bfloat16")
    ids = fp32.tokenize([c["text"] for c in cases])
    assert ids == [c["input_ids"] for c in cases]
    np.testing.assert_allclose(fp32.embed(ids), [c["mean_pooled_l2"] for c in cases], atol=1e-4)
    assert cosines(bf16.embed(ids), [c["mean_pooled_l2"] for c in cases]).min() >= 0.999


def test_minilm_goldens_in_the_default_dtype(minilm):
    """The server's default model, in the dtype `auto` picks on this device (bf16 on a GPU of capability >= 8.0),
    and in fp32 where the full checkpoint is here."""
    folder, full = minilm
    golden = load_golden(GOLDEN / "minilm")
    cases, expected = golden["cases"], np.array([c["embedding"] for c in golden["cases"]])
    enc = load(folder, "auto" if full or ON_GPU else "bfloat16")
    ids = [enc.truncate(i) for i in enc.tokenize([c["text"] for c in cases])]
    assert ids == [c["input_ids"] for c in cases]
    if ON_GPU:
        assert enc.info.dtype == "bfloat16" and enc.info.packed_attention
    got = enc.embed(ids)
    assert cosines(got, expected).min() >= (0.9999 if enc.info.dtype == "float32" else 0.999)
    for row, seq in zip(got, ids):  # each alone agrees with its place in the packed batch
        assert cosines(enc.embed([seq]), row[None])[0] >= 0.9999
    if full:
        np.testing.assert_allclose(load(folder).embed(ids), expected, atol=1e-4)


def test_packed_batch_equals_alone_fp32():
    enc = load(NOMIC / "nomic-text-tiny")
    seqs = random_ids([3, 200, 17, 511, 64, 1], seed=0)
    together = enc.pooled(seqs)
    for row, seq in zip(together, seqs):
        np.testing.assert_allclose(row, enc.pooled([seq])[0], atol=1e-5)


def test_a_sequence_alone_and_inside_a_packed_bf16_batch():
    enc = load(NOMIC / "nomic-text-tiny", "bfloat16")
    assert enc.info.packed_attention is (BF16_PATH == "varlen")
    seqs = random_ids([300, 3, 1000, 17, 2048, 64, 129, 1], seed=2)
    together = enc.pooled(seqs)
    alone = np.concatenate([enc.pooled([s]) for s in seqs])
    assert cosines(together, alone).min() >= 0.9999


def test_64_different_inputs_at_once_against_each_alone():
    enc = load(NOMIC / "nomic-text-tiny", "bfloat16")
    rng = np.random.default_rng(3)
    top = 8192 if ON_GPU else 1024
    lengths = [top, top, 1, 2, *rng.integers(3, top, 60).tolist()]
    seqs = random_ids(lengths, seed=4)
    together = enc.embed(seqs, max_batch_tokens=sum(lengths))  # one packed batch of all 64
    alone = np.concatenate([enc.embed([s]) for s in seqs])
    assert together.shape == (64, 64) and np.isfinite(together).all()
    assert cosines(together, alone).min() >= 0.9999


def _ntk_folder(tmp_path):
    folder = tmp_path / "ntk"
    shutil.copytree(NOMIC / "nomic-text-tiny", folder)
    config = json.loads((folder / "config.json").read_text()) | {
        "rotary_scaling_factor": 2.0,
        "max_trained_positions": 64,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_ntk_beyond_the_trained_length_fp32_and_bf16(tmp_path):
    from model.encoder import Encoder

    folder = _ntk_folder(tmp_path)
    fp32, bf16 = load(folder), load(folder, "bfloat16")
    cpu = Encoder.load(str(folder), device="cpu", dtype="float32")
    seqs = random_ids([300, 40, 150, 65, 64, 2000], seed=1)  # past, below and at the trained length of 64
    exact = fp32.pooled(seqs)
    np.testing.assert_allclose(exact, cpu.pooled(seqs), atol=1e-4)
    for row, seq in zip(exact, seqs):
        np.testing.assert_allclose(row, fp32.pooled([seq])[0], atol=1e-5)
    half = bf16.pooled(seqs)
    assert cosines(half, exact).min() >= 0.999  # bf16 rotary (fp32 tables, cast once) against fp32
    assert cosines(half, np.concatenate([bf16.pooled([s]) for s in seqs])).min() >= 0.9999


@gpu_only
@pytest.mark.parametrize(("folder", "dtype"), [(NOMIC / "nomic-text-tiny", "bfloat16"),
                                                (NOMIC / "nomic-text-tiny", "float32"),
                                                (GOLDEN / "distilbert" / "distilbert-text-tiny", "bfloat16")])
def test_no_host_sync_inside_a_forward(tmp_path, folder, dtype):
    """Copy in, forward, pooling: nothing waits on the GPU (an error if it does) until the one copy back."""
    enc = load(_ntk_folder(tmp_path) if "nomic" in folder.name else folder, dtype)
    seqs = random_ids([100, 3, 70, 64, 65], seed=5)  # NTK bases for the long ones, the plain table for the rest
    enc.pooled(seqs)  # warm: tables cached, kernels chosen
    prepared = enc.prepare(seqs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            packed = prepared.to(enc.device)
            pooled = mean_pool(enc.model(packed), packed)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    np.testing.assert_allclose(pooled.cpu().numpy(), enc.pooled(seqs), atol=1e-6 if dtype == "float32" else 1e-2)


def test_long_inputs_8192_tokens_alone_and_many():
    enc = load(NOMIC / "nomic-text-tiny", "bfloat16" if ON_GPU else "float32")
    count = 64 if ON_GPU else 4
    seqs = random_ids([8192] * count, seed=6)
    out = enc.embed(seqs, max_batch_tokens=8192 * count)
    assert out.shape == (count, 64) and np.isfinite(out).all()
    assert cosines(out[:2], enc.embed(seqs[:2], max_batch_tokens=8192)).min() >= 0.9999
