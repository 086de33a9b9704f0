"""Rotary position embeddings on packed batches, shared by every rotary architecture (NomicBert, ModernBERT).

- Positions restart at 0 for every sequence (`PackedBatch.positions`).
- GPT-NeoX halves (i, i + dim/2) by default, GPT-J pairs (2i, 2i+1) when `interleaved`; only the first `dim` channels
  of each head rotate (the rest pass through).
- cos/sin are computed in fp32 and cast to the activations' dtype, as transformers and nomic's reference do; the cast
  happens once per forward (`cos_sin(batch, dtype)`), not in every layer, and the plain-base tables are cached per
  dtype. Per-sequence NTK bases are computed for the whole batch at once from `batch.lengths` (no per-sequence loop).
- Dynamic NTK (NomicBert, spec §4.3) when `ntk_factor` is set and a sequence is longer than `max_trained`:
  base' = base * (factor * L / max_trained - (factor - 1)) ** (dim / (dim - 2)), with L = **that sequence's own
  length**, so an embedding never depends on its batchmates or on earlier calls.
"""

from __future__ import annotations

import torch
from torch import nn

from model.packing import PackedBatch


class Rotary(nn.Module):
    """One rotary table (one base). Tables for the unscaled base are cached (per dtype) and grown on demand."""

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
        # (n, dim/2) cos, sin at the plain base, per dtype: fp32 computed, the others cast from it once
        self._tables: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def inv_freq(self, base: float | torch.Tensor, device: torch.device) -> torch.Tensor:
        """1 / base^(2i/dim), fp32: (dim/2,) for a float base, (B, dim/2) for a (B,) tensor of per-sequence bases."""
        exponents = torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim
        if isinstance(base, torch.Tensor):
            return 1.0 / (base.to(torch.float32)[:, None] ** exponents)
        return 1.0 / (base**exponents)

    def scaled_base(self, length: int) -> float:
        """The base a sequence of `length` tokens uses (spec §4.3, strict '>')."""
        if not self.factor or self.max_trained is None or length <= self.max_trained:
            return self.base
        f = self.factor
        return self.base * ((f * length / self.max_trained) - (f - 1)) ** (self.dim / (self.dim - 2))

    def scaled_bases(self, lengths: torch.Tensor) -> torch.Tensor:
        """`scaled_base` of every sequence at once, (B,) int -> (B,) float64 (double, like the Python formula): a few
        kernels per forward, however many sequences."""
        assert self.factor and self.max_trained is not None
        f, length = self.factor, lengths.to(torch.float64)
        scaled = self.base * ((f * length / self.max_trained) - (f - 1)) ** (self.dim / (self.dim - 2))
        return torch.where(lengths > self.max_trained, scaled, self.base)

    def _plain_table(self, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        table = self._tables.get(torch.float32)
        if table is None or table[0].shape[0] < n or table[0].device != device:
            size = max(n, 2 * (table[0].shape[0] if table is not None else 0), 512)
            freqs = torch.outer(
                torch.arange(size, device=device, dtype=torch.float32), self.inv_freq(self.base, device)
            )
            self._tables = {torch.float32: self._layout(freqs.cos(), freqs.sin())}
        if dtype not in self._tables:
            cos, sin = self._tables[torch.float32]
            self._tables[dtype] = (cos.to(dtype), sin.to(dtype))
        return self._tables[dtype]

    def _layout(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, dim/2) cos, sin -> what `apply` multiplies by: for NeoX halves the full width, [cos, cos] and
        [-sin, sin] (n, dim), so a rotation is two products and a sum; GJ pairs keep the halves."""
        if self.interleaved:
            return cos, sin
        return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)

    def cos_sin(self, batch: PackedBatch, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cos and sin tables (T, dim) (interleaved: (T, dim/2)) in `dtype`, each at its own position and
        its own sequence's base (computed in fp32). Call it once per forward with the compute dtype: `apply` then
        casts nothing."""
        if not self.factor or self.max_trained is None or batch.max_len <= self.max_trained:  # all at the plain base
            cos, sin = self._plain_table(batch.max_len, batch.positions.device, dtype)
            return cos[batch.positions], sin[batch.positions]
        inv = self.inv_freq(self.scaled_bases(batch.lengths), batch.positions.device)  # (B, dim/2)
        freqs = batch.positions.to(torch.float32)[:, None] * inv[batch.seq_index]  # (T, dim/2)
        cos, sin = self._layout(freqs.cos(), freqs.sin())
        return cos.to(dtype), sin.to(dtype)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (T, ..., D), e.g. q and k together as (T, 2, H, D); rotates the first `dim` channels of every head.
        cos, sin: `cos_sin`'s tables, best in x's dtype."""
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        if cos.dtype != x.dtype:  # a caller that did not give cos_sin its compute dtype
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[-1],)
        cos, sin = cos.view(shape), sin.view(shape)  # (T, 1, ..., dim) views
        if self.interleaved:  # GPT-J pairs (2i, 2i+1)
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:  # GPT-NeoX halves (i, i + dim/2): [x1, x2] * [c, c] + [x2, x1] * [-s, s]
            x1, x2 = rot.chunk(2, dim=-1)
            rot = torch.addcmul(rot * cos, torch.cat((x2, x1), dim=-1), sin)
        return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot
