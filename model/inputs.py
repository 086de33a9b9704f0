"""The input rules every surface shares: the HTTP service, `python -m model embed` and the Ray job.

    check_text / check_ids      what text and token ids are accepted (raise `Rejected`)
    cap_text                    the character cap before tokenising (refuse or cut a text too long to fit)
    task_prefix                 an input_type (or alias) -> the model's task prefix
    fit                         the long-input rule: error | truncate | chunk -> the input's windows
    mean_of_windows             a chunked input's windows -> one pooled vector (token-weighted mean)
    read_record / job_prefix / prepare_inputs / embed_inputs   the offline jobs: JSONL lines, --input-type, and the
                                                              rules over many inputs

Pure functions over an `Encoder` (tokenizer, limits, device work); no HTTP. A refusal is a `Rejected` carrying the API
error code and a reason that completes "Input 3 ...", so every surface words an error the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from model.errors import InputError
from model.tokenizer import cut_point

LongInput = Literal["error", "truncate", "chunk"]
LONG_INPUT_MODES: tuple[str, ...] = ("error", "truncate", "chunk")
# names for the same task: an input_type finds whichever of its group the model's prompts use (nomic v1.5 names them
# search_query / search_document, v2-moe and e5 query / passage)
INPUT_TYPE_SYNONYMS = (("search_query", "query"), ("search_document", "passage", "document"))


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


def cap_text(text: str, mode: str, max_tokens: int, chars_per_token: int, left: bool = False) -> str:
    """The character cap, checked before any tokenising (tokenising costs memory and time per character): a text over
    `max_tokens * chars_per_token` characters is refused under 'error' and cut to that many under 'truncate' (just
    before a space or newline; with `left`, its end is kept instead); 'chunk' keeps it whole (the caller caps the
    request's total). The cut is exact whenever those characters hold `max_tokens` tokens, i.e. for any text under
    `chars_per_token` characters a token."""
    cap = max_tokens * chars_per_token
    if len(text) <= cap or mode == "chunk":
        return text
    if mode == "truncate":
        if left:  # the kept end starts at a space or newline, where the whole text's tokens split too
            start = len(text) - cap
            found = (text.find(" ", start, start + cap // 2), text.find("\n", start, start + cap // 2))
            return text[min((p for p in found if p >= 0), default=start) :]
        return text[: cut_point(text, cap, cap // 2)]
    raise Rejected(
        "context_length_exceeded",
        f"has {len(text)} characters, over the {cap} that a maximum of {max_tokens} tokens allows "
        f"({chars_per_token} characters a token)",
    )


def task_prefix(prompts: Mapping[str, str], input_type: str | None) -> tuple[str, str]:
    """(task name, prefix) for an input_type: the model's own prompt names, else the common aliases."""
    if input_type is None:
        return "", ""
    group = next((g for g in INPUT_TYPE_SYNONYMS if input_type in g), ())
    name = input_type if input_type in prompts else next((n for n in group if n in prompts), input_type)
    if name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise Rejected("invalid_input_type", f"Unknown input_type '{name}' for this model (known: {known})",
                       param="input_type")
    return name, prompts[name]


def fit(
    encoder, ids: list[int], mode: str, from_text: bool, left: bool = False, limit: int | None = None
) -> list[list[int]]:
    """The long-input rule -> the input's windows (one unless chunked). Tokenised text keeps its [CLS]/[SEP] in
    every piece; token ids given by the caller are cut exactly as given. `limit`: a request's own token limit
    (vLLM's truncate_prompt_tokens, Cohere's max_tokens), at most the model's; default the model's."""
    whose = "this model's maximum" if limit is None else "the request's limit"
    limit = limit or encoder.info.max_input_tokens
    if len(ids) <= limit:
        return [ids]
    if mode == "truncate":
        if from_text:
            return [encoder.truncate(ids, limit, left=left)]
        return [ids[len(ids) - limit :] if left else ids[:limit]]
    if mode == "chunk":
        return encoder.windows(ids, limit) if from_text else [ids[i : i + limit] for i in range(0, len(ids), limit)]
    raise Rejected("context_length_exceeded", f"has {len(ids)} tokens, over {whose} of {limit}")


def mean_of_windows(pooled: Sequence[np.ndarray], lengths: Sequence[int]) -> np.ndarray:
    """A chunked input's pooled windows -> one pooled vector. The token-weighted mean of the windows' means is the
    mean over all their tokens (normalise it afterwards, as any pooled vector)."""
    if len(pooled) == 1:
        return pooled[0]
    weights = np.array(lengths, dtype=np.float32)[:, None]
    return (np.stack(pooled) * weights).sum(0) / weights.sum()


# ---- over many inputs: the offline jobs (`python -m model embed`, with or without Ray) ----------------------------
RECORD_SHAPE = 'expected {"text": "..."} or {"input_ids": [...]}'
EXIT_REFUSED = 3  # a job's exit status when it finished and some inputs were refused


def job_prefix(prompts: Mapping[str, str], input_type: str | None, prefix: str) -> str:
    """A job's text prefix: --input-type through the model's prompts (as the server's input_type), else --prefix."""
    if input_type is None:
        return prefix
    try:
        return task_prefix(prompts, input_type)[1]
    except Rejected as exc:
        raise InputError(f"--input-type: {exc.reason}") from None


def read_record(raw: bytes | str) -> tuple[str | list[int] | None, object, str | None]:
    """One JSONL line -> (the input: a text or token ids, its "id" or None, why the line is unusable or None)."""
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, None, f"not JSON ({getattr(exc, 'msg', exc)})"
    if not isinstance(record, dict):
        return None, None, RECORD_SHAPE
    key = record.get("id")
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str):
            return None, key, "text is not a string"
        try:
            check_text(text)
        except Rejected as exc:
            return None, key, f"text {exc.reason}"
        return text, key, None
    ids = record.get("input_ids")
    if not isinstance(ids, list):
        return None, key, RECORD_SHAPE
    # int64 bounds: the Ray job carries ids in Arrow int64 columns
    if not all(isinstance(t, int) and not isinstance(t, bool) and -(2**63) <= t < 2**63 for t in ids):
        return None, key, "input_ids must be a list of integers"
    return ids, key, None


def prepare_inputs(
    encoder, items: Sequence[str | Sequence[int]], prefix: str, mode: str
) -> list[list[list[int]] | str]:
    """Each input (a text, or token ids used exactly as given) -> its windows, or the reason it is refused, worded
    for the offline jobs' errors file. The accepted texts are tokenized in one batch."""
    out: list[list[list[int]] | str] = []
    texts: list[tuple[int, str]] = []
    for i, item in enumerate(items):
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
            out.append(_job_reason(item, exc))
    if texts:
        for (i, text), ids in zip(texts, encoder.tokenize([t for _, t in texts], prefix)):
            try:
                out[i] = fit(encoder, ids, mode, from_text=True)
            except Rejected as exc:
                out[i] = _job_reason(text, exc)
    return out


def _job_reason(item: str | Sequence[int], exc: Rejected) -> str:
    hint = " (use --long-input truncate or chunk)" if exc.code == "context_length_exceeded" else ""
    return f"{'text' if isinstance(item, str) else 'input_ids'} {exc.reason}{hint}"


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
    return encoder.finish(np.stack(rows) if rows else pooled, dimensions)
