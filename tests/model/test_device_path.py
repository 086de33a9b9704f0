"""The GPU path's structure, checked on CPU: one packed int64 buffer and one copy to the device, the dtype and attention
chosen at load from the GPU's compute capability (faked here), and rotary work that does not grow with the layers or
with the number of sequences (aten ops counted with a dispatch mode)."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model import encoder as encoder_module
from model import packing
from model.encoder import Encoder, describe_precision, pick_dtype
from model.errors import ModelError
from model.packing import pack, varlen_supported
from tests.conftest import NOMIC

CUDA = torch.device("cuda")


class CountOps(TorchDispatchMode):
    """Counts every aten op dispatched inside the block (by overload name, e.g. `aten._to_copy.default`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    def count(self, name: str) -> int:
        return sum(n for op, n in self.ops.items() if op.startswith(name))


def test_pack_is_one_int64_buffer_of_views_with_the_right_values():
    seqs, types = [[5, 6, 7], [8], [9, 10]], [[0, 1, 1], [0], [1, 0]]
    batch = pack(seqs, types)
    assert batch.storage is not None and batch.storage.dtype == torch.int64
    base = batch.storage.untyped_storage().data_ptr()
    for name in ("input_ids", "token_type_ids", "positions", "seq_index", "lengths", "cu_seqlens"):
        assert getattr(batch, name).untyped_storage().data_ptr() == base, name
    assert batch.input_ids.tolist() == [5, 6, 7, 8, 9, 10]
    assert batch.token_type_ids is not None and batch.token_type_ids.tolist() == [0, 1, 1, 0, 1, 0]
    assert batch.positions.tolist() == [0, 1, 2, 0, 0, 1]
    assert batch.seq_index.tolist() == [0, 0, 0, 1, 2, 2]
    assert batch.lengths.tolist() == [3, 1, 2]
    assert batch.cu_seqlens.dtype == torch.int32 and batch.cu_seqlens.tolist() == [0, 3, 4, 6]
    assert (batch.max_len, batch.length_list, batch.uniform) == (3, [3, 1, 2], False)
    for n in (1, 2, 3, 64, 65):  # B+1 int32 boundaries in ceil((B+1)/2) int64 slots, odd and even B
        assert pack([[1] * k for k in range(1, n + 1)]).cu_seqlens.tolist() == [k * (k + 1) // 2 for k in range(n + 1)]
    with pytest.raises(ValueError, match="token_types"):
        pack(seqs, [[0, 1], [0], [1, 0]])


def test_moving_a_batch_is_one_copy():
    batch = pack([[101, 7, 102], [101, 102]], varlen=True)
    with CountOps() as ops:
        moved = batch.to("meta")
    copies = ops.count("aten._to_copy") + ops.count("aten.copy_")
    assert copies == 1, ops.ops
    assert moved.input_ids.device.type == "meta" and moved.cu_seqlens.dtype == torch.int32
    assert moved.cu_seqlens.shape == (3,) and moved.varlen and moved.length_list == [3, 2]


@pytest.mark.parametrize(
    ("capability", "auto", "varlen"),
    [((7, 0), torch.float16, False), ((7, 5), torch.float16, False), ((8, 0), torch.bfloat16, True),
     ((8, 9), torch.bfloat16, True), ((9, 0), torch.bfloat16, True)],
)
def test_dtype_and_attention_from_the_compute_capability(monkeypatch, capability, auto, varlen):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert pick_dtype("auto", CUDA) is auto
    assert varlen_supported(CUDA, auto, head_dim=64) is varlen
    assert varlen_supported(CUDA, torch.float16, head_dim=64) is varlen  # flash attention: fp16 on Ampere+ too
    assert not varlen_supported(CUDA, torch.float32, head_dim=64)  # fp32: always the SDPA path
    assert not varlen_supported(CUDA, auto, head_dim=12) and not varlen_supported(CUDA, auto, head_dim=512)
    assert pick_dtype("float16", CUDA) is torch.float16 and pick_dtype("float32", CUDA) is torch.float32
    text = describe_precision(CUDA, auto, varlen)
    assert f"compute capability {capability[0]}.{capability[1]}" in text
    assert ("varlen flash attention" in text) is varlen and ("no flash attention, no bf16" in text) is (not varlen)
    if capability < (8, 0):
        with pytest.raises(ModelError, match=r"bfloat16 needs a GPU of compute capability >= 8.0, this one is 7"):
            pick_dtype("bfloat16", CUDA)
    else:
        assert pick_dtype("bfloat16", CUDA) is torch.bfloat16


def test_no_varlen_without_the_kernel(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(packing, "_varlen_attn", lambda: None)  # a torch older than 2.10
    assert not varlen_supported(CUDA, torch.bfloat16, head_dim=64)


def test_the_choice_is_logged_at_load(caplog):
    with caplog.at_level(logging.INFO, logger=encoder_module.__name__):
        enc = Encoder.load(str(NOMIC / "nomic-text-tiny"), device="cpu", dtype="float32")
    assert not enc.info.packed_attention and not enc.packs_ahead
    assert any("float32, scaled_dot_product attention" in r.getMessage() for r in caplog.records)


def _bf16_tiny(tmp_path, **config) -> Encoder:
    folder = tmp_path / "model"
    shutil.copytree(NOMIC / "nomic-text-tiny", folder)
    cfg = json.loads((folder / "config.json").read_text()) | config
    (folder / "config.json").write_text(json.dumps(cfg))
    return Encoder.load(str(folder), device="cpu", dtype="bfloat16")


def test_rotary_tables_are_cast_once_per_forward_not_per_layer(tmp_path):
    enc = _bf16_tiny(tmp_path)
    batch = pack([[101, *range(1000, 1040), 102], [101, 2000, 102]])
    enc.model(batch)  # first forward builds and caches the tables
    with CountOps() as ops, torch.inference_mode():
        enc.model(batch)
    casts = ops.count("aten.to.") + ops.count("aten._to_copy")  # before: cos, sin for q and k in each layer (8)
    assert casts <= 2, ops.ops


def test_ntk_bases_are_vectorised_and_match_the_formula(tmp_path):
    enc = _bf16_tiny(tmp_path, rotary_scaling_factor=2.0, max_trained_positions=64)
    rotary = enc.model.rotary
    lengths = [10, 64, 65, 100, 300, 1000]
    np.testing.assert_allclose(rotary.scaled_bases(torch.tensor(lengths)).numpy(),
                               [rotary.scaled_base(n) for n in lengths], rtol=1e-14)

    def kernels(count: int) -> int:
        batch = pack([[7] * (70 + 3 * i) for i in range(count)])
        with CountOps() as ops:
            rotary.cos_sin(batch, torch.bfloat16)
        return sum(ops.ops.values())

    assert kernels(2) == kernels(32), "rotary's NTK work grows with the number of sequences"
