"""The folder's `tokenizer.json` through `tokenizers`, with padding and truncation switched off: lengths are exact,
and truncation happens only when the caller asks (keeping the trailing special tokens, e.g. [SEP]).

Pairs (cross-encoders) use the tokenizer's own pair template (`[CLS] q [SEP] d [SEP]` with token types 0/1 for BERT,
`<s> q </s></s> d </s>` for XLM-R) and, when asked, its own `longest_first` truncation: what transformers' fast
tokenizers, and so sentence-transformers' CrossEncoder, run.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from model.errors import InputError, ModelError


@dataclass
class Pair:
    """A (query, document) pair as one sequence: the pair template's ids and token types."""

    ids: list[int]
    token_types: list[int]

    def __len__(self) -> int:
        return len(self.ids)


class Tokenizer:
    def __init__(self, path: Path):
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ModelError(f"cannot read {path.name}: {str(exc).splitlines()[0]}") from None
        self._tok.no_padding()
        self._tok.no_truncation()
        self._json = self._tok.to_str()
        self._truncating: dict[tuple[int, bool], HFTokenizer] = {}  # (limit, left) -> a truncating copy
        self._lock = threading.Lock()
        probe = self._tok.encode("a")
        mask = probe.special_tokens_mask
        self.head_specials = next((i for i, m in enumerate(mask) if not m), len(mask))
        self.tail_specials = next((i for i, m in enumerate(reversed(mask)) if not m), 0)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_folder(cls, folder: Path) -> Tokenizer | None:
        path = folder / "tokenizer.json"
        return cls(path) if path.is_file() else None

    def encode(self, texts: Sequence[str], prefix: str = "") -> list[list[int]]:
        """Token ids with the model's special tokens, untruncated. Batch encoding runs in parallel in Rust."""
        encodings = self._tok.encode_batch([prefix + t for t in texts] if prefix else list(texts))
        return [e.ids for e in encodings]

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tok.id_to_token(i) or "" for i in ids]

    def truncate(self, ids: Sequence[int], limit: int, left: bool = False) -> list[int]:
        """Cut to `limit` tokens, keeping the special tokens (as the tokenizer's own truncation would): from the end
        of the text, or with `left` from its start (what TEI's truncation_direction Left does)."""
        if len(ids) <= limit:
            return list(ids)
        if left:
            head = self.head_specials if limit > self.head_specials + self.tail_specials else 0
            tail = self.tail_specials if head else 0
            body = list(ids[head : len(ids) - tail])
            return list(ids[:head]) + body[len(body) - (limit - head - tail) :] + (list(ids[-tail:]) if tail else [])
        tail = self.tail_specials if limit > self.tail_specials else 0
        return list(ids[: limit - tail]) + (list(ids[-tail:]) if tail else [])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def detailed(
        self, text: str, add_special_tokens: bool = True
    ) -> list[tuple[int, str, bool, int | None, int | None]]:
        """(id, text, special, start, stop) per token, as TEI's /tokenize gives them: a special token's own string
        and no offsets; any other token's piece of `text` and its UTF-8 byte offsets in `text`."""
        enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
        byte_at = [0]
        for ch in text:
            byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
        out: list[tuple[int, str, bool, int | None, int | None]] = []
        for id_, token, special, (start, stop) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets):
            if special:
                out.append((id_, token, True, None, None))
            else:
                out.append((id_, text[start:stop], False, byte_at[start], byte_at[stop]))
        return out

    def windows(self, ids: Sequence[int], limit: int) -> list[list[int]]:
        """Split a long input into windows of at most `limit` tokens, each wrapped in the special tokens."""
        head, tail = list(ids[: self.head_specials]), list(ids[len(ids) - self.tail_specials :])
        body = list(ids[self.head_specials : len(ids) - self.tail_specials])
        step = max(1, limit - len(head) - len(tail))
        return [head + body[i : i + step] + tail for i in range(0, len(body), step)] or [list(ids)]

    def has_pair_template(self) -> bool:
        """A pair comes out with special tokens (separators): the post-processor knows pairs."""
        return any(self._tok.encode("query", "document").special_tokens_mask)

    def pairs(
        self, query: str, documents: Sequence[str], truncate_to: int | None = None, left: bool = False
    ) -> list[Pair]:
        """(query, document) pairs through the pair template; with `truncate_to`, cut longest-first to that many
        tokens (the longer text of the pair loses a token at a time, from its end; from its start with `left`)."""
        tok = self._tok if truncate_to is None else self._truncating_copy(truncate_to, left)
        try:
            encodings = tok.encode_batch([(query, d) for d in documents])
        except Exception as exc:  # e.g. a limit shorter than the template's special tokens
            raise InputError(f"cannot tokenize the pairs: {str(exc).splitlines()[0]}") from None
        return [Pair(e.ids, e.type_ids) for e in encodings]

    def _truncating_copy(self, limit: int, left: bool) -> HFTokenizer:
        """A separate tokenizer per limit and side: truncation is a setting of the Rust object, shared by every
        thread."""
        with self._lock:
            if (limit, left) not in self._truncating:
                tok = HFTokenizer.from_str(self._json)
                tok.enable_truncation(limit, strategy="longest_first", direction="left" if left else "right")
                self._truncating[(limit, left)] = tok
            return self._truncating[(limit, left)]
