"""Runner for transformers' native `nomic_bert` (its own venv under bench/.venvs/transformers). Speaks
`common.serve`. Inputs are token ids; a batch is right-padded with an attention mask, as transformers expects."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import torch
import torch.nn.functional as F
from transformers import AutoModel

state: dict = {}


def load(model: str, dtype: str = "float32", threads: int | None = None, device: str = "cpu") -> dict:
    net = AutoModel.from_pretrained(model, dtype=getattr(torch, dtype)).eval().to(device)
    if threads:
        torch.set_num_threads(threads)
    state["model"] = net
    return {
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "class": type(net).__name__,
        "attn_implementation": getattr(net.config, "_attn_implementation", None),
        "versions": {"python": platform.python_version(), **common.versions("torch", "transformers", "safetensors")},
    }


def _padded(batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and the attention mask, (B, S) each, on the model's device."""
    longest = max(len(s) for s in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    mask = torch.zeros(len(batch), longest, dtype=torch.long)
    for i, seq in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    device = state["model"].device
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def _embed(batch: list[list[int]]) -> torch.Tensor:
    """(B, E) mean-pooled, L2-normalised vectors of one padded batch."""
    ids, mask = _padded(batch)
    hidden = state["model"](input_ids=ids, attention_mask=mask).last_hidden_state  # (B, S, E)
    m = mask[..., None].to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1)
    return F.normalize(pooled.float(), dim=-1).cpu()


def embed_ids(batch: list[list[int]]) -> dict:
    return {"vectors": _embed(batch).tolist()}


def time_ids(batches: list[list[list[int]]], warmup: int, reps: int, max_s: float) -> dict:
    return common.time_batches(_embed, batches, warmup, reps, max_s)


@torch.inference_mode()
def time_forward(batches: list[list[list[int]]], warmup: int, reps: int, max_s: float) -> dict:
    """The model's forward alone on padded batches already on the device, until the device is done."""
    padded = [_padded(b) for b in batches]
    cuda = state["model"].device.type == "cuda"

    def run() -> None:
        for ids, mask in padded:
            state["model"](input_ids=ids, attention_mask=mask)
        if cuda:
            torch.cuda.synchronize()

    times = common.timed(run, warmup, reps, max_s)
    return {"times": times, "tokens": sum(len(s) for b in batches for s in b), "n": sum(len(b) for b in batches),
            "padded_tokens": sum(ids.numel() for ids, _ in padded)}


if __name__ == "__main__":
    common.serve({"load": load, "embed_ids": embed_ids, "time_ids": time_ids, "time_forward": time_forward})
