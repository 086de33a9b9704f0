"""From pooled vectors to the embeddings users get: L2 normalisation and Matryoshka truncation.

nomic-embed-text-v1.5's Matryoshka recipe (model card; spec §8), in this order: layer_norm over the full width (no
affine, eps 1e-5, the torch default) -> keep the first `dimensions` -> L2-normalise. Other models truncate then
re-normalise (what OpenAI's `dimensions` does). Mean/CLS pooling itself runs on the device, in `model/packing.py`.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def finish(pooled: np.ndarray, dimensions: int | None, matryoshka_layer_norm: bool) -> np.ndarray:
    """(N, E) float32 pooled vectors -> (N, dimensions or E) float32 unit vectors."""
    x = pooled.astype(np.float32, copy=False)
    if dimensions is not None and dimensions < x.shape[-1]:
        if matryoshka_layer_norm:
            mean = x.mean(axis=-1, keepdims=True, dtype=np.float64)
            var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
            x = ((x - mean) / np.sqrt(var + 1e-5)).astype(np.float32)
        x = x[:, :dimensions]
    return l2_normalize(x).astype(np.float32, copy=False)
