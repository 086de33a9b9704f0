"""Linear layers on oneDNN for CPU inference: weights packed once at load, bias and activation fused into the matmul.

Why: PyTorch's CPU `nn.Linear` calls MKL, which on AMD CPUs runs a slower code path than the hardware allows, and adds
the bias as a separate broadcast copy. oneDNN's packed-weight matmul (the kernel `torch.compile` uses on CPU) measured
on a Zen 4 EPYC, fp32: 1.2-1.45x MKL's speed on the encoders' large shapes, 1.8-2.2x on 16-token batches; end to end
all-MiniLM-L6-v2 at 180 tokens x 32 went from 5,742 to 6,997 tokens/s with the embeddings equal to 1e-6. On other CPUs
MKL may be the faster one, so `install` times both once per process and dtype (on a BERT-base-sized layer, so every
model loaded in one process makes the same choice) and keeps the winner.

The swap happens once, after the model is on its device in its dtype; the model files know nothing about it.

Memory: oneDNN compiles one primitive per distinct problem -- input row count, weight shape, thread count -- and keeps
it in two caches (its own, 1,024 entries by default, and ideep's per-thread one in front of it, 1,024 each), ~0.28 MB
an entry. A server sees a new row count with almost every batch, so with the defaults RSS grew ~0.55 MB per new batch
size (1,500 requests of mixed short inputs: +600 MB and climbing). `CACHE_ENTRIES` bounds the process at ~75 MB of
primitives; a row count that has been evicted costs its primitives again (measured 0.15-0.6 ms per linear shape, ~1.6 ms
for one MiniLM forward on 1 thread: ~1% of a 300-token forward).
"""

from __future__ import annotations

import functools
import logging
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from model.activations import gelu_tanh

log = logging.getLogger(__name__)

# Both caches read their size once, when first used, so this must run before the process's first oneDNN primitive (the
# encoder imports this module before it builds a model). setdefault: an operator's own value wins. Each linear shape,
# row count and thread count takes two entries (the inner product and the matmul inside it): 256 hold 32 (row count,
# thread count) pairs of a 4-shape encoder (BERT, MiniLM, NomicBert). ideep's cache in front of it made no measurable
# difference to a 16-row call (1 vs 1,024 entries), so it stays small: its entries keep primitives alive that oneDNN's
# own cache has already let go.
CACHE_ENTRIES = 256
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(CACHE_ENTRIES))
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")

# activation -> oneDNN post-op (name, algorithm), for fc1 layers whose activation can run inside the matmul
POST_OPS = {F.gelu: ("gelu", "none"), gelu_tanh: ("gelu", "tanh"), F.relu: ("relu", "")}


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear(nn.Module):
    """y = activation(x @ W.T + b) with W packed in oneDNN's blocked layout. x: (T, in) -> (T, out)."""

    def __init__(self, linear: nn.Linear, activation=None):
        super().__init__()
        self.post_op, self.algorithm = POST_OPS[activation] if activation is not None else ("none", "")
        # plain attributes, not parameters: the packed weight is an opaque oneDNN tensor
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, self.post_op, [], self.algorithm)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _best_time(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# The probe's row counts: a short request's batch and a full one. One large shape alone sat at the threshold in bf16
# (1.02-1.16x over four processes at 256 rows; Zen 4 EPYC, 2 threads), so a process could keep nn.Linear, while end
# to end oneDNN is the faster kernel at every batch size there: MiniLM bf16 1 x 16 5.06 vs 7.23 ms, 8 x 16 19.0 vs
# 21.7 ms, 32 x 180 653 vs 774 ms; at 16 rows its matmul is 1.35-1.8x nn.Linear's.
PROBE_ROWS = (16, 256)


@functools.cache
@torch.inference_mode()
def onednn_speedup(dtype: torch.dtype, features: tuple[int, int] = (768, 3072)) -> float:
    """How many times faster the packed oneDNN matmul is than nn.Linear on this CPU: the mean of its speed-ups on a
    (16, 768) and a (256, 768) input."""
    linear = nn.Linear(*features, dtype=dtype)
    packed = PackedLinear(linear)
    inputs = [torch.randn(rows, features[0], dtype=dtype) for rows in PROBE_ROWS]
    ratios = [_best_time(functools.partial(linear, x)) / _best_time(functools.partial(packed, x)) for x in inputs]
    return sum(ratios) / len(ratios)


def install(model: nn.Module, min_speedup: float = 1.05) -> str:
    """Swap the model's nn.Linear layers for PackedLinear when oneDNN wins on this CPU. Returns the kernel in use."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears or not available():
        return "aten"
    weight = linears[0].weight
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
        return "aten"
    try:
        speedup = onednn_speedup(weight.dtype)
    except RuntimeError as exc:  # a build whose oneDNN lacks the op for this dtype
        log.info("oneDNN linear unavailable (%s); keeping nn.Linear", exc)
        return "aten"
    log.info("oneDNN packed linear measured at %.2fx nn.Linear in %s", speedup, weight.dtype)
    if speedup < min_speedup:
        return "aten"
    for module in list(model.modules()):
        # a plain MLP (fc1 then a pointwise activation): the activation runs as the matmul's post-op
        fc1, act = getattr(module, "fc1", None), getattr(module, "act", None)
        if isinstance(fc1, nn.Linear) and act in POST_OPS and not getattr(module, "gated", False):
            module.fc1, module.act = PackedLinear(fc1, act), identity
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear(child))
    return "onednn"
