"""Deterministic inputs: English-like texts of a target token count (calibrated with the model's own tokenizer) and
token-id batches of exact lengths (for the full-size NomicBert, whose speed does not depend on which ids)."""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer

WORDS = (  # noqa: SIM905 - a word list reads better as text
    "the of and to in is was for on that with as by at from his her an which are were this be has had not or it "
    "they their have one its new after first who also been into two more other time some only over such than "
    "people year city world state school system water music river family government between during under while "
    "embedding server vector search query document model language rotary attention packed batch latency token "
    "research network history village county season album station population member company research university "
    "small large early later north south east west because however although several including number between "
    "national local public general former national record released known called used along around against"
).split()


def texts_of_length(tokenizer_json: Path, target: int, count: int, seed: int) -> list[str]:
    """`count` distinct texts of about `target` tokens each ([CLS] and [SEP] included), seeded."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    tok.no_padding()
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words: list[str] = []
        while True:
            sentence = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
            sentence[0] = sentence[0].capitalize()
            candidate = words + sentence
            if len(tok.encode(" ".join(candidate) + ".").ids) > target:
                break
            words = candidate
            words[-1] += "."
        while len(tok.encode(" ".join(words)).ids) < target:  # top up word by word
            words.append(rng.choice(WORDS))
        while len(words) > 1 and len(tok.encode(" ".join(words)).ids) > target:
            words.pop()
        texts.append(" ".join(words))
    return texts


def id_batch(lengths: list[int], seed: int, vocab: tuple[int, int] = (1999, 29000)) -> list[list[int]]:
    """One batch of BERT-vocabulary token-id sequences of exactly these lengths: [CLS] ids... [SEP]."""
    rng = random.Random(seed)
    return [[101] + [rng.randrange(*vocab) for _ in range(n - 2)] + [102] if n >= 2 else [101] for n in lengths]


def mixed_lengths(count: int, low: int, high: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


def texts_near(tokenizer_json: Path, targets: list[int], seed: int) -> list[str]:
    """One English-like text per target token count ([CLS] and [SEP] included): the longest prefix of a seeded stream
    of sentences that fits, found by bisection (~log2(target) encodes per text, so 8192-token texts take milliseconds
    where `texts_of_length`'s sentence-by-sentence search would take seconds each)."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    tok.no_padding()
    rng = random.Random(seed)
    texts = []
    for target in targets:
        words: list[str] = []
        while len(words) < target:  # every word is at least one token: `target` words always reach the target
            sentence = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
            sentence[0] = sentence[0].capitalize()
            sentence[-1] += "."
            words += sentence
        lo, hi = 1, len(words)  # the largest k whose first k words encode to at most `target` tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(tok.encode(" ".join(words[:mid])).ids) <= target:
                lo = mid
            else:
                hi = mid - 1
        texts.append(" ".join(words[:lo]))
    return texts
