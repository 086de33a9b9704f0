"""`python -m model embed` end to end on JSONL files, as a user runs it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.conftest import NOMIC, ROOT, load_golden, unpad


def run_embed(*args: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model", "embed", "--dtype", "float32", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
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


def write_jsonl(path, lines) -> str:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


TINY = str(NOMIC / "nomic-text-tiny")
LONG_TEXT = " ".join(f"word{i}" for i in range(40))  # 3+ windows at --max-input-tokens 16


def test_bad_lines_go_to_the_errors_file_and_the_good_ones_are_written(tmp_path):
    lines = [
        {"id": "a", "text": "fine"},
        {"id": "empty", "text": ""},
        {"input_ids": [101, 99999, 102]},
        "{not json",
        {"text": LONG_TEXT},
        "",  # a blank line is not a record: skipped, as JSONL readers do
        {"id": 7, "input_ids": [101, 7592, 102]},
        {"text": "nul\u0000byte"},
        {"text": "lone \ud800 surrogate"},
        {"other": 1},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    result = run_embed("--model", TINY, "--input", source, "--output", str(tmp_path / "out.jsonl"),
                       "--max-input-tokens", "16")
    assert result.returncode == 3, result.stderr  # finished, with refused lines
    last = result.stderr.strip().splitlines()[-1]
    errors_file = tmp_path / "out.errors.jsonl"  # the default: next to the output
    assert last == f"embedded 2 lines to {tmp_path / 'out.jsonl'}, refused 7 (reasons in {errors_file})"

    from model.encoder import Encoder

    encoder = Encoder.load(TINY, device="cpu", dtype="float32", max_input_tokens=16)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [(o["line"], o.get("id")) for o in out] == [(1, "a"), (7, 7)]
    expected = encoder.embed([*encoder.tokenize(["fine"]), [101, 7592, 102]])
    np.testing.assert_allclose([o["embedding"] for o in out], expected, atol=1e-6)
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    long_tokens = len(encoder.tokenize([LONG_TEXT])[0])
    assert errors == [
        {"line": 2, "id": "empty", "reason": "text is an empty string"},
        {"line": 3, "reason": "input_ids has token id 99999, outside the vocabulary [0, 30528)"},
        {"line": 4, "reason": "not JSON (Expecting property name enclosed in double quotes)"},
        {"line": 5, "reason": f"text has {long_tokens} tokens, over this model's maximum of 16 "
                              "(use --long-input truncate or chunk)"},
        {"line": 8, "reason": "text contains a NUL character"},
        {"line": 9, "reason": "text contains a lone surrogate (not valid Unicode text)"},
        {"line": 10, "reason": 'expected {"text": "..."} or {"input_ids": [...]}'},
    ]

    # every line good: exit 0, an empty errors file at the path asked for
    source = write_jsonl(tmp_path / "good.jsonl", [lines[0], lines[6]])
    result = run_embed("--model", TINY, "--input", source, "--output", str(tmp_path / "good.out"),
                       "--errors", str(tmp_path / "e.jsonl"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("refused 0 (reasons in " + str(tmp_path / "e.jsonl") + ")")
    assert (tmp_path / "e.jsonl").read_text() == ""


def test_input_type_uses_the_model_prefixes(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "what is rotary embedding?"}, {"input_ids": [101, 102]}])
    files = ["--model", TINY, "--input", source]
    by_type = run_embed(*files, "--output", str(tmp_path / "a.jsonl"), "--input-type", "query")  # an alias
    by_prefix = run_embed(*files, "--output", str(tmp_path / "b.jsonl"), "--prefix", "search_query: ")
    plain = run_embed(*files, "--output", str(tmp_path / "c.jsonl"))
    assert by_type.returncode == by_prefix.returncode == plain.returncode == 0, by_type.stderr + by_prefix.stderr
    a, b, c = (np.array([o["embedding"] for o in read_jsonl(tmp_path / f"{x}.jsonl")]) for x in "abc")
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(a[0] - c[0]).max() > 0.01  # the text line got the prefix
    np.testing.assert_allclose(a[1], c[1], atol=1e-6)  # token-id lines never get one
    unknown = run_embed(*files, "--output", str(tmp_path / "d.jsonl"), "--input-type", "summary")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines()[-1] == (
        "error: --input-type: Unknown input_type 'summary' for this model "
        "(known: classification, clustering, search_document, search_query)"
    )
    both = run_embed(*files, "--output", str(tmp_path / "e.jsonl"), "--input-type", "query", "--prefix", "x")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_chunked_input_matches_the_server(tmp_path):
    from tests.app.conftest import server_process

    texts = [LONG_TEXT, "short one", " ".join(f"other{i}" for i in range(70))]
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    limits = ("--max-input-tokens", "16")
    for dimensions in (None, 32):
        extra = ("--dimensions", str(dimensions)) if dimensions else ()
        result = run_embed("--model", TINY, "--input", source, "--output", str(tmp_path / "out.jsonl"), *limits,
                           "--long-input", "chunk", "--input-type", "search_document", *extra)
        assert result.returncode == 0, result.stderr
        cli = np.array([o["embedding"] for o in read_jsonl(tmp_path / "out.jsonl")])
        with server_process("--model", TINY, *limits) as server:
            response = httpx.post(f"{server.base}/v1/embeddings", json={
                "input": texts, "long_input": "chunk", "input_type": "search_document", "dimensions": dimensions,
            }, timeout=60)
        assert response.status_code == 200, response.text
        served = np.array([d["embedding"] for d in response.json()["data"]])
        np.testing.assert_allclose(cli, served, atol=1e-6)


def hub_cache(tmp_path, snapshots: dict) -> dict[str, str]:
    """An HF cache holding one hub id, `acme/embedder`, at the given revisions (name -> model folder, linked file by
    file as huggingface_hub links its blobs), and the environment that makes huggingface_hub read it offline."""
    repo = tmp_path / "hf" / "hub" / "models--acme--embedder"
    (repo / "refs").mkdir(parents=True)
    for ref, folder in snapshots.items():
        commit = hashlib.sha1(ref.encode()).hexdigest()
        (repo / "snapshots" / commit).mkdir(parents=True)
        for file in folder.iterdir():
            (repo / "snapshots" / commit / file.name).symlink_to(file.resolve())
        (repo / "refs" / ref).write_text(commit)
    return {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}


def test_revision_picks_the_hub_snapshot(tmp_path, minilm_dir):
    env = hub_cache(tmp_path, {"main": NOMIC / "nomic-text-tiny", "minilm": minilm_dir})
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    files = ["--model", "acme/embedder", "--input", source]
    widths = {}
    for revision in (None, "minilm"):
        out = tmp_path / f"{revision}.jsonl"
        result = run_embed(*files, "--output", str(out), *(["--revision", revision] if revision else []), env=env)
        assert result.returncode == 0, result.stderr
        widths[revision] = len(read_jsonl(out)[0]["embedding"])
    assert widths == {None: 64, "minilm": 384}
    missing = run_embed(*files, "--output", str(tmp_path / "x.jsonl"), "--revision", "v9", env=env)
    assert missing.returncode == 1 and "is not in the local cache" in missing.stderr
