"""An LRU of finished embeddings, bounded in bytes. Keys name everything that changes the vector: model, task
prefix, the input (text or token ids), dimensions and the long-input mode. Off when the budget is 0."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

ENTRY_OVERHEAD = 200  # bytes per entry for the key, the OrderedDict node and the array header, roughly


class EmbeddingCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[np.ndarray, int]] = OrderedDict()  # key -> (vector, tokens)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _size(key: Hashable, vector: np.ndarray) -> int:
        text = key[2] if isinstance(key, tuple) and len(key) > 2 else ""
        key_bytes = len(text) * 4 if isinstance(text, str) else len(text) * 8
        return vector.nbytes + key_bytes + ENTRY_OVERHEAD

    def get(self, key: Hashable) -> tuple[np.ndarray, int] | None:
        """(vector, the input's token count for usage), or None."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, vector: np.ndarray, tokens: int) -> None:
        size = self._size(key, vector)
        if not self.enabled or size > self.max_bytes or key in self._entries:
            return
        vector = vector.copy()
        vector.flags.writeable = False  # shared between responses: never mutated
        self._entries[key] = (vector, tokens)
        self.bytes += size
        while self.bytes > self.max_bytes:
            old_key, (old, _) = self._entries.popitem(last=False)
            self.bytes -= self._size(old_key, old)
