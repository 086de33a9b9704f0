"""The folder's `tokenizer.json` through `tokenizers`, with padding and truncation switched off: lengths are exact,
and truncation happens only when the caller asks (keeping the trailing special tokens, e.g. [SEP]).

Memory is bounded by the text handed to one `tokenizers` call, not by the input: an Encoding holds offsets, token
strings and alignments, ~160 bytes per character of text (a 2 M-character text peaks at +325 MB whole, +26 MB in
64 K-character slices; AMD EPYC Zen 4). So `encode` feeds `tokenizers` at most SLICE_CHARS characters per call: short
texts in groups, a longer text in slices cut just before a whitespace character, whose ids are the same as the whole
text's (the pre-tokenizers of BERT, XLM-R and ModernBERT all split there; tests/model/test_tokenizer.py checks).

Pairs (cross-encoders) use the tokenizer's own pair template (`[CLS] q [SEP] d [SEP]` with token types 0/1 for BERT,
`<s> q </s></s> d </s>` for XLM-R) and, when asked, its own `longest_first` truncation: what transformers' fast
tokenizers, and so sentence-transformers' CrossEncoder, run (and TEI, from either side). A document can first be cut
to a number of its own tokens (Cohere's max_tokens_per_doc): the texts are then encoded apart and joined by the same
post-processor, which gives the pair's ids exactly (each text of a pair is pre-tokenised on its own).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
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


SLICE_CHARS = 65_536  # characters of text per `tokenizers` call (~10 MB of Encodings); see the module docstring


class Tokenizer:
    def __init__(self, path: Path):
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ModelError(f"cannot read {path.name}: {str(exc).splitlines()[0]}") from None
        self._tok.no_padding()
        self._tok.no_truncation()
        self._json = self._tok.to_str()
        self._truncating: dict[bool, HFTokenizer] = {}  # left -> a copy that truncates pairs from that side
        self._lock = threading.Lock()  # held while a truncating copy is set to a limit and used
        probe = self._tok.encode("a")
        mask = probe.special_tokens_mask
        self.head_specials = next((i for i, m in enumerate(mask) if not m), len(mask))
        self.tail_specials = next((i for i, m in enumerate(reversed(mask)) if not m), 0)
        self._head = list(probe.ids[: self.head_specials])  # what the post-processor wraps a single text in
        self._tail = list(probe.ids[len(probe.ids) - self.tail_specials :])
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_folder(cls, folder: Path) -> Tokenizer | None:
        path = folder / "tokenizer.json"
        return cls(path) if path.is_file() else None

    def encode(self, texts: Sequence[str], prefix: str = "") -> list[list[int]]:
        """Token ids with the model's special tokens, untruncated."""
        return list(self.iter_encode(texts, prefix))

    def iter_encode(self, texts: Sequence[str], prefix: str = "", stop_after: int | None = None) -> Iterator[list[int]]:
        """Each text's token ids, in order, computed at most SLICE_CHARS characters per `tokenizers` call (a caller
        that stops early never pays for the rest). With `stop_after`, a long text is tokenised only until it has more
        ids than that: what comes back for it is then a prefix of its ids, over `stop_after`, for the caller to
        refuse. Batch calls run in parallel in Rust."""
        group: list[str] = []
        size = 0
        for text in texts:
            if len(text) > SLICE_CHARS:
                yield from self._encode_group(group)
                group, size = [], 0
                yield self._encode_long(prefix + text, stop_after)
                continue
            group.append(prefix + text)
            size += len(group[-1])
            if size >= SLICE_CHARS:
                yield from self._encode_group(group)
                group, size = [], 0
        yield from self._encode_group(group)

    def _encode_group(self, group: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(group)] if group else []

    def _encode_long(self, text: str, stop_after: int | None) -> list[int]:
        ids = list(self._head)
        start = 0
        while start < len(text):
            if stop_after is not None and len(ids) > stop_after:
                return ids
            batch = []  # a few slices per call, parallel in Rust, at most SLICE_CHARS characters in all
            while start < len(text) and sum(map(len, batch)) < SLICE_CHARS:
                end = cut_point(text, start + SLICE_CHARS // 4, lo=start + SLICE_CHARS // 8)
                batch.append(text[start:end])
                start = end
            for e in self._tok.encode_batch(batch, add_special_tokens=False):
                ids.extend(e.ids)
        ids.extend(self._tail)
        return ids

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
        and no offsets; any other token's piece of `text` and its UTF-8 byte offsets in `text`. Tokenised in slices
        of at most SLICE_CHARS (the ids are the whole text's; see the module docstring)."""
        out: list[tuple[int, str, bool, int | None, int | None]] = []
        wrap = add_special_tokens
        if wrap:
            out += [(i, self._tok.id_to_token(i) or "", True, None, None) for i in self._head]
        start, base = 0, 0  # the slice's first character, and its UTF-8 byte offset in `text`
        while start < len(text):
            end = cut_point(text, start + SLICE_CHARS, lo=start + SLICE_CHARS // 2)
            piece = text[start:end]
            enc = self._tok.encode(piece, add_special_tokens=False)
            byte_at = [0]
            for ch in piece:
                byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
            for id_, token, special, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets):
                if special:
                    out.append((id_, token, True, None, None))
                else:
                    out.append((id_, piece[a:b], False, base + byte_at[a], base + byte_at[b]))
            start, base = end, base + byte_at[-1]
        if wrap:
            out += [(i, self._tok.id_to_token(i) or "", True, None, None) for i in self._tail]
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

    @functools.cached_property
    def pair_specials(self) -> int:
        """How many tokens the pair template adds (an empty pair's length): no truncation can go below it."""
        return len(self._tok.encode("", ""))

    def pairs(
        self,
        query: str,
        documents: Sequence[str],
        truncate_to: int | None = None,
        left: bool = False,
        doc_tokens: int | None = None,
    ) -> list[Pair]:
        """(query, document) pairs through the pair template. With `doc_tokens`, each document is first cut to that
        many of its own tokens (special tokens not counted), from its end. With `truncate_to`, each pair is then cut
        longest-first to that many tokens (the longer text of the pair loses a token at a time, from its end; from its
        start with `left`)."""
        try:
            if truncate_to is None:
                return self._pairs(self._tok, query, documents, doc_tokens)
            with self._lock:  # the copy's limit is a setting of the Rust object, shared by every thread
                tok = self._truncating_copy(left)
                if (tok.truncation or {}).get("max_length") != truncate_to:
                    tok.enable_truncation(truncate_to, strategy="longest_first", direction="left" if left else "right")
                return self._pairs(tok, query, documents, doc_tokens)
        except Exception as exc:  # e.g. a limit shorter than the template's special tokens
            raise InputError(f"cannot tokenize the pairs: {str(exc).splitlines()[0]}") from None

    def _pairs(self, tok: HFTokenizer, query: str, documents: Sequence[str], doc_tokens: int | None) -> list[Pair]:
        if doc_tokens is None:
            encodings = tok.encode_batch([(query, d) for d in documents])
        else:
            first = self._tok.encode(query, add_special_tokens=False)
            seconds = self._tok.encode_batch(list(documents), add_special_tokens=False)
            for second in seconds:
                second.truncate(doc_tokens)
            encodings = [tok.post_process(first, second) for second in seconds]  # `tok`'s truncation, then template
        return [Pair(e.ids, e.type_ids) for e in encodings]

    def _truncating_copy(self, left: bool) -> HFTokenizer:
        """The separate tokenizer that truncates pairs from one side (one per side, whatever the limits asked: a copy
        holds the whole vocabulary). Called with the lock held."""
        if left not in self._truncating:
            self._truncating[left] = HFTokenizer.from_str(self._json)
        return self._truncating[left]


def cut_point(text: str, at: int, lo: int = 0) -> int:
    """The last position in (lo, at] just before a space or newline, where tokenising the two sides apart gives the
    same ids as tokenising them together; `at` itself if there is none (a "word" that long is cut inside)."""
    if at >= len(text):
        return len(text)
    best = max(text.rfind(" ", lo + 1, at + 1), text.rfind("\n", lo + 1, at + 1))
    return best if best > lo else at
