"""The input rules every surface shares: the HTTP service, `python -m model embed` and the Ray job.

    check_text / check_ids      what text and token ids are accepted (raise `Rejected`)
    cap_text                    the character cap before tokenising (refuse or cut a text too long to fit)
    task_prefix                 an input_type (or alias) -> the model's task prefix
    fit                         the long-input rule: error | truncate | chunk -> the input's windows
    mean_of_windows             a chunked input's windows -> one pooled vector (token-weighted mean)
    prepare_inputs / embed_inputs   the rules above over a list of inputs, for the offline jobs

Pure functions over an `Encoder` (tokenizer, limits, device work); no HTTP. A refusal is a `Rejected` carrying the API
error code and a reason that completes "Input 3 ...", so every surface words an error the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from model.errors import InputError
from model.tokenizer import cut_point

LongInput = Literal["error", "truncate", "chunk"]
LONG_INPUT_MODES: tuple[str, ...] = ("error", "truncate", "chunk")
# common names for nomic's task types; a model's own prompt names win over these
INPUT_TYPE_ALIASES = {"query": "search_query", "document": "search_document", "passage": "search_document"}


class Rejected(InputError):
    """One input that cannot be embedded. `code` is the API error code, `param` the request field, `reason` reads
    after "Input N" (e.g. "is an empty string")."""

    def __init__(self, code: str, reason: str, param: str = "input"):
        super().__init__(reason)
        self.code, self.reason, self.param = code, reason, param


def check_text(text: str) -> None:
    """Empty strings, NUL bytes and lone surrogates (valid JSON escapes, but not text) are refused."""
    if not text:
        raise Rejected("empty_input", "is an empty string")
    if "\x00" in text:
        raise Rejected("invalid_text", "contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected("invalid_text", "contains a lone surrogate (not valid Unicode text)") from None


def check_ids(ids: Sequence[int], vocab_size: int) -> None:
    if not ids:
        raise Rejected("empty_input", "is an empty token list")
    if min(ids) < 0 or max(ids) >= vocab_size:  # C loops; the generator below only runs to name the culprit
        bad = next(t for t in ids if not 0 <= t < vocab_size)
        raise Rejected("invalid_token_id", f"has token id {bad}, outside the vocabulary [0, {vocab_size})")


def cap_text(text: str, mode: str, max_tokens: int, chars_per_token: int) -> str:
    """The character cap, checked before any tokenising (tokenising costs memory and time per character): a text over
    `max_tokens * chars_per_token` characters is refused under 'error' and cut there (just before a space or newline)
    under 'truncate'; 'chunk' keeps it whole (the caller caps the request's total). The cut is exact whenever those
    characters hold `max_tokens` tokens, i.e. for any text under `chars_per_token` characters a token."""
    cap = max_tokens * chars_per_token
    if len(text) <= cap or mode == "chunk":
        return text
    if mode == "truncate":
        return text[: cut_point(text, cap, cap // 2)]
    raise Rejected(
        "context_length_exceeded",
        f"has {len(text)} characters, over the {cap} that this model's maximum of {max_tokens} tokens allows "
        f"({chars_per_token} characters a token)",
    )


def task_prefix(prompts: Mapping[str, str], input_type: str | None) -> tuple[str, str]:
    """(task name, prefix) for an input_type: the model's own prompt names, else the common aliases."""
    if input_type is None:
        return "", ""
    name = input_type if input_type in prompts else INPUT_TYPE_ALIASES.get(input_type, input_type)
    if name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise Rejected("invalid_input_type", f"Unknown input_type '{name}' for this model (known: {known})",
                       param="input_type")
    return name, prompts[name]


def fit(encoder, ids: list[int], mode: str, from_text: bool) -> list[list[int]]:
    """The long-input rule -> the input's windows (one unless chunked). Tokenised text keeps its [CLS]/[SEP] in
    every piece; token ids given by the caller are cut exactly as given."""
    limit = encoder.info.max_input_tokens
    if len(ids) <= limit:
        return [ids]
    if mode == "truncate":
        return [encoder.truncate(ids) if from_text else ids[:limit]]
    if mode == "chunk":
        return encoder.windows(ids) if from_text else [ids[i : i + limit] for i in range(0, len(ids), limit)]
    raise Rejected("context_length_exceeded", f"has {len(ids)} tokens, over this model's maximum of {limit}")


def mean_of_windows(pooled: Sequence[np.ndarray], lengths: Sequence[int]) -> np.ndarray:
    """A chunked input's pooled windows -> one pooled vector. The token-weighted mean of the windows' means is the
    mean over all their tokens (normalise it afterwards, as any pooled vector)."""
    if len(pooled) == 1:
        return pooled[0]
    weights = np.array(lengths, dtype=np.float32)[:, None]
    return (np.stack(pooled) * weights).sum(0) / weights.sum()


# ---- over many inputs: the offline jobs ---------------------------------------------------------------------------
def prepare_inputs(
    encoder, inputs: Sequence[str | Sequence[int]], prefix: str, mode: str
) -> list[list[list[int]] | Rejected]:
    """Each input (a text, or token ids used exactly as given) -> its windows, or why it is refused. The accepted
    texts are tokenized in one batch."""
    out: list[list[list[int]] | Rejected] = []
    texts: list[tuple[int, str]] = []
    for i, item in enumerate(inputs):
        try:
            if isinstance(item, str):
                check_text(item)
                texts.append((i, item))
                out.append([])  # filled below
            else:
                ids = list(item)
                check_ids(ids, encoder.info.vocab_size)
                out.append(fit(encoder, ids, mode, from_text=False))
        except Rejected as exc:
            out.append(exc)
    if texts:
        for (i, _), ids in zip(texts, encoder.tokenize([t for _, t in texts], prefix)):
            try:
                out[i] = fit(encoder, ids, mode, from_text=True)
            except Rejected as exc:
                out[i] = exc
    return out


def embed_inputs(
    encoder, windows: Sequence[list[list[int]]], dimensions: int | None, batch_tokens: int
) -> np.ndarray:
    """Prepared inputs (their windows) -> (N, dimensions) float32 unit vectors, chunked ones averaged as the server
    does. All windows run together in length-sorted batches of at most `batch_tokens`."""
    flat = [w for ws in windows for w in ws]
    pooled = encoder.pool_sorted(flat, batch_tokens) if flat else np.empty((0, encoder.info.hidden_size), np.float32)
    rows, at = [], 0
    for ws in windows:
        rows.append(mean_of_windows(pooled[at : at + len(ws)], [len(w) for w in ws]))
        at += len(ws)
    merged = np.stack(rows) if rows else pooled
    return encoder.finish(merged, dimensions)
