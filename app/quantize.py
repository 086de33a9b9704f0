"""Compressed embedding types, as Cohere defines them (and sentence-transformers' `quantize_embeddings` implements):

- `int8` / `uint8`: per-dimension scalar quantisation over calibrated ranges. Dimension d's range [lo_d, hi_d] is cut
  into 256 equal steps, `level = floor((x - lo_d) / step_d)` clipped to 0..255; `uint8` is the level, `int8` the level
  - 128. A value inside the range decodes to `lo_d + (level + 0.5) * step_d`, within half a step of the float.
- `binary` / `ubinary`: the sign bits (x > 0) packed 8 per byte, first dimension in the high bit (`np.packbits`);
  `ubinary` is the byte (0..255), `binary` the byte - 128 (-128..127). A vector of D dimensions gives ceil(D / 8).
- `base64`: the float32 bytes (little-endian), base64-encoded.
- `float`: the float vector.

Calibration (ours; Cohere does not publish theirs): the ranges are each dimension's minimum and maximum over the
model's own embeddings of `CALIBRATION_TEXTS` (256 fixed sentences, below) with the request's own task prefix,
`dimensions` and `normalize`: computed through the model's batcher the first time a key is asked for, then kept.
Values outside a range clip to the end levels.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
CALIBRATION_SEED = 20260101
_SUBJECTS = (
    "The city council", "A young engineer", "The research team", "Our support desk", "The old library",
    "A small bakery", "The national museum", "The football club", "A local farmer", "The hospital",
    "The airline", "A software company", "The orchestra", "The weather service", "A history teacher",
    "The river authority",
)
_VERBS = (
    "announced", "questioned", "published", "rejected", "described", "measured", "repaired", "celebrated",
    "reviewed", "explained", "planned", "compared",
)
_OBJECTS = (
    "a new budget for public transport", "the results of the latest survey", "how embeddings capture meaning",
    "the price of bread and milk", "a rare medieval manuscript", "the final score of the match",
    "the causes of the flood last spring", "a faster way to search documents", "the symptoms of a common cold",
    "delays on the morning flights", "the schedule for the summer concerts", "the forecast for heavy snow",
    "the treaty signed after the war", "water levels along the northern bank", "a bug in the payment system",
    "the recipe for a traditional soup",
)
_ENDINGS = (
    "", " on Monday", " in a short statement", " after months of work", " to a crowded room",
    " for the first time", " despite strong criticism", " in three languages",
)


def calibration_texts(count: int = 256, seed: int = CALIBRATION_SEED) -> list[str]:
    """Fixed, varied English sentences (seeded): what the int8/uint8 ranges are calibrated on."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < count:
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_ENDINGS)}."
        if text not in out:
            out.append(text)
    return out


CALIBRATION_TEXTS = calibration_texts()


Key = tuple[str, int | None, bool]  # (task prefix name, dimensions, normalize): what changes the vectors


class Quantizer:
    """One model's calibrated ranges, per `Key`. `embed(texts, key)` gives the model's finished float vectors of the
    calibration texts with that key's prefix, dimensions and normalisation; it runs once per key (through the model's
    batcher, on first use), and the ranges are kept."""

    def __init__(self, embed: Callable[[Sequence[str], Key], Awaitable[np.ndarray]]):
        self._embed = embed
        self._ranges: dict[Key, tuple[np.ndarray, np.ndarray]] = {}
        self._locks: dict[Key, asyncio.Lock] = {}

    async def ranges(self, key: Key) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._ranges:
            async with self._locks.setdefault(key, asyncio.Lock()):  # one calibration per key, however many ask
                if key not in self._ranges:
                    calib = np.asarray(await self._embed(CALIBRATION_TEXTS, key), dtype=np.float32)
                    self._ranges[key] = calib.min(axis=0), calib.max(axis=0)
        return self._ranges[key]

    async def levels(self, vectors: np.ndarray, key: Key) -> np.ndarray:
        """(N, D) float -> (N, D) levels 0..255 (uint8)."""
        lo, hi = await self.ranges(key)
        step = np.maximum(hi - lo, 1e-12) / 256.0
        return np.clip(np.floor((vectors - lo) / step), 0, 255).astype(np.uint8)


async def as_type(vectors: np.ndarray, kind: str, quantizer: Quantizer, key: Key) -> list:
    """(N, D) float32 vectors in one of `EMBEDDING_TYPES`, one entry per vector (lists of ints, floats or str)."""
    if kind == "float":
        return list(vectors)
    if kind == "base64":
        return [base64.b64encode(v.astype("<f4", copy=False).tobytes()).decode("ascii") for v in vectors]
    if kind in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)  # (N, ceil(D / 8)) uint8
        return (packed if kind == "ubinary" else packed.astype(np.int16) - 128).tolist()
    if kind in ("int8", "uint8"):
        levels = await quantizer.levels(vectors, key)
        return (levels if kind == "uint8" else levels.astype(np.int16) - 128).tolist()
    raise ValueError(f"unknown embedding type {kind!r}")
