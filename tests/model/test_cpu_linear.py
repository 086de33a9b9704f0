"""The oneDNN packed linears swapped in on CPU: same numbers as nn.Linear, activations fused only where they may be."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading

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
from tests.conftest import NOMIC, ROOT

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


def test_a_small_batch_runs_on_every_thread_it_is_given(minilm):
    """A lone 16-token input computes on the threads the caller gives it (the server: all cores when the other worker
    is idle), not on one: at 16 tokens a linear is still arithmetic-bound, and two cores do it ~1.6x faster."""
    seen: list[int] = []
    layer = minilm.model.layers[0]
    hook = layer.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    try:
        short = [[101, *range(2000, 2014), 102]]
        out = {}
        for threads in (2, 1):  # in a thread of its own, as a batcher worker runs it
            worker = threading.Thread(target=lambda t=threads: out.setdefault(t, minilm.pooled(short, threads=t)))
            worker.start()
            worker.join()
    finally:
        hook.remove()
    assert seen == [2, 1]
    np.testing.assert_allclose(out[2], out[1], atol=1e-5)


# A fresh interpreter: oneDNN sizes its caches when the process creates its first primitive.
DISTINCT_ROW_COUNTS = """
import random, torch
from torch import nn
from model import cpu_linear

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

torch.set_num_threads(1)
layer = cpu_linear.PackedLinear(nn.Linear(384, 384))  # MiniLM's attention output projection
rows = list(range(1, 401))
random.Random(0).shuffle(rows)
with torch.inference_mode():
    for m in rows[:100]:  # the allocator's working set and the first cache entries
        layer(torch.randn(m, 384))
    before = rss_mb()
    for m in rows[100:]:
        layer(torch.randn(m, 384))
print(rss_mb() - before)
"""


def test_memory_stays_bounded_over_many_distinct_batch_sizes():
    """A server sees a new token count with nearly every batch; oneDNN compiles a primitive for each. With its default
    cache sizes 300 new row counts grew this process by ~170 MB (and a server by ~0.55 MB per new batch size, without
    end); bounded caches hold it at ~45 MB however many more come."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", DISTINCT_ROW_COUNTS], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    growth_mb = float(done.stdout.strip().splitlines()[-1])
    assert growth_mb < 100, f"RSS grew {growth_mb:.0f} MB over 300 distinct row counts"
