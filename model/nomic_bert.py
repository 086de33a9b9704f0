"""NomicBert (nomic-embed-text v1 / v1.5), inference only, on packed token batches.

The architecture's quirks, all from ../shared/NOMIC_BERT_SPEC.md (section numbers there):
- No position table: rotary on q and k (§4.1), GPT-NeoX style halves unless `rotary_emb_interleaved`, over the first
  `head_dim * rotary_emb_fraction` channels. Positions restart at 0 for every sequence.
- Dynamic NTK (§4.3) when `rotary_scaling_factor` is set and a sequence is longer than `max_trained_positions`:
  base' = base * (factor * L / max_trained - (factor - 1)) ** (rot / (rot - 2)), with L = **that sequence's own
  length**. The reference uses the padded batch length and caches across calls (§4.4); we do not, so an embedding never
  depends on its batchmates or on earlier calls.
- Post-norm blocks by default: x = norm1(x + attn(x)); x = norm2(x + mlp(x)). `prenorm` is supported too.
- SwiGLU MLP: fc2(fc11(x) * silu(fc12(x))) -- fc12 is the gate (§5). fc11|fc12 are fused into one GEMM at load
  (`mlp.fc1` = cat[fc11, fc12]).
- Token-type embeddings are added (type 0 unless given); `emb_ln` follows the embeddings; no final norm, no pooler.
- Biases on Wqkv *and* out_proj exist iff `qkv_proj_bias`.
Matryoshka (layer_norm -> truncate -> L2) lives in `model/pooling.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.activations import GATED as GATED_ACTIVATIONS
from model.activations import PLAIN as PLAIN_ACTIVATIONS
from model.errors import ConfigError
from model.packing import PackedBatch, packed_attention


@dataclass
class NomicBertConfig:
    """The legacy (GPT2Config-based) field names; `model/config.py` maps the transformers-v5 form onto them."""

    vocab_size: int = 50257
    pad_vocab_size_multiple: int = 1
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    n_positions: int | None = None  # informational input limit; unused by the forward when rotary
    max_trained_positions: int = 2048
    rotary_scaling_factor: float | None = None
    rotary_emb_fraction: float = 0.0
    rotary_emb_base: float = 10000.0
    rotary_emb_interleaved: bool = False
    qkv_proj_bias: bool = True
    mlp_fc1_bias: bool = True
    mlp_fc2_bias: bool = True
    prenorm: bool = False
    layer_norm_epsilon: float = 1e-5
    type_vocab_size: int = 2

    def __post_init__(self) -> None:
        if self.activation_function not in GATED_ACTIVATIONS and self.activation_function not in PLAIN_ACTIVATIONS:
            known = sorted([*GATED_ACTIVATIONS, *PLAIN_ACTIVATIONS])
            raise ConfigError(f"activation_function={self.activation_function!r} is not supported (one of {known})")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        if not 0.0 <= self.rotary_emb_fraction <= 1.0:
            raise ConfigError(f"rotary_emb_fraction={self.rotary_emb_fraction} must be in [0, 1]")
        if self.rotary_emb_fraction > 0 and (self.rotary_dim % 2 or self.rotary_dim < 4):
            raise ConfigError(f"rotary_emb_fraction={self.rotary_emb_fraction} gives an odd or tiny rotary dim")
        if self.rotary_emb_fraction <= 0 and not self.n_positions:
            raise ConfigError("rotary_emb_fraction=0 (learned positions) needs n_positions")
        if self.rotary_scaling_factor is not None and self.rotary_scaling_factor < 1:
            raise ConfigError(f"rotary_scaling_factor={self.rotary_scaling_factor} must be >= 1 (dynamic NTK)")
        # The reference rounds the vocabulary up (and mutates the config); the checkpoint has that many rows.
        m = self.pad_vocab_size_multiple
        self.vocab_size = (self.vocab_size + m - 1) // m * m
        if self.gated:  # gated MLPs default to 8/3 width and always round up to a multiple of 256 (spec §1)
            inner = self.n_inner if self.n_inner is not None else int(8 * self.n_embd / 3)
            self.n_inner = (inner + 255) // 256 * 256
        elif self.n_inner is None:
            self.n_inner = 4 * self.n_embd

    @property
    def gated(self) -> bool:
        return self.activation_function in GATED_ACTIVATIONS

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_emb_fraction)


class Rotary(nn.Module):
    """Rotary position embedding with per-sequence dynamic NTK. The tables are computed in fp32 and cast to the compute
    dtype once per forward (`cos_sin(batch, dtype)`), not in every layer; tables for the unscaled base are cached."""

    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.dim = config.rotary_dim
        self.base = float(config.rotary_emb_base)
        self.interleaved = config.rotary_emb_interleaved
        self.factor = config.rotary_scaling_factor
        self.max_trained = config.max_trained_positions
        # (n, dim/2) cos, sin at the plain base, per dtype: fp32 computed, the others cast from it
        self._tables: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def inv_freq(self, base: float | torch.Tensor, device: torch.device) -> torch.Tensor:
        """1 / base^(2i/dim), fp32: (dim/2,) for a float base, (B, dim/2) for a (B,) tensor of per-sequence bases."""
        exponents = torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim
        if isinstance(base, torch.Tensor):
            return 1.0 / (base.to(torch.float32)[:, None] ** exponents)
        return 1.0 / (base**exponents)

    def scaled_base(self, length: int) -> float:
        """The base a sequence of `length` tokens uses (spec §4.3, strict '>')."""
        if not self.factor or length <= self.max_trained:
            return self.base
        f = self.factor
        return self.base * ((f * length / self.max_trained) - (f - 1)) ** (self.dim / (self.dim - 2))

    def scaled_bases(self, lengths: torch.Tensor) -> torch.Tensor:
        """`scaled_base` of every sequence at once, in float64 like the Python float formula: (B,) int -> (B,)."""
        assert self.factor
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
            self._tables = {torch.float32: (freqs.cos(), freqs.sin())}  # (size, dim/2)
        if dtype not in self._tables:
            cos, sin = self._tables[torch.float32]
            self._tables[dtype] = (cos.to(dtype), sin.to(dtype))
        return self._tables[dtype]

    def cos_sin(self, batch: PackedBatch, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cos and sin, (T, dim/2) in `dtype`, each at its own position and its own sequence's base
        (computed in fp32). Call once per forward with the compute dtype: `apply` then casts nothing."""
        if not self.factor or batch.max_len <= self.max_trained:  # every sequence at the plain base
            cos, sin = self._plain_table(batch.max_len, batch.positions.device, dtype)
            return cos[batch.positions], sin[batch.positions]
        inv = self.inv_freq(self.scaled_bases(batch.lengths), batch.positions.device)  # (B, dim/2)
        freqs = batch.positions.to(torch.float32)[:, None] * inv[batch.seq_index]  # (T, dim/2)
        return freqs.cos().to(dtype), freqs.sin().to(dtype)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (T, H, D); rotates the first `dim` channels of every head. cos, sin: (T, dim/2), best in x's dtype."""
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        if cos.dtype != x.dtype:  # a caller that did not pass its compute dtype to cos_sin
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, dim/2) views
        if self.interleaved:  # GPT-J pairs (2i, 2i+1)
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:  # GPT-NeoX halves (i, i + dim/2)
            x1, x2 = rot.chunk(2, dim=-1)
            rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot


class Attention(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.Wqkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_proj_bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.qkv_proj_bias)

    def forward(self, x: torch.Tensor, batch: PackedBatch, rotary: Rotary | None, cos_sin) -> torch.Tensor:
        T = x.shape[0]
        qkv = self.Wqkv(x).view(T, 3, self.n_head, self.head_dim)  # (T, 3, H, D): rows are [Q; K; V], heads inside
        q, k, v = qkv.unbind(1)  # (T, H, D) each
        if rotary is not None:
            q, k = rotary.apply(q, *cos_sin), rotary.apply(k, *cos_sin)
        out = packed_attention(q, k, v, batch)  # (T, H, D)
        return self.out_proj(out.reshape(T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.gated = config.gated
        if self.gated:
            self.act = GATED_ACTIVATIONS[config.activation_function]
            self.fc1 = nn.Linear(
                config.n_embd, 2 * config.n_inner, bias=config.mlp_fc1_bias
            )  # [fc11 (up); fc12 (gate)]
        else:
            self.act = PLAIN_ACTIVATIONS[config.activation_function]
            self.fc1 = nn.Linear(config.n_embd, config.n_inner, bias=config.mlp_fc1_bias)
        self.fc2 = nn.Linear(config.n_inner, config.n_embd, bias=config.mlp_fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.gated:
            up, gate = h.chunk(2, dim=-1)
            h = up * self.act(gate)
        else:
            h = self.act(h)
        return self.fc2(h)


class Block(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.prenorm = config.prenorm
        self.attn = Attention(config)
        self.mlp = MLP(config)
        self.norm1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.norm2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, batch: PackedBatch, rotary: Rotary | None, cos_sin) -> torch.Tensor:
        if self.prenorm:  # the block's input is the un-normed residual stream
            x = x + self.attn(self.norm1(x), batch, rotary, cos_sin)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, batch, rotary, cos_sin))
        return self.norm2(x + self.mlp(x))


class Embeddings(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.n_embd) if config.type_vocab_size > 0 else None
        )
        self.position_embeddings = (
            nn.Embedding(config.n_positions, config.n_embd) if config.rotary_emb_fraction <= 0 else None
        )

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word_embeddings(batch.input_ids)  # (T, E)
        if self.token_type_embeddings is not None:
            if batch.token_type_ids is None:  # type 0 for every token, added all the same
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(batch.token_type_ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(batch.positions)
        return x


class Encoder(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))


class NomicBert(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.emb_ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.encoder = Encoder(config)
        self.rotary = Rotary(config) if config.rotary_emb_fraction > 0 else None

    @property
    def max_positions(self) -> int | None:
        """Hard limit of the architecture (a learned position table), or None when rotary has none."""
        return self.config.n_positions if self.rotary is None else None

    def flops_per_token(self, seq_len: int) -> float:
        """Matmul FLOPs per token at a given sequence length (for utilisation figures)."""
        c = self.config
        mlp_in = (2 if c.gated else 1) * c.n_inner
        linear = 2 * c.n_embd * (3 * c.n_embd + c.n_embd + mlp_in + c.n_inner)
        attention = 4 * seq_len * c.n_embd
        return c.n_layer * (linear + attention)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Packed batch -> last hidden state, (T, E)."""
        x = self.emb_ln(self.embeddings(batch))
        cos_sin = self.rotary.cos_sin(batch, x.dtype) if self.rotary is not None else None  # once per forward
        for layer in self.encoder.layers:
            x = layer(x, batch, self.rotary, cos_sin)
        return x
