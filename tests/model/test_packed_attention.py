"""Attention on packed batches: the padded grid, the per-sequence loop and a sequence alone agree."""

from __future__ import annotations

import pytest
import torch

from model import packing
from model.packing import pack, packed_attention, per_sequence_pays

H, D = 4, 16


def _qkv(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(sum(lengths), H, D, generator=gen) for _ in range(3))


@pytest.mark.parametrize("lengths", [[300, 300, 20, 20, 20, 33], [11, 174, 90, 40], [180, 171, 189], [5, 9, 16]])
def test_grid_per_sequence_and_alone_agree(lengths, monkeypatch):
    q, k, v = _qkv(lengths)
    batch = pack([[1] * n for n in lengths])
    chosen = packed_attention(q, k, v, batch)
    monkeypatch.setattr(packing, "PER_SEQUENCE_MIN_WASTE", float("inf"))  # force the masked grid
    grid = packed_attention(q, k, v, batch)
    torch.testing.assert_close(chosen, grid, atol=1e-5, rtol=1e-5)
    start = 0
    for n in lengths:  # each sequence alone is a uniform batch of one: no mask, no loop
        seq = slice(start, start + n)
        alone = packed_attention(q[seq], k[seq], v[seq], pack([[1] * n]))
        torch.testing.assert_close(chosen[seq], alone, atol=1e-5, rtol=1e-5)
        start += n


def test_per_sequence_where_it_beats_the_grid():
    assert per_sequence_pays(pack([[1] * n for n in [300, 300] + [20] * 14]))
    assert per_sequence_pays(pack([[1] * n for n in [11, 174, 90, 40]]))
    assert not per_sequence_pays(pack([[1] * n for n in [180, 171, 189]]))  # nearly uniform: one grid call
    assert per_sequence_pays(pack([[1] * n for n in [180, 171, 189]]), cpu=True)  # on CPU the grid's copies cost more
    assert not per_sequence_pays(pack([[1] * n for n in [16, 14, 18] * 20]), cpu=True)  # short: the calls cost more
    assert not per_sequence_pays(pack([[1] * n for n in [10, 20] * 32]))  # short: per-call overhead would dominate


@pytest.mark.parametrize("mask_kind", [None, "keys", "additive"])
@pytest.mark.parametrize("queries", [12, 1])  # every token, or the first token alone (first_token_attention)
def test_short_attention_on_matmuls_equals_sdpa(mask_kind, queries):
    gen = torch.Generator().manual_seed(3)
    B, S = 3, packing.SHORT_KEYS  # the longest key count that takes the matmul path
    q = torch.randn(B, H, queries, D, generator=gen)
    k, v = (torch.randn(B, H, S, D, generator=gen) for _ in range(2))
    lengths = torch.tensor([S, 5, 17])
    keys = (torch.arange(S)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S) bool
    mask = {None: None, "keys": keys, "additive": packing.band_mask(S, 4, q.device, q.dtype)[:queries]}[mask_kind]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(packing.attend(q, k, v, mask), expected, atol=2e-6, rtol=1e-5)


def test_longer_keys_and_bf16_stay_on_sdpa(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(packing.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    short, long = (torch.randn(1, H, n, D) for n in (packing.SHORT_KEYS, packing.SHORT_KEYS + 1))
    packing.attend(short, short, short)
    assert not calls
    packing.attend(long, long, long)
    packing.attend(*(short.bfloat16(),) * 3)
    assert len(calls) == 2
