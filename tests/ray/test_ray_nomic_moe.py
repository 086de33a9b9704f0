"""The Ray Data path with nomic-embed-text-v2-moe: the nomic-moe goldens (texts in) come back exact, in row order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import GOLDEN, load_golden
from tests.ray.test_ray_embed import assert_exactly_once, read_parts, run_cli

MOE = GOLDEN / "nomic-moe" / "nomic-moe-tiny"


@pytest.mark.slow
def test_moe_goldens_on_ray(tmp_path):
    cases = load_golden(MOE)["cases"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "text": c["text"]}) + "\n"
                                               for i, c in enumerate(cases)))
    out = tmp_path / "out"
    result = run_cli("--model", str(MOE), "--input", str(tmp_path / "in.jsonl"), "--output", str(out),
                     "--device", "cpu", "--ray", "local", "--batch-tokens", "128")
    assert result.returncode == 0, result.stderr[-3000:]
    table = read_parts(out)
    rows = assert_exactly_once(table, len(cases))
    embeddings = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(embeddings, [cases[r]["mean_pooled_l2"] for r in rows], atol=2e-5)
