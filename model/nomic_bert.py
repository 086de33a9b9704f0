"""NomicBert (nomic-embed-text v1 / v1.5), inference only, on packed token batches.

The architecture's quirks, all from ../shared/NOMIC_BERT_SPEC.md (section numbers there):
- No position table: rotary on q and k (§4.1, `model/rotary.py`), GPT-NeoX style halves unless
  `rotary_emb_interleaved`, over the first `head_dim * rotary_emb_fraction` channels. Positions restart at 0 for every
  sequence.
- Dynamic NTK (§4.3) when `rotary_scaling_factor` is set and a sequence is longer than `max_trained_positions`, from
  **that sequence's own length**. The reference uses the padded batch length and caches across calls (§4.4); we do
  not, so an embedding never depends on its batchmates or on earlier calls.
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
from model.rotary import Rotary


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
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def position_limit(self) -> int | None:
        """A learned position table is a hard input limit; rotary has none."""
        return self.n_positions if self.rotary_emb_fraction <= 0 else None

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_emb_fraction)


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
        self.rotary = (
            Rotary(
                config.rotary_dim,
                config.rotary_emb_base,
                interleaved=config.rotary_emb_interleaved,
                ntk_factor=config.rotary_scaling_factor,
                max_trained=config.max_trained_positions,
            )
            if config.rotary_emb_fraction > 0
            else None
        )

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
