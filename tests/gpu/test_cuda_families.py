"""ModernBERT, XLM-R and the rerankers on CUDA: fp32 goldens (SDPA with the sliding-window mask), bf16 on the packed
varlen path (flash attention's window) against fp32 with texts around the window batched together. Skipped without
CUDA; `GPU_TESTS_DEVICE=cpu` runs the same checks on the CPU (to check the tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import GOLDEN, load_golden
from tests.gpu.test_cuda_encoder import DEVICE, load, no_tf32  # noqa: F401 - the fixture applies here too

pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")

EMBEDDERS = [
    ("modernbert/modernbert-embed-tiny", "mean_pooled_l2"),
    ("modernbert/modernbert-embed-tiny-cls", "cls_pooled_l2"),
    ("xlmr/xlmr-e5-tiny", "mean_pooled_l2"),
    ("xlmr/xlmr-bge-m3-tiny", "cls_pooled_l2"),
]


@pytest.mark.parametrize("folder, key", EMBEDDERS)
def test_goldens_fp32_and_bf16(folder, key):
    cases = [c for c in load_golden(GOLDEN / folder)["cases"] if "prompt_name" not in c]
    fp32, bf16 = load(GOLDEN / folder), load(GOLDEN / folder, "bfloat16")
    ids = [c["input_ids"] for c in cases]
    exact = fp32.embed(ids)  # 3 to 495 tokens in one batch: the 200-token text crosses the window on local layers
    np.testing.assert_allclose(exact, [c[key] for c in cases], atol=1e-4)
    cosine = (bf16.embed(ids) * exact).sum(1)
    assert cosine.min() >= 0.999, cosine


@pytest.mark.parametrize("folder", ["bert-cross-encoder-tiny", "xlmr-reranker-tiny", "modernbert-reranker-tiny"])
def test_rerank_goldens_fp32_and_bf16(folder):
    fp32, bf16 = load(GOLDEN / "rerank" / folder), load(GOLDEN / "rerank" / folder, "bfloat16")
    for case in load_golden(GOLDEN / "rerank" / folder)["cases"]:
        if case["crossencoder_args"]:
            continue
        pairs = fp32.tokenize_pairs(case["query"], case["documents"], truncate=True)
        logits = fp32.score(pairs)
        np.testing.assert_allclose(logits, [p["logit"] for p in case["pairs"]], atol=1e-4, err_msg=case["name"])
        assert np.abs(bf16.score(pairs) - logits).max() < 0.05, case["name"]
