"""Packed variable-length batches and the attention that runs on them.

Every encoder here runs its linear layers on *packed* tokens: the batch's sequences concatenated, shape (T, E) with
T = the sum of the real lengths, so no matmul ever touches a pad token. Only attention needs to know where one sequence
ends and the next begins:

- on CUDA in fp16/bf16 with compute capability >= 8.0, PyTorch's variable-length flash attention (`varlen_attn`) reads
  `cu_seqlens` directly (the encoder decides at load and marks each batch `varlen`);
- elsewhere (CPU, fp32, older GPUs), `scaled_dot_product_attention` runs on a padded (B, H, S, D) grid with a key
  mask (q/k/v scattered in and gathered back: exact, padding costs only inside attention), or, when lengths differ so
  much that the grid would be mostly padding, once per sequence on its own tokens (no padding at all); on CPU in fp32
  attention over at most `SHORT_KEYS` keys runs as plain matmuls instead (`attend`).

A sliding window (`window=`: ModernBERT's local layers) is flash attention's `window_size` on the varlen path and a
band mask on the others, so a query never sees a key outside its own sequence nor outside its window.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@functools.cache
def _varlen_attn():
    """torch >= 2.10's varlen flash attention, or None. Imported on first CUDA use: the import pulls in torch._dynamo,
    ~1.5 s of start-up a CPU server does not need."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # pragma: no cover - depends on the torch build
        return None
    return varlen_attn


@dataclass
class PackedBatch:
    """A batch of token sequences, concatenated. T = total tokens, B = sequences, S = longest sequence.

    Every index tensor is a view of one int64 `storage` tensor (ids | token types | positions | seq_index | lengths |
    cu_seqlens as int32 pairs), so moving a batch to a GPU is one host-to-device copy."""

    input_ids: torch.Tensor  # (T,) int64
    token_type_ids: torch.Tensor | None  # (T,) int64, None = all zeros
    positions: torch.Tensor  # (T,) int64: each token's position inside its own sequence
    seq_index: torch.Tensor  # (T,) int64: which sequence each token belongs to
    lengths: torch.Tensor  # (B,) int64
    cu_seqlens: torch.Tensor  # (B+1,) int32: sequence boundaries for varlen attention
    max_len: int  # S (a Python int, so the forward never syncs to read it)
    length_list: list[int]  # the lengths on the host, for per-sequence decisions without a device sync
    storage: torch.Tensor | None = None  # the int64 tensor the fields above are views of
    varlen: bool = False  # attention through varlen_attn (the encoder's choice at load), else scaled_dot_product

    @property
    def batch_size(self) -> int:
        return len(self.length_list)

    @property
    def uniform(self) -> bool:
        """All sequences have the same length: the padded grid is a plain reshape, no mask needed."""
        return min(self.length_list) == self.max_len

    def to(self, device: torch.device | str) -> PackedBatch:
        """The same batch on `device`: one copy of `storage` (asynchronous from pinned memory), viewed again there."""
        assert self.storage is not None, "only batches made by pack() can be moved"
        storage = self.storage.to(device, non_blocking=self.storage.is_pinned())
        return _views(storage, self.length_list, self.token_type_ids is not None, self.varlen)


def _views(storage: torch.Tensor, lengths: list[int], with_types: bool, varlen: bool) -> PackedBatch:
    B, T = len(lengths), sum(lengths)
    ids, rest = storage[:T], storage[T:]
    types = None
    if with_types:
        types, rest = rest[:T], rest[T:]
    cu_pairs = (B + 2) // 2  # int64 slots holding the B+1 int32 boundaries
    return PackedBatch(
        input_ids=ids,
        token_type_ids=types,
        positions=rest[:T],
        seq_index=rest[T : 2 * T],
        lengths=rest[2 * T : 2 * T + B],
        cu_seqlens=rest[2 * T + B : 2 * T + B + cu_pairs].view(torch.int32)[: B + 1],
        max_len=max(lengths),
        length_list=lengths,
        storage=storage,
        varlen=varlen,
    )


def pack(
    sequences: Sequence[Sequence[int]],
    token_types: Sequence[Sequence[int]] | None = None,
    pin_memory: bool = False,
    varlen: bool = False,
) -> PackedBatch:
    """Concatenate token-id lists into a PackedBatch on the host: one int64 tensor, written in place through numpy.
    `pin_memory` (for a GPU) takes it from PyTorch's caching host allocator, which hands the same page-locked blocks
    out again once the copies that read them are done: one reusable pinned buffer per batch in flight."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pack() needs at least one sequence and no empty sequence")
    lengths = [len(s) for s in sequences]
    B, T = len(lengths), sum(lengths)
    with_types = token_types is not None
    storage = torch.empty((4 if with_types else 3) * T + B + (B + 2) // 2, dtype=torch.int64, pin_memory=pin_memory)
    batch = _views(storage, lengths, with_types, varlen)
    lens = np.array(lengths, dtype=np.int64)
    batch.input_ids.numpy()[:] = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=T)
    if token_types is not None and batch.token_type_ids is not None:
        types = np.fromiter(itertools.chain.from_iterable(token_types), dtype=np.int64)
        if types.shape != (T,):
            raise ValueError(f"token_types hold {types.size} ids for {T} tokens")
        batch.token_type_ids.numpy()[:] = types
    ends = np.cumsum(lens)
    batch.positions.numpy()[:] = np.arange(T, dtype=np.int64) - np.repeat(ends - lens, lens)
    batch.seq_index.numpy()[:] = np.repeat(np.arange(B, dtype=np.int64), lens)
    batch.lengths.numpy()[:] = lens
    cu = batch.cu_seqlens.numpy()
    cu[0], cu[1:] = 0, ends
    return batch


AMPERE = (8, 0)  # the first compute capability with flash attention and bf16 tensor cores


def varlen_supported(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Flash attention's varlen kernel runs here: CUDA compute capability >= 8.0 (Ampere; a T4 or V100 has none),
    fp16/bf16, a head size it supports, and a torch that has it."""
    return (
        device.type == "cuda"
        and dtype in (torch.float16, torch.bfloat16)
        and torch.cuda.get_device_capability(device) >= AMPERE
        and head_dim % 8 == 0
        and head_dim <= 256
        and _varlen_attn() is not None
    )


# Per-sequence attention replaces the padded grid when the grid holds at least this many times the real attention
# work (sum of squared lengths) and sequences average at least PER_SEQUENCE_MIN_MEAN tokens, so one call per sequence
# (~40 us each on CPU) stays cheap. Measured on a Zen 4 EPYC, fp32, 12 heads x 32: 32 sequences of 11-174 tokens
# 30 -> 12 ms per layer, 2 x 300 + 14 x 20 tokens 31 -> 5.4 ms; 64 sequences of 10-20 tokens stay on the grid
# (1.4 vs 3.8 ms).
# On CPU, sequences averaging PER_SEQUENCE_CPU_MEAN tokens or more take it even without waste: the grid's scatter,
# gather and key mask cost more than the calls (same machine, 12 x 32 heads, fp32, lengths within +-7%: 10 x ~105
# tokens 5.32 -> 4.71 ms, 16 x ~65 4.94 -> 4.00, 24 x ~45 4.49 -> 4.26; 64 x ~16 stays on the grid, 2.80 vs 3.80).
# Equal lengths need none of that (`uniform`) and stay one call: 10 x 110 4.89 ms on the grid, 5.92 per sequence.
PER_SEQUENCE_MIN_WASTE = 1.5
PER_SEQUENCE_MIN_MEAN = 32
PER_SEQUENCE_CPU_MEAN = 40


def per_sequence_pays(batch: PackedBatch, cpu: bool = False) -> bool:
    lengths = batch.length_list
    if cpu and sum(lengths) >= PER_SEQUENCE_CPU_MEAN * len(lengths):
        return True
    real = sum(n * n for n in lengths)
    return (
        len(lengths) * batch.max_len**2 >= PER_SEQUENCE_MIN_WASTE * real
        and sum(lengths) >= PER_SEQUENCE_MIN_MEAN * len(lengths)
    )


# On CPU in fp32, attention over at most SHORT_KEYS keys runs as two batched matmuls around a softmax: SDPA's fused CPU
# kernel works in blocks of hundreds of keys, so on short sequences its set-up is most of its time. Measured on a Zen 4
# EPYC, 2 threads, 12 heads x 32, one layer's attention, SDPA vs matmuls: 1 x 16 keys 42 vs 22 us, 8 x 16 294 vs 92,
# 32 x 16 1,342 vs 484, 8 x 32 426 vs 343 (with a key mask 1.35-2.05x at 16, 1.37x at 32); at 64 keys about even
# (1.05x, 0.83x masked); from 96 SDPA leads (0.36-0.44x). End to end, MiniLM fp32: 32 x 16 tokens 1.03-1.11x,
# 16 x 8-30 tokens 1.06-1.15x, 1 x 16 even. bf16 keeps SDPA, which holds the scores in fp32 (the matmuls would round
# them to bf16).
SHORT_KEYS = 32


def _tracing() -> bool:
    """Inside torch.export's trace (strict or not) or torch.compile's."""
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`scaled_dot_product_attention(q, k, v, attn_mask=mask)` on (B, H, S, D) grids; `mask` bool (True: may attend)
    or additive, broadcast over the scores."""
    # traced for a compiled graph (model/cpu_aot.py): one op whatever the length, which inductor compiles as it likes
    if _tracing() or q.device.type != "cpu" or q.dtype != torch.float32 or k.shape[-2] > SHORT_KEYS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)  # (B, H, S_q, S_k)
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else scores.add_(mask)
    return torch.matmul(scores.softmax(-1), v)


@functools.lru_cache(maxsize=8)  # one forward's local layers share it; a few sizes in flight at most
def band_mask(n: int, radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) additive mask: 0 where query i may attend key j (|i - j| <= radius: a sliding window, ModernBERT's local
    layers), -inf elsewhere. Additive in the compute dtype, so SDPA converts nothing per call."""
    i = torch.arange(n, device=device)
    inside = (i[:, None] - i[None, :]).abs() <= radius
    return torch.zeros(n, n, device=device, dtype=dtype).masked_fill_(~inside, float("-inf"))


def packed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, window: int | None = None
) -> torch.Tensor:
    """Bidirectional attention inside each sequence. q, k, v: (T, H, D) -> (T, H, D). With `window`, a query sees only
    keys at most `window` positions away (and, as always, only its own sequence's)."""
    if window is not None and not _tracing() and batch.max_len <= window + 1:
        window = None  # every key is inside the window: plain attention, no mask (a traced graph keeps the mask)
    if batch.varlen:
        cu = batch.cu_seqlens
        sliding = (window, window) if window is not None else (-1, -1)
        return _varlen_attn()(q, k, v, cu, cu, batch.max_len, batch.max_len, window_size=sliding)
    B, S = batch.batch_size, batch.max_len
    T, H, D = q.shape
    masks = band_mask.__wrapped__ if _tracing() else band_mask  # a traced length is symbolic: nothing to cache by
    band = masks(S, window, q.device, q.dtype) if window is not None else None  # (S, S)
    if batch.uniform:  # equal lengths: the packed tokens already form the (B, S) grid
        grid = [t.view(B, S, H, D).transpose(1, 2) for t in (q, k, v)]  # (B, H, S, D)
        out = attend(*grid, band)
        return out.transpose(1, 2).reshape(T, H, D)
    if per_sequence_pays(batch, cpu=q.device.type == "cpu"):
        outs, start = [], 0
        for n in batch.length_list:
            seq = slice(start, start + n)
            # (1, H, n, D) views: SDPA's fused CPU kernel wants 4-d inputs (3-d ones fall back to the math path, which
            # materialises the (H, n, n) scores: 2.7x slower and +1.5 GB at 4,096 tokens x 12 heads, fp32)
            heads = [t[seq].transpose(0, 1)[None] for t in (q, k, v)]
            mask = band[:n, :n] if band is not None else None
            outs.append(attend(*heads, mask)[0].transpose(0, 1))  # (n, H, D)
            start += n
        return torch.cat(outs)  # one copy for the whole batch
    grid, slot = _padded_grid((q, k, v), batch)
    keys = _key_mask(batch)
    # with a window (B, 1, S, S): a padding query's row may be all -inf; its NaN output is never gathered back
    mask = keys if band is None else band.masked_fill(~keys, float("-inf"))
    out = attend(*grid, mask)  # (B, H, S, D)
    return out.transpose(1, 2).reshape(B * S, H, D)[slot]  # (T, H, D)


def first_token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Attention for each sequence's first token only, over all of its sequence's keys: q (B, H, D) (the first tokens'
    queries), k, v (T, H, D) -> (B, H, D). What a head that reads only the first token needs of the last layer."""
    if batch.uniform:  # equal lengths: the packed tokens already form the (B, S) grid
        B, S = batch.batch_size, batch.max_len
        grid, mask = [t.view(B, S, *t.shape[1:]).transpose(1, 2) for t in (k, v)], None
    else:
        (grid, _), mask = _padded_grid((k, v), batch), _key_mask(batch)
    return attend(q[:, :, None], *grid, mask)[:, :, 0]  # (B, H, D)


def _padded_grid(
    tensors: Sequence[torch.Tensor], batch: PackedBatch
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Packed (T, H, D) tensors scattered into zero-padded (B, H, S, D) grids, and each token's flat slot in the
    (B*S) grid (to gather the real tokens back)."""
    B, S = batch.batch_size, batch.max_len
    slot = batch.seq_index * S + batch.positions  # (T,)
    grid = []
    for t in tensors:
        padded = t.new_zeros(B * S, *t.shape[1:])
        padded[slot] = t
        grid.append(padded.view(B, S, *t.shape[1:]).transpose(1, 2))  # (B, H, S, D)
    return grid, slot


def _key_mask(batch: PackedBatch) -> torch.Tensor:
    """(B, 1, 1, S) bool: True where a grid column is a real key of that row's sequence."""
    S = batch.max_len
    return (torch.arange(S, device=batch.lengths.device)[None, :] < batch.lengths[:, None])[:, None, None, :]


def mean_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Mean over each sequence's tokens ([CLS]/[SEP] included), in float32. (T, E) -> (B, E)."""
    sums = hidden.new_zeros(batch.batch_size, hidden.shape[-1], dtype=torch.float32)
    sums.index_add_(0, batch.seq_index, hidden.float())
    return sums / batch.lengths[:, None].to(torch.float32)


def cls_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """The first token of each sequence, in float32. (T, E) -> (B, E)."""
    return hidden[batch.cu_seqlens[:-1].long()].float()
