"""Cross-encoders: an encoder plus its family's classification head, scoring each packed (query, document) sequence.

The heads themselves live with their families (BERT / XLM-R: `bert.FirstTokenHead`; ModernBERT:
`modernbert.ModernBertHead`); they are `Float32Head`s, which the encoder keeps in float32 whatever dtype the encoder
runs in, so scores are computed in fp32 from the (fp32-pooled) hidden states.
"""

from __future__ import annotations

import torch
from torch import nn

from model.packing import PackedBatch


class Float32Head(nn.Module):
    """A head the encoder keeps in float32 (`Encoder` casts these back after moving the model to its dtype)."""


class SequenceScorer(nn.Module):
    """encoder(batch) -> (T, E) hidden states; head(hidden, batch) -> (B, num_labels) fp32 logits."""

    def __init__(self, encoder: nn.Module, head: Float32Head):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def flops_per_token(self, seq_len: int) -> float:
        return self.encoder.flops_per_token(seq_len)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.head(self.encoder(batch), batch)
