"""From hidden states to the embeddings users get: the sentence-transformers module chain after the Transformer
(Pooling, Dense, Normalize, as the folder's `modules.json` declares them), then Matryoshka truncation and L2.

- Pooling runs on the device on packed tokens, in float32: `cls`, `mean`, `max`, `mean_sqrt_len_tokens`,
  `weightedmean` (weights 1, 2, ... by position), `lasttoken`; several modes concatenate in the order given
  (sentence-transformers'). Mean and CLS are `packing.mean_pool` / `cls_pool`.
- Dense (`2_Dense/`): linear + its activation (+ the residual when `use_residual`), in float32.
- A trailing Normalize is left to `finish`, which always L2-normalises (so a chunked input's windows are averaged
  before it); a Normalize with modules after it runs in place.
- nomic-embed-text-v1.5's Matryoshka recipe (model card; spec §8), in this order: layer_norm over the full width (no
  affine, eps 1e-5, the torch default) -> keep the first `dimensions` -> L2-normalise. Other models truncate then
  re-normalise (what OpenAI's `dimensions` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.packing import PackedBatch, cls_pool, mean_pool


def max_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    index = batch.seq_index[:, None].expand(-1, hidden.shape[-1])  # (T, E)
    out = hidden.new_full((batch.batch_size, hidden.shape[-1]), float("-inf"), dtype=torch.float32)
    return out.scatter_reduce_(0, index, hidden.float(), reduce="amax")


def mean_sqrt_len_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    return mean_pool(hidden, batch) * batch.lengths[:, None].to(torch.float32).sqrt()  # sum / sqrt(n)


def weighted_mean_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    weights = (batch.positions + 1).to(torch.float32)[:, None]  # (T, 1): 1, 2, ... within each sequence
    sums = hidden.new_zeros(batch.batch_size, hidden.shape[-1], dtype=torch.float32)
    sums.index_add_(0, batch.seq_index, hidden.float() * weights)
    n = batch.lengths.to(torch.float32)[:, None]
    return sums / (n * (n + 1) / 2)


def last_token_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    return hidden[batch.cu_seqlens[1:].long() - 1].float()


POOLING_MODES: dict[str, Callable[[torch.Tensor, PackedBatch], torch.Tensor]] = {
    "cls": cls_pool,
    "max": max_pool,
    "mean": mean_pool,
    "mean_sqrt_len_tokens": mean_sqrt_len_pool,
    "weightedmean": weighted_mean_pool,
    "lasttoken": last_token_pool,
}


class Pooling(nn.Module):
    """(T, E) hidden states -> (B, len(modes) * E) float32."""

    def __init__(self, modes: Sequence[str]):
        super().__init__()
        self.modes = tuple(modes)

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        parts = [POOLING_MODES[m](hidden, batch) for m in self.modes]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class Dense(nn.Module):
    """sentence-transformers' Dense: activation(linear(x)) (+ x, or + residual(x), with use_residual)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, activation: Callable, residual: bool):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation
        self.use_residual = residual
        if residual and in_features != out_features:
            self.residual = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1)


class Chain(nn.Module):
    """Pooling, then the sentence-level modules in order: (T, E) hidden -> (B, width) float32, not yet normalised."""

    def __init__(self, pooling: Pooling, after: Sequence[nn.Module]):
        super().__init__()
        self.pooling = pooling
        self.after = nn.ModuleList(after)

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.after_pooling(self.pooling(hidden, batch))

    def after_pooling(self, pooled: torch.Tensor) -> torch.Tensor:
        """The modules after pooling, on (B, width) float32 pooled vectors (a CLS pooling's are the first tokens'
        states, which the encoder can hand over directly)."""
        x = pooled
        for module in self.after:
            x = module(x)
        return x

    @property
    def cls_only(self) -> bool:
        return self.pooling.modes == ("cls",)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def finish(
    pooled: np.ndarray, dimensions: int | None, matryoshka_layer_norm: bool, normalize: bool = True
) -> np.ndarray:
    """(N, E) float32 pooled vectors -> (N, dimensions or E) float32 unit vectors (raw ones when not `normalize`:
    the Matryoshka recipe's layer_norm and truncation still apply)."""
    x = pooled.astype(np.float32, copy=False)
    if dimensions is not None and dimensions < x.shape[-1]:
        if matryoshka_layer_norm:
            mean = x.mean(axis=-1, keepdims=True, dtype=np.float64)
            var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
            x = ((x - mean) / np.sqrt(var + 1e-5)).astype(np.float32)
        x = x[:, :dimensions]
    return (l2_normalize(x) if normalize else x).astype(np.float32, copy=False)
