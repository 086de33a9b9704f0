"""Activation functions by their config names (shared by every architecture file)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.errors import ConfigError


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# plain MLPs: fc2(act(fc1(x))); "gelu" is the exact erf form, the *_new/_fast/_tanh names the tanh approximation
PLAIN = {"gelu": F.gelu, "gelu_new": gelu_tanh, "gelu_fast": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "relu": F.relu}
# gated MLPs: fc2(up(x) * act(gate(x)))
GATED = {"swiglu": F.silu, "glu": torch.sigmoid, "geglu": F.gelu}

# sentence-transformers names activations by their torch class path (Dense's `activation_function`, a cross-encoder's
# `activation_fn`, e.g. "torch.nn.modules.activation.Tanh"); the classes these models use, by class name. Any other
# path is a load error: sentence-transformers itself would import it, i.e. run code from the model folder.
TORCH_MODULES = {
    "Identity": lambda x: x,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "ReLU": F.relu,
    "GELU": F.gelu,
    "SiLU": F.silu,
}


def torch_activation(path: object, source: str):
    """A `torch.nn...Class` path -> the function; anything else is a ConfigError naming `source`."""
    name = path.rsplit(".", 1)[-1] if isinstance(path, str) and path.startswith("torch.nn.") else None
    if name not in TORCH_MODULES:
        raise ConfigError(f"{source}={path!r} is not supported (torch.nn {', '.join(TORCH_MODULES)})")
    return TORCH_MODULES[name]
