"""ModernBERT (answerdotai/ModernBERT-base, nomic-ai/modernbert-embed-base, gte-modernbert), inference only, on
packed token batches.

The architecture's quirks (transformers' `ModernBertModel`):
- Pre-norm blocks: x += Wo(attn(attn_norm(x))); x += mlp(mlp_norm(x)). Layer 0 has no attn_norm (the embedding norm
  just normed its input); a `final_norm` follows the last layer. No biases anywhere unless `norm_bias`,
  `attention_bias`, `mlp_bias` say so.
- GeGLU MLP: `Wi` rows are [input | gate] and the activation is on the *input* half: Wo(act(input) * gate).
  (NomicBert's SwiGLU is the other way round: its activation is on the second half.)
- Attention is global or local per layer, as `layer_types` says (`full_attention` / `sliding_attention`; the legacy
  form: global iff i % global_attn_every_n_layers == 0). A local layer's query i sees key j only if
  |i - j| <= local_attention // 2, inside its own sequence (`packed_attention(window=...)`).
- Rotary (NeoX halves, whole head dim, positions from 0) with two bases: `global_rope_theta` on global layers,
  `local_rope_theta` on local ones. No position table, no token types.
- Embeddings are `tok_embeddings` -> `norm`.
- The sequence-classification head (cross-encoders): pool the final hidden states (`classifier_pooling`: first token
  or mean), then dense -> act -> norm -> a linear to the logits.
`model/config_forms.py` maps both config forms (v5 `layer_types`/`rope_parameters`, legacy
`global_attn_every_n_layers`/`global_rope_theta`/`local_rope_theta`) onto `ModernBertConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.activations import PLAIN as ACTIVATIONS
from model.errors import ConfigError
from model.heads import Float32Head
from model.packing import PackedBatch, cls_pool, mean_pool, packed_attention
from model.rotary import Rotary

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass
class ModernBertConfig:
    """transformers' ModernBertConfig field names (the legacy form's `global_rope_theta` / `local_rope_theta`)."""

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    local_attention: int = 128
    layer_types: tuple[str, ...] | None = None  # None: every third layer global, from layer 0
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    classifier_pooling: str = "cls"
    classifier_activation: str = "gelu"
    classifier_bias: bool = False

    def __post_init__(self) -> None:
        for name in ("hidden_activation", "classifier_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not supported (one of {sorted(ACTIVATIONS)})")
        if self.hidden_size % self.num_attention_heads or self.head_dim % 2:
            raise ConfigError(
                f"hidden_size={self.hidden_size} must be num_attention_heads={self.num_attention_heads} x an even "
                "head dim"
            )
        if self.layer_types is None:
            self.layer_types = tuple(LAYER_TYPES[bool(i % 3)] for i in range(self.num_hidden_layers))
        self.layer_types = tuple(self.layer_types)
        if len(self.layer_types) != self.num_hidden_layers or any(t not in LAYER_TYPES for t in self.layer_types):
            raise ConfigError(
                f"layer_types={list(self.layer_types)} must name {self.num_hidden_layers} layers, each one of "
                f"{list(LAYER_TYPES)}"
            )
        if self.local_attention < 0:
            raise ConfigError(f"local_attention={self.local_attention} must be >= 0")
        if self.classifier_pooling not in ("cls", "mean"):
            raise ConfigError(f"classifier_pooling={self.classifier_pooling!r} is not supported (cls or mean)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def window(self) -> int:
        """How far a local layer's query may look either way."""
        return self.local_attention // 2

    @property
    def position_limit(self) -> None:
        return None  # rotary: no position table


def layer_norm(config: ModernBertConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)


class Attention(nn.Module):
    def __init__(self, config: ModernBertConfig, local: bool):
        super().__init__()
        E = config.hidden_size
        self.n_head, self.head_dim = config.num_attention_heads, config.head_dim
        self.window = config.window if local else None
        self.Wqkv = nn.Linear(E, 3 * E, bias=config.attention_bias)  # rows [q | k | v], heads inside each
        self.Wo = nn.Linear(E, E, bias=config.attention_bias)

    def forward(self, x: torch.Tensor, batch: PackedBatch, rotary: Rotary, cos_sin) -> torch.Tensor:
        T = x.shape[0]
        qkv = self.Wqkv(x).view(T, 3, self.n_head, self.head_dim)  # (T, 3, H, D)
        q, k = rotary.apply(qkv[:, :2], *cos_sin).unbind(1)  # q and k rotated in one pass, (T, H, D) each
        v = qkv[:, 2]
        out = packed_attention(q, k, v, batch, window=self.window)  # (T, H, D)
        return self.Wo(out.reshape(T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.act = ACTIVATIONS[config.hidden_activation]
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)  # [input; gate]
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, gate = self.Wi(x).chunk(2, dim=-1)  # (T, I) each
        return self.Wo(self.act(inp) * gate)


class Layer(nn.Module):
    def __init__(self, config: ModernBertConfig, index: int):
        super().__init__()
        self.local = config.layer_types[index] == "sliding_attention"
        self.attn_norm = layer_norm(config) if index > 0 else nn.Identity()
        self.attn = Attention(config, self.local)
        self.mlp_norm = layer_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, batch: PackedBatch, rotary: Rotary, cos_sin) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), batch, rotary, cos_sin)
        return x + self.mlp(self.mlp_norm(x))


class Embeddings(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = layer_norm(config)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.norm(self.tok_embeddings(batch.input_ids))  # (T, E)


class ModernBert(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = layer_norm(config)
        self.rotary = {  # by layer locality; tables only, no parameters
            False: Rotary(config.head_dim, config.global_rope_theta),
            True: Rotary(config.head_dim, config.local_rope_theta),
        }

    def flops_per_token(self, seq_len: int) -> float:
        """Matmul FLOPs per token at a given sequence length (local layers counted at their window)."""
        c = self.config
        linear = 2 * c.hidden_size * (4 * c.hidden_size + 3 * c.intermediate_size)
        keys = [min(seq_len, 2 * c.window + 1) if layer.local else seq_len for layer in self.layers]
        return sum(linear + 4 * n * c.hidden_size for n in keys)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Packed batch -> last hidden state after the final norm, (T, E)."""
        x = self.embeddings(batch)
        locals_ = {layer.local for layer in self.layers}
        cos_sin = {local: self.rotary[local].cos_sin(batch, x.dtype) for local in locals_}  # once per forward
        for layer in self.layers:
            x = layer(x, batch, self.rotary[layer.local], cos_sin[layer.local])
        return self.final_norm(x)


class ModernBertHead(Float32Head):
    """ModernBertForSequenceClassification's head: pool -> dense -> act -> norm -> linear, in fp32."""

    def __init__(self, config: ModernBertConfig, num_labels: int = 1):
        super().__init__()
        self.pool = mean_pool if config.classifier_pooling == "mean" else cls_pool
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.classifier_bias)
        self.act = ACTIVATIONS[config.classifier_activation]
        self.norm = layer_norm(config)
        self.out = nn.Linear(config.hidden_size, num_labels)  # transformers' `classifier`

    def forward(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.out(self.norm(self.act(self.dense(self.pool(hidden, batch)))))  # (B, num_labels)
