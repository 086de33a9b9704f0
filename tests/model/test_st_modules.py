"""The sentence-transformers module chain as modules.json declares it: every Pooling mode (alone and concatenated),
Dense modules with their activation, Normalize; a module this encoder does not run is a load error naming it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model.encoder import Encoder
from model.errors import ConfigError, WeightsError
from model.packing import pack
from tests.conftest import GOLDEN

E5 = GOLDEN / "xlmr" / "xlmr-e5-tiny"
TEXTS = ["a short one", "query: how much protein should a female eat", "x " * 40, "passage: " + "words " * 90]


@pytest.fixture
def folder(tmp_path):
    dst = tmp_path / "e5"
    shutil.copytree(E5, dst)
    return dst


def load(folder) -> Encoder:
    return Encoder.load(str(folder), device="cpu", dtype="float32")


def hidden_states(enc: Encoder, ids: list[list[int]]) -> list[np.ndarray]:
    """Each sequence's last hidden state, run alone."""
    with torch.inference_mode():
        return [enc.model(pack([seq])).numpy().astype(np.float64) for seq in ids]


REFERENCE = {  # sentence-transformers' Pooling modes on one sequence's (n, E) hidden states
    "cls": lambda h: h[0],
    "max": lambda h: h.max(0),
    "mean": lambda h: h.mean(0),
    "mean_sqrt_len_tokens": lambda h: h.sum(0) / np.sqrt(len(h)),
    "weightedmean": lambda h: (h * np.arange(1, len(h) + 1)[:, None]).sum(0) / np.arange(1, len(h) + 1).sum(),
    "lasttoken": lambda h: h[-1],
}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def set_pooling(folder, **config):
    base = {"word_embedding_dimension": 64, "include_prompt": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(base | config))


FLAGS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
         "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
         "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}


@pytest.mark.parametrize("mode", list(REFERENCE))
def test_each_pooling_mode(folder, mode):
    set_pooling(folder, **{flag: flag == FLAGS[mode] for flag in FLAGS.values()})
    enc = load(folder)
    assert enc.info.pooling == mode
    ids = enc.tokenize(TEXTS)
    want = unit(np.stack([REFERENCE[mode](h) for h in hidden_states(enc, ids)]))
    np.testing.assert_allclose(enc.embed(ids), want, atol=1e-5)


def test_modes_concatenate_in_sentence_transformers_order(folder):
    """Legacy flags concatenate as cls, max, mean, ...; the newer `pooling_mode` list in its own order."""
    set_pooling(folder, pooling_mode_mean_tokens=True, pooling_mode_cls_token=True, pooling_mode_max_tokens=True)
    enc = load(folder)
    assert (enc.info.pooling, enc.info.hidden_size) == ("cls+max+mean", 192)
    ids = enc.tokenize(TEXTS)
    states = hidden_states(enc, ids)
    want = unit(np.stack([np.concatenate([REFERENCE[m](h) for m in ("cls", "max", "mean")]) for h in states]))
    np.testing.assert_allclose(enc.embed(ids), want, atol=1e-5)
    set_pooling(folder, pooling_mode=["lasttoken", "mean"])
    enc = load(folder)
    assert enc.info.pooling == "lasttoken+mean"
    want = unit(np.stack([np.concatenate([REFERENCE[m](h) for m in ("lasttoken", "mean")]) for h in states]))
    np.testing.assert_allclose(enc.embed(ids), want, atol=1e-5)


def add_dense(folder, name: str, n_in: int, n_out: int, activation: str | None, seed: int, **extra) -> dict:
    torch.manual_seed(seed)
    state = {"linear.weight": torch.randn(n_out, n_in) * 0.2, "linear.bias": torch.randn(n_out) * 0.1}
    (folder / name).mkdir()
    config = {"in_features": n_in, "out_features": n_out, "bias": True} | extra
    if activation is not None:
        config["activation_function"] = activation
    (folder / name / "config.json").write_text(json.dumps(config))
    save_file(state, folder / name / "model.safetensors")
    return {k: v.numpy().astype(np.float64) for k, v in state.items()}


def set_modules(folder, *modules: tuple[str, str]):
    chain = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    chain += [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (kind, path) in enumerate(modules, 1)]
    (folder / "modules.json").write_text(json.dumps(chain))


POOLING = ("sentence_transformers.models.Pooling", "1_Pooling")
NORMALIZE = ("sentence_transformers.models.Normalize", "3_Normalize")


def test_dense_modules_with_their_activations(folder):
    """Pooling -> Dense(64 -> 32, Tanh) -> Normalize -> Dense(32 -> 16, Identity) -> Normalize, as written."""
    first = add_dense(folder, "2_Dense", 64, 32, "torch.nn.modules.activation.Tanh", seed=1)
    second = add_dense(folder, "4_Dense", 32, 16, "torch.nn.modules.linear.Identity", seed=2)
    set_modules(folder, POOLING, ("sentence_transformers.models.Dense", "2_Dense"), NORMALIZE,
                ("sentence_transformers.base.modules.dense.Dense", "4_Dense"), NORMALIZE)
    enc = load(folder)
    assert enc.info.hidden_size == 16
    ids = enc.tokenize(TEXTS)
    x = np.stack([h.mean(0) for h in hidden_states(enc, ids)])
    x = unit(np.tanh(x @ first["linear.weight"].T + first["linear.bias"]))
    want = unit(x @ second["linear.weight"].T + second["linear.bias"])
    np.testing.assert_allclose(enc.embed(ids), want, atol=1e-5)
    np.testing.assert_allclose(enc.embed(ids, dimensions=8), unit(want[:, :8]), atol=1e-5)


def test_dense_defaults_to_tanh_and_can_add_its_input(folder):
    dense = add_dense(folder, "2_Dense", 64, 64, None, seed=3, use_residual=True)
    set_modules(folder, POOLING, ("sentence_transformers.models.Dense", "2_Dense"))
    enc = load(folder)
    ids = enc.tokenize(TEXTS)
    x = np.stack([h.mean(0) for h in hidden_states(enc, ids)])
    np.testing.assert_allclose(enc.embed(ids), unit(np.tanh(x @ dense["linear.weight"].T + dense["linear.bias"]) + x),
                               atol=1e-5)


@pytest.mark.parametrize(
    "modules, message",
    [
        ([POOLING, ("sentence_transformers.models.LayerNorm", "2_Norm")], "sentence_transformers.models.LayerNorm"),
        ([POOLING, ("my_package.Rerank", "2_Custom")], "my_package.Rerank"),
        ([("sentence_transformers.models.Dense", "2_Dense"), POOLING], "Dense' before a Pooling"),
        ([POOLING, POOLING], "sentence_transformers.models.Pooling"),
    ],
)
def test_unsupported_modules_are_load_errors(folder, modules, message):
    add_dense(folder, "2_Dense", 64, 16, None, seed=0)
    set_modules(folder, *modules)
    with pytest.raises(ConfigError, match=message):
        load(folder)


def test_module_errors_name_the_file_and_field(folder):
    set_pooling(folder, pooling_mode_mean_tokens=True, include_prompt=False)
    with pytest.raises(ConfigError, match="1_Pooling/config.json: include_prompt=false"):
        load(folder)
    set_pooling(folder, pooling_mode="median")
    with pytest.raises(ConfigError, match="pooling mode 'median' is not supported"):
        load(folder)
    set_pooling(folder, pooling_mode_mean_tokens=True)
    add_dense(folder, "2_Dense", 32, 16, None, seed=0)
    set_modules(folder, POOLING, ("sentence_transformers.models.Dense", "2_Dense"))
    with pytest.raises(ConfigError, match="2_Dense/config.json: in_features=32 but the module before gives 64"):
        load(folder)
    config = json.loads((folder / "2_Dense" / "config.json").read_text()) | {"in_features": 64}
    (folder / "2_Dense" / "config.json").write_text(json.dumps(config | {"activation_function": "evil.Module"}))
    with pytest.raises(ConfigError, match="activation_function='evil.Module' is not supported"):
        load(folder)
    (folder / "2_Dense" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"2_Dense: weights do not match the config: wrong shape: linear\.weight"):
        load(folder)
    (folder / "2_Dense" / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="2_Dense has no model.safetensors"):
        load(folder)
    (folder / "modules.json").write_text("[{]")
    with pytest.raises(ConfigError, match="modules.json is not valid JSON"):
        load(folder)
