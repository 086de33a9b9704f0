"""Every ModernBERT and XLM-R golden through `python -m model embed` (texts in, all lengths in one file)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import GOLDEN, load_golden
from tests.model.test_embed_cli import read_jsonl, run_embed

FOLDERS = [
    ("modernbert/modernbert-embed-tiny", "mean_pooled_l2"),
    ("modernbert/modernbert-embed-tiny-legacy-config", "mean_pooled_l2"),
    ("modernbert/modernbert-embed-tiny-cls", "cls_pooled_l2"),
    ("xlmr/xlmr-e5-tiny", "mean_pooled_l2"),
    ("xlmr/xlmr-bge-m3-tiny", "cls_pooled_l2"),
]


@pytest.mark.parametrize("folder, key", FOLDERS)
def test_goldens_through_the_cli(tmp_path, folder, key):
    cases = load_golden(GOLDEN / folder)["cases"]
    # a prompted case's golden is the prompt + text (sentence-transformers' prompt_name), as --prefix would send it
    lines = [{"text": c.get("prompt", "") + c["text"]} for c in cases]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    result = run_embed("--model", str(GOLDEN / folder), "--input", str(tmp_path / "in.jsonl"), "--output",
                       str(tmp_path / "out.jsonl"), "--device", "cpu", "--batch-tokens", "512")
    assert result.returncode == 0, result.stderr
    out = read_jsonl(tmp_path / "out.jsonl")
    assert len(out) == len(cases)
    np.testing.assert_allclose([o["embedding"] for o in out], [c[key] for c in cases], atol=2e-5)
