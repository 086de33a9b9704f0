"""NomicBert MoE config and weights: which layers are MoE, the input limit, and one clear load error for every MoE
option we cannot run as nomic's code does (each names its key), or for expert tensors that do not fit."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from model.architectures import parse_config
from model.config import read_spec
from model.encoder import Encoder
from model.errors import ConfigError, WeightsError
from tests.conftest import GOLDEN

MOE = GOLDEN / "nomic-moe" / "nomic-moe-tiny"
RAW = json.loads((MOE / "config.json").read_text())


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "moe"
    shutil.copytree(MOE, out, ignore=shutil.ignore_patterns("golden.json"))
    return out


def edit_config(folder, **changes):
    (folder / "config.json").write_text(json.dumps(RAW | changes))


@pytest.mark.parametrize(
    "every, layers", [(2, (1, 3, 5, 7, 9, 11)), (3, (1, 4, 7, 10)), (4, (1, 5, 9)), (12, (1,)), (13, (1,)), (0, ())]
)
def test_moe_layers_follow_i_mod_n_equals_1(every, layers):
    config = parse_config(RAW | {"n_layer": 12, "moe_every_n_layers": every, "num_experts": 8})
    assert config.moe_layers == layers


def test_v2_moe_published_shape():
    config = parse_config(RAW | {"n_embd": 768, "n_head": 12, "n_layer": 12, "n_inner": 3072, "num_experts": 8,
                                 "vocab_size": 250048})
    assert (config.num_experts, config.moe_top_k, config.moe_layers) == (8, 2, (1, 3, 5, 7, 9, 11))
    assert config.vocab_size == 250048 and config.n_inner == 3072 and not config.gated


def test_input_limit_follows_the_one_rule():
    """v2-moe's config has n_positions 2048: rule 2 (legacy NomicBert n_positions) comes before its
    sentence_bert_config.json max_seq_length (512), as for every NomicBert; --max-input-tokens overrides."""
    spec = read_spec(MOE)
    assert (spec.max_input_tokens, spec.limit_source) == (2048, "config.json n_positions")
    assert read_spec(MOE, 512).max_input_tokens == 512
    assert spec.architecture.experts(spec.arch) == {"num_experts": 4, "top_k": 2, "layers": [1]}
    assert spec.matryoshka_layer_norm  # nomic's Matryoshka recipe


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"moe_normalize_expert_weights": True}, "moe_normalize_expert_weights=True"),
        ({"moe_normalize_expert_weights": 1.0}, "moe_normalize_expert_weights=1.0"),
        ({"num_shared_experts": 1}, "num_shared_experts=1"),
        ({"expert_choice_router": True}, "expert_choice_router=true"),
        ({"moe_every_n_layers": 1}, "moe_every_n_layers=1"),
        ({"moe_every_n_layers": -2}, "moe_every_n_layers=-2"),
        ({"moe_top_k": 5}, "moe_top_k=5"),
        ({"moe_top_k": 0}, "moe_top_k=0"),
        ({"moe_top_k": None}, "moe_top_k=None"),
        ({"num_experts": 0}, "num_experts"),
        ({"activation_function": "swiglu"}, "activation_function='swiglu'"),
        ({"num_experts": "4"}, "num_experts='4'"),
    ],
)
def test_unsupported_moe_options_are_a_load_error_naming_the_key(folder, changes, named):
    edit_config(folder, **changes)
    with pytest.raises(ConfigError) as err:
        Encoder.load(str(folder), device="cpu", dtype="float32")
    assert named in str(err.value) and "\n" not in str(err.value)


def test_dense_when_moe_every_n_layers_is_0(folder):
    """nomic's code builds every layer dense then, whatever num_experts says; so do we (and say the tensors differ)."""
    edit_config(folder, moe_every_n_layers=0)
    assert parse_config(RAW | {"moe_every_n_layers": 0}).moe_layers == ()
    with pytest.raises(WeightsError, match=r"missing: encoder\.layers\.1\.mlp\.fc1\.bias"):
        Encoder.load(str(folder), device="cpu", dtype="float32")


def rewrite_weights(folder, edit) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


def test_missing_expert_tensor_is_listed(folder):
    rewrite_weights(folder, lambda s: s.pop("encoder.layers.1.mlp.experts.mlp.w2"))
    with pytest.raises(WeightsError) as err:
        Encoder.load(str(folder), device="cpu", dtype="float32")
    assert "missing: encoder.layers.1.mlp.experts.0.fc2.weight" in str(err.value)


def test_expert_count_disagreeing_with_the_config(folder):
    edit_config(folder, num_experts=8)  # the checkpoint's router has 4 rows
    with pytest.raises(WeightsError) as err:
        Encoder.load(str(folder), device="cpu", dtype="float32")
    assert "router.weight (4, 64) != (8, 64)" in str(err.value)


def test_stacked_experts_that_do_not_split(folder):
    def cut(state):
        state["encoder.layers.1.mlp.experts.mlp.w1"] = state["encoder.layers.1.mlp.experts.mlp.w1"][:-1]

    rewrite_weights(folder, cut)
    with pytest.raises(WeightsError, match=r"experts\.mlp\.w1 \(1023, 64\) does not split into 4 experts"):
        Encoder.load(str(folder), device="cpu", dtype="float32")
