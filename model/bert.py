"""BERT and DistilBERT encoders (all-MiniLM-L6-v2, bge-small/base, e5, ...), inference only, on packed batches.

Quirks worth knowing:
- Learned absolute positions (a table of `max_position_embeddings` rows): that table is a hard input limit.
- Post-norm blocks with GELU (exact erf unless the config says otherwise); biases everywhere.
- Token types: BERT adds `token_type_embeddings` (type 0 by default); DistilBERT has none (`type_vocab_size = 0`).
- q, k, v are separate in the checkpoints; `model/weights.py` fuses them into one `Wqkv` at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.activations import PLAIN as ACTIVATIONS
from model.errors import ConfigError
from model.packing import PackedBatch, packed_attention


@dataclass
class BertConfig:
    """transformers' BertConfig field names; DistilBERT's are mapped onto them in `model/config.py`."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    position_embedding_type: str = "absolute"

    def __post_init__(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act={self.hidden_act!r} is not supported (one of {sorted(ACTIVATIONS)})")
        if self.position_embedding_type != "absolute":
            raise ConfigError(f"position_embedding_type={self.position_embedding_type!r} is not supported (absolute)")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_limit(self) -> int:
        """The learned position table is a hard input limit."""
        return self.max_position_embeddings


class Layer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        E = config.hidden_size
        self.n_head, self.head_dim = config.num_attention_heads, config.head_dim
        self.act = ACTIVATIONS[config.hidden_act]
        self.Wqkv = nn.Linear(E, 3 * E)
        self.out_proj = nn.Linear(E, E)
        self.norm1 = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(E, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, E)
        self.norm2 = nn.LayerNorm(E, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        T = x.shape[0]
        q, k, v = self.Wqkv(x).view(T, 3, self.n_head, self.head_dim).unbind(1)  # (T, H, D) each
        attn = packed_attention(q, k, v, batch).reshape(T, -1)  # (T, E)
        x = self.norm1(x + self.out_proj(attn))
        return self.norm2(x + self.fc2(self.act(self.fc1(x))))


class Bert(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        E = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, E)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, E)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size > 0 else None
        self.emb_ln = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))

    def flops_per_token(self, seq_len: int) -> float:
        c = self.config
        linear = 2 * c.hidden_size * (4 * c.hidden_size + 2 * c.intermediate_size)
        return c.num_hidden_layers * (linear + 4 * seq_len * c.hidden_size)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Packed batch -> last hidden state, (T, E)."""
        x = self.word_embeddings(batch.input_ids) + self.position_embeddings(batch.positions)
        if self.token_type_embeddings is not None:
            if batch.token_type_ids is None:
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(batch.token_type_ids)
        x = self.emb_ln(x)
        for layer in self.layers:
            x = layer(x, batch)
        return x
