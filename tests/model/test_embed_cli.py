"""`python -m model embed` end to end on JSONL files, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import NOMIC, ROOT, load_golden, unpad


def run_embed(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model", "embed", "--dtype", "float32", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("folder", ["nomic-text-tiny", "nomic-text-tiny-hf5"])
def test_text_and_ids_in_order(tmp_path, folder):
    cases = load_golden(NOMIC / folder)["cases"]
    lines = []
    for i, case in enumerate(cases):  # alternate text and token-id lines
        lines.append({"text": case["text"]} if i % 2 == 0 else {"input_ids": case["input_ids"]})
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    files = ["--model", str(NOMIC / folder), "--input", str(tmp_path / "in.jsonl")]
    result = run_embed(*files, "--output", str(tmp_path / "out.jsonl"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "line" in result.stderr  # the progress bar
    out = read_jsonl(tmp_path / "out.jsonl")
    np.testing.assert_allclose([o["embedding"] for o in out], [c["mean_pooled_l2"] for c in cases], atol=2e-5)
    result = run_embed(*files, "--output", str(tmp_path / "out32.jsonl"), "--dimensions", "32", "--batch-tokens", "16")
    assert result.returncode == 0, result.stderr
    out = read_jsonl(tmp_path / "out32.jsonl")
    np.testing.assert_allclose([o["embedding"] for o in out], [c["matryoshka_32"] for c in cases], atol=2e-5)


def test_v5_token_id_goldens_through_the_cli(tmp_path):
    cases = load_golden(NOMIC / "tiny-hf5")["cases"]
    lines, expected = [], []
    for case in cases.values():
        for ids, emb in zip(unpad(case["input_ids"], case["attention_mask"]), case["mean_pooled_l2"]):
            if "token_type_ids" not in case:
                lines.append({"input_ids": ids})
                expected.append(emb)
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    result = run_embed(
        "--model",
        str(NOMIC / "tiny-hf5"),
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(tmp_path / "out.jsonl"),
        "--max-input-tokens",
        "64",
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose([o["embedding"] for o in read_jsonl(tmp_path / "out.jsonl")], expected, atol=2e-5)


def test_bad_lines_are_one_line_errors(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n{"input_ids": [101, 99999, 102]}\n')
    result = run_embed(
        "--model",
        str(NOMIC / "nomic-text-tiny"),
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(tmp_path / "out.jsonl"),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "in.jsonl:2: token id 99999 is outside the vocabulary" in result.stderr
