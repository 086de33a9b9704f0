"""Serving on the device: the out-of-memory split with a real over-budget batch, pinned host buffers reused, and the
server in its default dtype answering goldens (the nomic-text-tiny NomicBert and the default MiniLM)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import torch

from app.batcher import Batcher, BatchStats
from tests.conftest import GOLDEN, NOMIC, load_golden
from tests.gpu.conftest import DEVICE, ON_GPU, cosines, gpu_only, load, needs_device, random_ids

pytestmark = needs_device


@gpu_only
def test_an_over_budget_batch_splits_once_and_every_input_is_answered():
    """The device's memory is capped (the caching allocator's per-process fraction) between what half the batch and
    what the whole batch need. The whole runs out of memory; its halves fit only if the failed attempt was freed
    before they ran, so exactly one split."""
    enc = load(NOMIC / "nomic-text-tiny", "bfloat16")
    seqs = random_ids([2048] * 32, seed=7)
    total = torch.cuda.get_device_properties(0).total_memory

    def peak(batch: list[list[int]]) -> int:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_reserved()
        enc.pooled(batch)
        return torch.cuda.max_memory_reserved() - start

    reference = np.concatenate([enc.pooled(seqs[:16]), enc.pooled(seqs[16:])])
    whole, half = peak(seqs), peak(seqs[:16])
    assert whole > 1.6 * half, (whole, half)
    torch.cuda.empty_cache()
    limit = torch.cuda.memory_reserved() + int(1.5 * half)
    stats: list[BatchStats] = []

    async def main() -> list[np.ndarray]:
        b = Batcher(lambda packed, width: list(enc.run(packed)), prepare=enc.prepare, cost=sum,
                    max_batch_tokens=1 << 30, max_batch_size=64, max_wait_ms=1, max_queue_tokens=1 << 30,
                    is_out_of_memory=enc.is_out_of_memory, on_batch=stats.append)
        await b.start()
        try:
            return await b.submit(seqs)
        finally:
            await b.drain(5)

    torch.cuda.set_per_process_memory_fraction(limit / total)
    try:
        out = asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert [s.oom_splits for s in stats] == [1], [s.oom_splits for s in stats]
    assert cosines(np.stack(out), reference).min() >= 0.9999


@gpu_only
def test_pinned_host_buffers_are_reused():
    enc = load(NOMIC / "nomic-text-tiny", "bfloat16")
    seqs = random_ids([500, 300, 7], seed=8)
    pointers = []
    for _ in range(10):
        prepared = enc.prepare(seqs)
        assert prepared.storage is not None and prepared.storage.is_pinned()
        pointers.append(prepared.storage.data_ptr())
        enc.run(prepared)
        del prepared
    assert len(set(pointers[2:])) <= 2, pointers  # torch's caching host allocator hands the same block out again


def _post(base: str, body: dict) -> list[list[float]]:
    response = httpx.post(f"{base}/v1/embeddings", json=body | {"encoding_format": "float"}, timeout=120)
    assert response.status_code == 200, response.text
    return [d["embedding"] for d in response.json()["data"]]


def test_server_on_the_device_in_its_default_dtype_answers_goldens():
    from tests.app.conftest import server_process

    cases = load_golden(NOMIC / "nomic-text-tiny")["cases"]
    texts = [c["text"] for c in cases]
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--device", DEVICE, "--dtype", "auto") as server:
        card = httpx.get(f"{server.base}/v1/models").json()["data"][0]
        assert card["device"].startswith(DEVICE)
        if ON_GPU:
            assert card["dtype"] == "bfloat16"
        got = _post(server.base, {"input": texts})
        assert cosines(got, [c["mean_pooled_l2"] for c in cases]).min() >= 0.999
        got = _post(server.base, {"input": texts, "dimensions": 32})
        assert cosines(got, [c["matryoshka_32"] for c in cases]).min() >= 0.999
        singles = [_post(server.base, {"input": t})[0] for t in texts[:3]]  # alone vs batched by the server
        assert cosines(singles, _post(server.base, {"input": texts[:3]})).min() >= 0.9999


def test_default_model_server_on_the_device(minilm):
    from tests.app.conftest import server_process

    folder, full = minilm
    cases = load_golden(GOLDEN / "minilm")["cases"]
    dtype = "auto" if full or ON_GPU else "bfloat16"  # the carried copy is right in bf16 only
    with server_process("--model", str(folder), "--device", DEVICE, "--dtype", dtype) as server:
        card = httpx.get(f"{server.base}/v1/models").json()["data"][0]
        if ON_GPU:
            assert card["dtype"] == "bfloat16"
        got = _post(server.base, {"input": [c["text"] for c in cases], "long_input": "truncate"})  # to 256, as ST
        assert cosines(got, [c["embedding"] for c in cases]).min() >= 0.999


@pytest.mark.parametrize("concurrency", [16])
def test_concurrent_clients_get_their_own_answers(concurrency):
    """Different inputs from many clients at once, batched and packed together by the server, each against the same
    input sent alone."""
    from tests.app.conftest import server_process

    seqs = random_ids([int(n) for n in np.random.default_rng(9).integers(2, 600, 48)], seed=10)
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--device", DEVICE, "--dtype", "auto") as server:
        alone = [_post(server.base, {"input": [s]})[0] for s in seqs]

        async def many() -> list[list[float]]:
            async with httpx.AsyncClient(base_url=server.base, timeout=120) as client:
                sem = asyncio.Semaphore(concurrency)

                async def one(s: list[int]) -> list[float]:
                    async with sem:
                        r = await client.post("/v1/embeddings", json={"input": [s], "encoding_format": "float"})
                        return r.json()["data"][0]["embedding"]

                return await asyncio.gather(*(one(s) for s in seqs))

        together = asyncio.run(many())
    assert cosines(together, alone).min() >= 0.9999
