"""The oneDNN packed linears swapped in on CPU: same numbers as nn.Linear, activations fused only where they may be."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import cpu_linear
from model.activations import gelu_tanh
from model.architectures import build_model
from model.config import read_spec
from model.packing import pack
from model.weights import read_state_dict
from tests.conftest import NOMIC

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="this torch build has no oneDNN")


@pytest.mark.parametrize("activation", [None, F.gelu, gelu_tanh, F.relu])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_nn_linear(activation, bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=bias)
    x = torch.randn(37, 96)
    want = linear(x) if activation is None else activation(linear(x))
    with torch.inference_mode():
        got = cpu_linear.PackedLinear(linear, activation)(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_packed_linear_in_bf16_stays_close():
    torch.manual_seed(0)
    linear = nn.Linear(384, 1536).to(torch.bfloat16)
    x = torch.randn(16, 384, dtype=torch.bfloat16)
    with torch.inference_mode():
        got = cpu_linear.PackedLinear(linear, F.gelu)(x).float()
    want = F.gelu(linear(x).float())
    assert F.cosine_similarity(got, want).min() > 0.999


def _raw_model(folder) -> nn.Module:
    """The model as loaded, before the encoder swaps in any kernel."""
    spec = read_spec(folder, 128)
    return build_model(spec.architecture, spec.arch, read_state_dict(folder), folder.name)


def _embed(model: nn.Module, batch: list[list[int]]) -> torch.Tensor:
    with torch.inference_mode():
        return model(pack(batch))


def test_install_swaps_every_linear_and_keeps_minilm_exact(minilm_dir):
    model = _raw_model(minilm_dir)
    batch = [[101, *range(2000, 2000 + n), 102] for n in (3, 40, 17)]
    before = _embed(model, batch)

    assert cpu_linear.install(model, min_speedup=0.0) == "onednn"

    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    layer = model.layers[0]
    assert layer.fc1.post_op == "gelu" and layer.act is cpu_linear.identity  # GELU runs inside fc1's matmul
    torch.testing.assert_close(_embed(model, batch), before, atol=1e-5, rtol=1e-5)


def test_install_leaves_a_gated_mlp_activation_outside_the_matmul():
    model = _raw_model(NOMIC / "tiny")
    mlp = model.encoder.layers[0].mlp
    batch = [[1, 20, 21, 2], [1, 25, 2]]
    before = _embed(model, batch)

    assert cpu_linear.install(model, min_speedup=0.0) == "onednn"

    assert mlp.gated and mlp.fc1.post_op == "none" and mlp.act is F.silu  # SwiGLU gates on half of fc1's output
    torch.testing.assert_close(_embed(model, batch), before, atol=1e-5, rtol=1e-5)


def test_install_keeps_nn_linear_when_onednn_does_not_win(minilm_dir):
    model = _raw_model(minilm_dir)
    assert cpu_linear.install(model, min_speedup=math.inf) == "aten"
    assert all(not isinstance(m, cpu_linear.PackedLinear) for m in model.modules())


def test_encoder_states_the_kernel_it_timed_and_chose(minilm):
    speedup = cpu_linear.onednn_speedup(torch.float32)  # cached: the figure the encoder decided on
    assert minilm.linear_kernel == ("onednn" if speedup >= 1.05 else "aten")
    assert np.isfinite(minilm.embed([[101, 7592, 2088, 102]])).all()


def test_cpu_batch_larger_than_one_forward_gives_the_same_vectors(minilm, monkeypatch):
    import model.encoder as encoder_module

    batch = [[101, *range(2000, 2000 + n), 102] for n in (30, 5, 61, 12, 40, 3)]
    whole = minilm.pooled(batch)
    monkeypatch.setattr(encoder_module, "CPU_FORWARD_TOKENS", 50)  # -> forwards of [32, 7], [63], [14], [42, 5]
    np.testing.assert_allclose(minilm.pooled(batch), whole, atol=1e-5)
    np.testing.assert_allclose(minilm.pooled(batch[2:3]), whole[2:3], atol=1e-5)  # one input over the limit: whole
