"""Every weight layout loads to the same model: pytorch_model.bin (weights_only, so a hostile pickle runs no code),
sharded safetensors, and a hub id served from the Hugging Face cache (offline mode honoured)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model.encoder import Encoder
from model.errors import WeightsError
from tests.conftest import GOLDEN, NOMIC, load_golden

TEXTS = [c["text"] for c in load_golden(NOMIC / "nomic-text-tiny")["cases"]]


@pytest.fixture(scope="module")
def expected():
    enc = Encoder.load(str(NOMIC / "nomic-text-tiny"), device="cpu", dtype="float32")
    return enc.embed(enc.tokenize(TEXTS))


def folder_without_weights(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(NOMIC / "nomic-text-tiny", folder, ignore=shutil.ignore_patterns("model.safetensors"))
    return folder


def embed(folder) -> np.ndarray:
    enc = Encoder.load(str(folder), device="cpu", dtype="float32")
    return enc.embed(enc.tokenize(TEXTS))


def test_pytorch_model_bin(tmp_path, expected):
    folder = folder_without_weights(tmp_path)
    torch.save(load_file(NOMIC / "nomic-text-tiny" / "model.safetensors"), folder / "pytorch_model.bin")
    np.testing.assert_array_equal(embed(folder), expected)


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EXPLOIT_MARK', '/tmp/exploit-ran')}",))


def test_hostile_pickle_runs_no_code(tmp_path, monkeypatch):
    folder = folder_without_weights(tmp_path)
    mark = tmp_path / "exploit-ran"
    monkeypatch.setenv("EXPLOIT_MARK", str(mark))
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embeddings.word_embeddings.weight": Exploit()}, f)
    with pytest.raises(WeightsError, match="cannot read pytorch_model.bin"):
        Encoder.load(str(folder), device="cpu", dtype="float32")
    assert not mark.exists()


def test_sharded_safetensors(tmp_path, expected):
    folder = folder_without_weights(tmp_path)
    state = load_file(NOMIC / "nomic-text-tiny" / "model.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, folder / name)
        weight_map |= {k: name for k in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    np.testing.assert_array_equal(embed(folder), expected)


def fake_hub_cache(tmp_path, monkeypatch, repo_id: str, folder) -> None:
    """`folder` as snapshot_download leaves a repo in HF_HOME: blobs named by hash, the snapshot's files (also in
    subfolders such as 1_Pooling/) symlinks to them, refs/main naming the revision; the hub unreachable."""
    repo = tmp_path / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = "89abcdef0123456789abcdef0123456789abcdef"
    (repo / "blobs").mkdir(parents=True)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in ("golden.json", "README.md")):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / revision / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def test_hub_id_from_the_cache_offline(tmp_path, monkeypatch, expected):
    """What `snapshot_download` left in HF_HOME earlier is used as is, with the hub unreachable."""
    fake_hub_cache(tmp_path, monkeypatch, "nomic-ai/nomic-embed-text-v1.5", NOMIC / "nomic-text-tiny")
    enc = Encoder.load("nomic-ai/nomic-embed-text-v1.5", device="cpu", dtype="float32")
    np.testing.assert_array_equal(enc.embed(enc.tokenize(TEXTS)), expected)


@pytest.mark.parametrize(
    "repo_id, folder",
    [
        ("nomic-ai/modernbert-embed-base", GOLDEN / "modernbert" / "modernbert-embed-tiny"),
        ("intfloat/multilingual-e5-base", GOLDEN / "xlmr" / "xlmr-e5-tiny"),
        ("BAAI/bge-m3", GOLDEN / "xlmr" / "xlmr-bge-m3-tiny"),
        ("nomic-ai/nomic-embed-text-v2-moe", GOLDEN / "nomic-moe" / "nomic-moe-tiny"),
    ],
)
def test_embedders_from_the_hf_cache(tmp_path, monkeypatch, repo_id, folder):
    local = Encoder.load(str(folder), device="cpu", dtype="float32")
    ids = local.tokenize([c["text"] for c in load_golden(folder)["cases"]])
    fake_hub_cache(tmp_path, monkeypatch, repo_id, folder)
    cached = Encoder.load(repo_id, device="cpu", dtype="float32")
    assert cached.info.pooling == local.info.pooling and cached.info.prompts == local.info.prompts
    np.testing.assert_array_equal(cached.embed(cached.tokenize([c["text"] for c in load_golden(folder)["cases"]])),
                                  local.embed(ids))


@pytest.mark.parametrize(
    "repo_id, folder",
    [
        ("cross-encoder/ms-marco-MiniLM-L-6-v2", GOLDEN / "rerank" / "bert-cross-encoder-tiny"),
        ("BAAI/bge-reranker-v2-m3", GOLDEN / "rerank" / "xlmr-reranker-tiny"),
        ("Alibaba-NLP/gte-reranker-modernbert-base", GOLDEN / "rerank" / "modernbert-reranker-tiny"),
    ],
)
def test_rerankers_from_the_hf_cache(tmp_path, monkeypatch, repo_id, folder):
    case = load_golden(folder)["cases"][0]
    fake_hub_cache(tmp_path, monkeypatch, repo_id, folder)
    enc = Encoder.load(repo_id, device="cpu", dtype="float32")
    logits = enc.score(enc.tokenize_pairs(case["query"], case["documents"], truncate=True))
    np.testing.assert_allclose(logits, [p["logit"] for p in case["pairs"]], atol=2e-5)
