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
    """A head the encoder keeps in float32 (`Encoder` casts these back after moving the model to its dtype).
    `first_tokens_only`: it reads each sequence's first token and nothing else, so its encoder (which must then take
    `first_tokens=True`) may hand it just those states, (B, E), instead of all of them, (T, E)."""

    first_tokens_only = False


class SequenceScorer(nn.Module):
    """encoder(batch) -> (T, E) hidden states; head(hidden, batch) -> (B, num_labels) fp32 logits."""

    def __init__(self, encoder: nn.Module, head: Float32Head):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def flops_per_token(self, seq_len: int) -> float:
        return self.encoder.flops_per_token(seq_len)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        if self.head.first_tokens_only:
            return self.head(self.encoder(batch, first_tokens=True), batch)
        return self.head(self.encoder(batch), batch)
