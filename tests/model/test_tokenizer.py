"""model/tokenizer.py: tokenising in bounded slices gives exactly the ids of tokenising whole, for every kind of
tokenizer the project ships or tests (BERT WordPiece, ModernBERT byte-level BPE, XLM-R Unigram/Metaspace)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from model import tokenizer as tk
from tests.conftest import GOLDEN

PIECES = ["Hello", "world", "déjà", "vu", "東京都", "😀", "naïve", "e\u0301", "don't", "U.S.A.", "x" * 30, "#include",
          "    def f(x):", "https://a.b/c?d=e", "1234567", "—", ",", ".", "\u3000", "\u00a0", "search_query:"]
GAPS = [" ", "", "  ", "\n", "\n\n", "\t", " \n "]


def folders() -> list[Path]:
    seen, out = set(), []
    for path in sorted(GOLDEN.glob("*/*/tokenizer.json")):
        if path.resolve() not in seen:  # identical files are stored once, as links
            seen.add(path.resolve())
            out.append(path.parent)
    return out


def mixed_text(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(PIECES) + rng.choice(GAPS) for _ in range(words))


@pytest.fixture(params=["minilm", *[f.name for f in folders()]])
def tokenizer(request, minilm_dir) -> tk.Tokenizer:
    folder = minilm_dir if request.param == "minilm" else next(f for f in folders() if f.name == request.param)
    return tk.Tokenizer(folder / "tokenizer.json")


def test_sliced_ids_equal_whole_ids(tokenizer, monkeypatch):
    monkeypatch.setattr(tk, "SLICE_CHARS", 2048)  # a long text in dozens of slices
    texts = [mixed_text(seed, 4000) for seed in range(3)] + ["word " * 3000, "short"]
    for prefix in ("", "search_document: "):
        whole = [e.ids for e in tokenizer._tok.encode_batch([prefix + t for t in texts])]
        assert tokenizer.encode(texts, prefix) == whole


def test_short_texts_are_grouped_in_order(tokenizer, monkeypatch):
    monkeypatch.setattr(tk, "SLICE_CHARS", 100)
    texts = [mixed_text(seed, 5) for seed in range(50)]
    assert tokenizer.encode(texts) == [e.ids for e in tokenizer._tok.encode_batch(texts)]


def test_a_caller_that_stops_early_tokenises_no_further(minilm_dir, monkeypatch):
    monkeypatch.setattr(tk, "SLICE_CHARS", 1000)
    tok = tk.Tokenizer(minilm_dir / "tokenizer.json")
    calls = []
    real = tok._tok

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        def encode_batch(self, batch, *args, **kw):
            calls.append(sum(map(len, batch)))
            return real.encode_batch(batch, *args, **kw)

    tok._tok = Counting()
    stream = tok.iter_encode(["short one"] * 200 + ["long " * 100_000])
    next(stream)
    assert sum(calls) <= 1100  # one group of about SLICE_CHARS, not the 500 k characters behind it
    cut = tok.iter_encode(["long " * 100_000], stop_after=300)
    ids = next(cut)
    assert 300 < len(ids) < 1000 and sum(calls) < 10_000  # a long text stops a slice past `stop_after`


def test_cut_point_is_just_before_whitespace():
    text = "alpha beta\ngamma delta"
    assert tk.cut_point(text, 8) == 5 and text[:5] == "alpha"
    assert tk.cut_point(text, 14) == 10  # before the newline
    assert tk.cut_point(text, 100) == len(text)
    assert tk.cut_point("x" * 50, 20, lo=10) == 20  # no whitespace: a hard cut


def test_detailed_tokens_in_slices_match_the_whole_text(tokenizer, monkeypatch):
    """TEI's /tokenize form (ids, pieces, UTF-8 byte offsets) computed in slices equals one whole-text encode."""
    text = mixed_text(7, 3000)
    enc = tokenizer._tok.encode(text)
    byte_at = [0]
    for ch in text:
        byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
    whole = [
        (i, tok, True, None, None) if special else (i, text[a:b], False, byte_at[a], byte_at[b])
        for i, tok, special, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets)
    ]
    monkeypatch.setattr(tk, "SLICE_CHARS", 1500)
    assert tokenizer.detailed(text) == whole
    assert tokenizer.detailed(text, add_special_tokens=False) == [t for t in whole if not t[2]]
