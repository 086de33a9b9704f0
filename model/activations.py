"""Activation functions by their config names (shared by every architecture file)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# plain MLPs: fc2(act(fc1(x))); "gelu" is the exact erf form, the *_new/_fast/_tanh names the tanh approximation
PLAIN = {"gelu": F.gelu, "gelu_new": gelu_tanh, "gelu_fast": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "relu": F.relu}
# gated MLPs: fc2(up(x) * act(gate(x)))
GATED = {"swiglu": F.silu, "glu": torch.sigmoid, "geglu": F.gelu}
