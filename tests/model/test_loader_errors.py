"""Loader errors are one clear line each, never a stack trace or a silently wrong model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.encoder import Encoder
from model.errors import ConfigError, ModelError, WeightsError
from tests.conftest import GOLDEN, NOMIC, ROOT


@pytest.fixture
def tiny(tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(NOMIC / "tiny", folder)
    return folder


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text()) | changes
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_tensor(tiny):
    state = load_file(tiny / "model.safetensors")
    del state["encoder.layers.1.mlp.fc2.weight"]
    save_file(state, tiny / "model.safetensors")
    with pytest.raises(WeightsError, match=r"missing: encoder\.layers\.1\.mlp\.fc2\.weight"):
        Encoder.load(str(tiny), device="cpu", dtype="float32")


def test_unexpected_tensor(tiny):
    state = load_file(tiny / "model.safetensors") | {"encoder.layers.0.attn.Wqkv.bias": torch.zeros(192)}
    save_file(state, tiny / "model.safetensors")
    with pytest.raises(WeightsError, match=r"unexpected: encoder\.layers\.0\.attn\.Wqkv\.bias"):
        Encoder.load(str(tiny), device="cpu", dtype="float32")


def test_wrong_shape(tiny):
    state = load_file(tiny / "model.safetensors")
    state["encoder.layers.0.attn.out_proj.weight"] = torch.zeros(64, 32)
    save_file(state, tiny / "model.safetensors")
    with pytest.raises(
        WeightsError, match=r"wrong shape: encoder\.layers\.0\.attn\.out_proj\.weight \(64, 32\) != \(64, 64\)"
    ):
        Encoder.load(str(tiny), device="cpu", dtype="float32")


def test_config_that_does_not_match_weights(tiny):
    edit_config(tiny, n_layer=3)
    with pytest.raises(WeightsError, match="missing: encoder.layers.2"):
        Encoder.load(str(tiny), device="cpu", dtype="float32")


def test_unknown_model_type(tiny):
    edit_config(tiny, model_type="gpt_neox")
    with pytest.raises(ConfigError, match="model_type='gpt_neox' is not supported"):
        Encoder.load(str(tiny), device="cpu", dtype="float32")


def test_corrupt_safetensors(tiny):
    (tiny / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(WeightsError, match="cannot read model.safetensors"):
        Encoder.load(str(tiny), device="cpu", dtype="float32")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"activation_function": "mish"}, "activation_function='mish'"),
        ({"rotary_emb_fraction": 1.5}, "rotary_emb_fraction=1.5"),
        ({"n_head": 5}, "n_head=5"),
        ({"n_embd": "64"}, "n_embd='64'"),
        ({"rotary_scaling_factor": 0.5}, "rotary_scaling_factor=0.5"),
    ],
)
def test_unsupported_config_values_name_the_field(tiny, changes, field):
    edit_config(tiny, **changes)
    with pytest.raises(ConfigError) as err:
        Encoder.load(str(tiny), device="cpu", dtype="float32")
    assert field in str(err.value) and "\n" not in str(err.value)


def test_missing_folder_and_unreachable_hub(monkeypatch, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Encoder.load(str(tmp_path / "nope"), device="cpu", dtype="float32")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model",
            "embed",
            "--model",
            "nomic-ai/nomic-embed-text-v1.5",
            "--input",
            "x.jsonl",
            "--output",
            "y.jsonl",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback
    assert "not in the local cache" in result.stderr and "nomic-ai/nomic-embed-text-v1.5" in result.stderr


def copy_golden(tmp_path, sub: str):
    folder = tmp_path / sub.replace("/", "-")
    shutil.copytree(GOLDEN / sub, folder)
    return folder


def test_modernbert_weight_errors_name_the_tensor(tmp_path):
    folder = copy_golden(tmp_path, "modernbert/modernbert-embed-tiny")
    state = load_file(folder / "model.safetensors")
    del state["layers.2.attn_norm.weight"]
    state["layers.0.attn_norm.weight"] = torch.ones(64)  # layer 0 has none: its input is the normed embedding
    state["final_norm.weight"] = torch.ones(32)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightsError) as err:
        Encoder.load(str(folder), device="cpu", dtype="float32")
    message = str(err.value)
    assert "missing: layers.2.attn_norm.weight" in message
    assert "unexpected: layers.0.attn_norm.weight" in message
    assert "wrong shape: final_norm.weight (32,) != (64,)" in message


def test_reranker_without_its_head(tmp_path):
    folder = copy_golden(tmp_path, "rerank/xlmr-reranker-tiny")
    state = load_file(folder / "model.safetensors")
    del state["classifier.out_proj.weight"], state["classifier.out_proj.bias"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightsError, match=r"missing: head\.out\.bias, head\.out\.weight"):
        Encoder.load(str(folder), device="cpu", dtype="float32")


def test_a_kind_the_architecture_does_not_have(tiny):
    edit_config(tiny, architectures=["NomicBertForSequenceClassification"])
    with pytest.raises(ConfigError, match="model_type='nomic_bert' is supported as embedding only, not as reranker"):
        Encoder.load(str(tiny), device="cpu", dtype="float32")
