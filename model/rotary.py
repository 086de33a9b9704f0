"""Rotary position embeddings on packed batches, shared by every rotary architecture (NomicBert, ModernBERT).

- Positions restart at 0 for every sequence (`PackedBatch.positions`).
- GPT-NeoX halves (i, i + dim/2) by default, GPT-J pairs (2i, 2i+1) when `interleaved`; only the first `dim` channels
  of each head rotate (the rest pass through).
- cos/sin are computed in fp32 and cast to the activations' dtype, as transformers and nomic's reference do.
- Dynamic NTK (NomicBert, spec §4.3) when `ntk_factor` is set and a sequence is longer than `max_trained`:
  base' = base * (factor * L / max_trained - (factor - 1)) ** (dim / (dim - 2)), with L = **that sequence's own
  length**, so an embedding never depends on its batchmates or on earlier calls.
"""

from __future__ import annotations

import torch
from torch import nn

from model.packing import PackedBatch


class Rotary(nn.Module):
    """One rotary table (one base). Tables for the unscaled base are cached and grown on demand."""

    def __init__(
        self,
        dim: int,
        base: float,
        interleaved: bool = False,
        ntk_factor: float | None = None,
        max_trained: int | None = None,
    ):
        super().__init__()
        self.dim = dim
        self.base = float(base)
        self.interleaved = interleaved
        self.factor = ntk_factor
        self.max_trained = max_trained
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # fp32 (n, dim/2) cos, sin at the plain base

    def inv_freq(self, base: float, device: torch.device) -> torch.Tensor:
        return 1.0 / (base ** (torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim))

    def scaled_base(self, length: int) -> float:
        """The base a sequence of `length` tokens uses (spec §4.3, strict '>')."""
        if not self.factor or self.max_trained is None or length <= self.max_trained:
            return self.base
        f = self.factor
        return self.base * ((f * length / self.max_trained) - (f - 1)) ** (self.dim / (self.dim - 2))

    def _plain_table(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._table is None or self._table[0].shape[0] < n or self._table[0].device != device:
            size = max(n, 2 * (self._table[0].shape[0] if self._table is not None else 0), 512)
            freqs = torch.outer(
                torch.arange(size, device=device, dtype=torch.float32), self.inv_freq(self.base, device)
            )
            self._table = (freqs.cos(), freqs.sin())  # (size, dim/2)
        return self._table

    def cos_sin(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cos and sin, (T, dim/2) fp32, each at its own position and its own sequence's base."""
        bases = [self.scaled_base(n) for n in batch.length_list]
        device = batch.positions.device
        if all(b == self.base for b in bases):
            cos, sin = self._plain_table(batch.max_len, device)
            return cos[batch.positions], sin[batch.positions]
        inv = torch.stack([self.inv_freq(b, device) for b in bases])  # (B, dim/2)
        freqs = batch.positions.to(torch.float32)[:, None] * inv[batch.seq_index]  # (T, dim/2)
        return freqs.cos(), freqs.sin()

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (T, H, D); rotates the first `dim` channels of every head."""
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)  # (T, 1, dim/2)
        if self.interleaved:  # GPT-J pairs (2i, 2i+1)
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:  # GPT-NeoX halves (i, i + dim/2)
            x1, x2 = rot.chunk(2, dim=-1)
            rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot
