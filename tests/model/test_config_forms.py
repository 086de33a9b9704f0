"""Every published NomicBert config form loads and computes the same embeddings (issue: v5 config form)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model.architectures import parse_config
from model.config import input_limit, read_spec
from model.encoder import Encoder
from model.errors import ConfigError
from tests.conftest import NOMIC, load_golden, unpad


def copy_model(src: Path, dst: Path, config: dict | None = None) -> Path:
    shutil.copytree(src, dst)
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def merged_config(legacy: str, v5: str) -> dict:
    """The Hub's main since 2026-04-07: the v5 keys written next to the legacy ones."""
    merged = json.loads((NOMIC / legacy / "config.json").read_text())
    merged.update(json.loads((NOMIC / v5 / "config.json").read_text()))
    return merged


def all_cases(encoder: Encoder, folder: Path) -> np.ndarray:
    rows = []
    for case in load_golden(folder)["cases"].values():
        rows.append(encoder.finish(encoder.pooled(unpad(case["input_ids"], case["attention_mask"]))))
    return np.concatenate(rows)


def test_v5_form_maps_to_the_legacy_values():
    legacy = parse_config(json.loads((NOMIC / "tiny" / "config.json").read_text()))
    v5 = parse_config(json.loads((NOMIC / "tiny-hf5" / "config.json").read_text()))
    for field in (
        "n_embd",
        "n_head",
        "n_layer",
        "n_inner",
        "activation_function",
        "rotary_emb_base",
        "max_trained_positions",
        "rotary_scaling_factor",
        "qkv_proj_bias",
        "mlp_fc1_bias",
        "mlp_fc2_bias",
        "prenorm",
        "rotary_emb_fraction",
        "rotary_emb_interleaved",
        "layer_norm_epsilon",
        "vocab_size",
    ):
        assert getattr(v5, field) == getattr(legacy, field), field


def test_merged_config_gives_identical_embeddings(tmp_path):
    folder = copy_model(NOMIC / "tiny", tmp_path / "merged", merged_config("tiny", "tiny-hf5"))
    merged = Encoder.load(str(folder), device="cpu", dtype="float32", max_input_tokens=128)
    legacy = Encoder.load(str(NOMIC / "tiny"), device="cpu", dtype="float32", max_input_tokens=128)
    np.testing.assert_array_equal(all_cases(merged, NOMIC / "tiny"), all_cases(legacy, NOMIC / "tiny"))


def test_merged_text_config_reproduces_goldens(tmp_path):
    folder = copy_model(
        NOMIC / "nomic-text-tiny", tmp_path / "m", merged_config("nomic-text-tiny", "nomic-text-tiny-hf5")
    )
    encoder = Encoder.load(str(folder), device="cpu", dtype="float32")
    cases = load_golden(NOMIC / "nomic-text-tiny")["cases"]
    out = encoder.embed(encoder.tokenize([c["text"] for c in cases]))
    np.testing.assert_allclose(out, [c["mean_pooled_l2"] for c in cases], atol=2e-5)


@pytest.mark.parametrize(
    "change, names",
    [
        ({"hidden_size": 128}, ["n_embd=64", "hidden_size=128"]),
        ({"num_hidden_layers": 3}, ["n_layer=2", "num_hidden_layers=3"]),
        (
            {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
            ["rotary_emb_base=1000", "rope_theta=10000.0"],
        ),
        (
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000.0}},
            ["rotary_scaling_factor=None", "rope_parameters.factor=2.0"],
        ),
        ({"hidden_act": "gelu"}, ["activation_function='swiglu'", "hidden_act="]),
    ],
)
def test_disagreeing_forms_fail_naming_both(tmp_path, change, names):
    config = merged_config("tiny", "tiny-hf5") | change
    folder = copy_model(NOMIC / "tiny", tmp_path / "bad", config)
    with pytest.raises(ConfigError) as err:
        Encoder.load(str(folder), device="cpu", dtype="float32")
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message


@pytest.mark.parametrize("rope_type", ["yarn", "linear", "longrope", "llama3"])
def test_unsupported_rope_type_is_an_error(rope_type):
    config = json.loads((NOMIC / "tiny-hf5" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": rope_type, "factor": 2.0, "rope_theta": 1000.0}
    with pytest.raises(ConfigError, match=f"rope_type={rope_type!r}"):
        parse_config(config)


def test_v5_dynamic_rope_turns_on_ntk():
    config = json.loads((NOMIC / "tiny-hf5" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000.0}
    parsed = parse_config(config)
    assert parsed.rotary_scaling_factor == 2.0 and parsed.max_trained_positions == 32


def test_split_weight_names_load_identically(tmp_path):
    """A state dict written with transformers-v5's split names (q/k/v, gate/up/down, ...) fuses back at load."""
    folder = copy_model(NOMIC / "tiny", tmp_path / "split")
    state = load_file(NOMIC / "tiny" / "model.safetensors")
    split = {
        "embeddings.LayerNorm.weight": state.pop("emb_ln.weight"),
        "embeddings.LayerNorm.bias": state.pop("emb_ln.bias"),
    }
    for key in list(state):
        if not key.startswith("encoder.layers."):
            split[key] = state.pop(key)
    for i in range(2):
        p, q = f"encoder.layers.{i}", f"layers.{i}"
        wq, wk, wv = state.pop(f"{p}.attn.Wqkv.weight").chunk(3, dim=0)
        split |= {
            f"{q}.self_attn.q_proj.weight": wq,
            f"{q}.self_attn.k_proj.weight": wk,
            f"{q}.self_attn.v_proj.weight": wv,
            f"{q}.self_attn.o_proj.weight": state.pop(f"{p}.attn.out_proj.weight"),
            f"{q}.mlp.up_proj.weight": state.pop(f"{p}.mlp.fc11.weight"),
            f"{q}.mlp.gate_proj.weight": state.pop(f"{p}.mlp.fc12.weight"),
            f"{q}.mlp.down_proj.weight": state.pop(f"{p}.mlp.fc2.weight"),
        }
        for norm, name in (("norm1", "post_attention_layernorm"), ("norm2", "post_mlp_layernorm")):
            for s in ("weight", "bias"):
                split[f"{q}.{name}.{s}"] = state.pop(f"{p}.{norm}.{s}")
    assert not state
    save_file({k: v.contiguous() for k, v in split.items()}, folder / "model.safetensors")
    ours = Encoder.load(str(folder), device="cpu", dtype="float32", max_input_tokens=128)
    legacy = Encoder.load(str(NOMIC / "tiny"), device="cpu", dtype="float32", max_input_tokens=128)
    np.testing.assert_array_equal(all_cases(ours, NOMIC / "tiny"), all_cases(legacy, NOMIC / "tiny"))


def test_bert_prefixed_keys_load(tmp_path):
    folder = copy_model(NOMIC / "tiny", tmp_path / "prefixed")
    state = load_file(NOMIC / "tiny" / "model.safetensors")
    save_file(
        {f"bert.{k}": v for k, v in state.items()} | {"cls.predictions.bias": torch.zeros(3)},
        folder / "model.safetensors",
    )
    ours = Encoder.load(str(folder), device="cpu", dtype="float32", max_input_tokens=128)
    legacy = Encoder.load(str(NOMIC / "tiny"), device="cpu", dtype="float32", max_input_tokens=128)
    np.testing.assert_array_equal(all_cases(ours, NOMIC / "tiny"), all_cases(legacy, NOMIC / "tiny"))


def test_input_limit_rule(tmp_path, minilm_dir):
    """setting > legacy n_positions > sentence-transformers max_seq_length > tokenizer > max_position_embeddings."""
    assert read_spec(NOMIC / "tiny").max_input_tokens == 128  # n_positions
    assert read_spec(NOMIC / "tiny", 64).max_input_tokens == 64  # the setting wins
    assert read_spec(NOMIC / "nomic-text-tiny").max_input_tokens == 8192  # n_positions
    spec = read_spec(NOMIC / "nomic-text-tiny-hf5")
    assert (spec.max_input_tokens, spec.limit_source) == (8192, "sentence_bert_config.json max_seq_length")
    assert read_spec(NOMIC / "tiny-hf5").max_input_tokens == 32  # only max_position_embeddings left
    assert read_spec(minilm_dir).max_input_tokens == 256  # MiniLM: sentence-transformers' 256, not the table's 512
    folder = copy_model(NOMIC / "tiny-hf5", tmp_path / "tok")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 100}))
    assert input_limit(json.loads((folder / "config.json").read_text()), folder, None) == (
        100,
        "tokenizer_config.json model_max_length",
    )
    with pytest.raises(ConfigError, match="exceeds the model's 512 position embeddings"):
        read_spec(minilm_dir, 1000)
