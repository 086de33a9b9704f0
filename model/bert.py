"""BERT, DistilBERT and XLM-RoBERTa encoders (all-MiniLM-L6-v2, bge-small/base, e5, multilingual-e5, bge-m3, ...),
inference only, on packed batches; and their sequence-classification head (cross-encoders: ms-marco-MiniLM,
bge-reranker).

Quirks worth knowing:
- Learned absolute positions (a table of `max_position_embeddings` rows): that table is a hard input limit.
- XLM-R (RoBERTa) numbers positions from `padding_idx + 1`, counting only non-pad tokens (a pad token sits at
  `padding_idx`), so its table holds `padding_idx + 1` fewer usable positions (514 rows -> 512 tokens).
- Post-norm blocks with GELU (exact erf unless the config says otherwise); biases everywhere.
- Token types: BERT adds `token_type_embeddings` (type 0 by default); DistilBERT has none (`type_vocab_size = 0`);
  XLM-R has one type (`type_vocab_size = 1`).
- q, k, v are separate in the checkpoints; `model/weights.py` fuses them into one `Wqkv` at load.
- Classification head (BERT's pooler + classifier, RoBERTa's classification head: the same math): the first token's
  hidden state -> dense -> tanh -> linear to the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.activations import PLAIN as ACTIVATIONS
from model.errors import ConfigError
from model.heads import Float32Head
from model.packing import PackedBatch, first_token_attention, packed_attention


@dataclass
class BertConfig:
    """transformers' BertConfig field names; DistilBERT's and XLM-R's are mapped onto them (`model/config_forms.py`)."""

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
    padding_idx: int | None = None  # XLM-R / RoBERTa positions (set from pad_token_id); None: plain 0, 1, 2, ...

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
        """The learned position table is a hard input limit (less the rows RoBERTa numbering skips)."""
        return self.max_position_embeddings - (0 if self.padding_idx is None else self.padding_idx + 1)


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

    def forward(self, x: torch.Tensor, batch: PackedBatch, first_tokens: bool = False) -> torch.Tensor:
        """(T, E) -> (T, E); with `first_tokens`, only each sequence's first token goes on past attention: (B, E)."""
        T = x.shape[0]
        q, k, v = self.Wqkv(x).view(T, 3, self.n_head, self.head_dim).unbind(1)  # (T, H, D) each
        if first_tokens:
            first = batch.cu_seqlens[:-1].long()
            x, attn = x[first], first_token_attention(q[first], k, v, batch).reshape(len(first), -1)  # (B, E)
        else:
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
        self.pad = config.padding_idx
        self.positions = plain_positions if self.pad is None else self.roberta_positions

    def roberta_positions(self, batch: PackedBatch) -> torch.Tensor:
        """transformers' `create_position_ids_from_input_ids`, per packed sequence: padding_idx + the running count of
        non-pad tokens, and padding_idx itself on a pad token. (T,)"""
        real = (batch.input_ids != self.pad).long()  # (T,)
        running = torch.cumsum(real, 0)
        starts = batch.cu_seqlens[:-1].long()
        before = running[starts] - real[starts]  # (B,) real tokens of the earlier sequences
        return (running - before[batch.seq_index]) * real + self.pad

    def flops_per_token(self, seq_len: int) -> float:
        c = self.config
        linear = 2 * c.hidden_size * (4 * c.hidden_size + 2 * c.intermediate_size)
        return c.num_hidden_layers * (linear + 4 * seq_len * c.hidden_size)

    def forward(self, batch: PackedBatch, first_tokens: bool = False) -> torch.Tensor:
        """Packed batch -> last hidden state, (T, E); with `first_tokens` only each sequence's first token's, (B, E):
        for a head that reads nothing else, the last layer's out-projection and MLP then run on B rows, not T (~1/7
        of a 6-layer cross-encoder's work at ~100-token pairs)."""
        x = self.word_embeddings(batch.input_ids) + self.position_embeddings(self.positions(batch))
        if self.token_type_embeddings is not None:
            if batch.token_type_ids is None:
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(batch.token_type_ids)
        x = self.emb_ln(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, batch, first_tokens=first_tokens and i == len(self.layers) - 1)
        return x


def plain_positions(batch: PackedBatch) -> torch.Tensor:
    return batch.positions


class FirstTokenHead(Float32Head):
    """BertForSequenceClassification's pooler + classifier, XLMRobertaForSequenceClassification's classification
    head: first token -> dense -> tanh -> linear, in fp32. It reads the first tokens' states only (B, E)."""

    first_tokens_only = True

    def __init__(self, config: BertConfig, num_labels: int = 1):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out = nn.Linear(config.hidden_size, num_labels)

    def forward(self, first: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.out(torch.tanh(self.dense(first.float())))  # (B, num_labels)
