"""The next batch is packed on the host while the current one computes: the batcher's packer thread (`prepare`) and the
server's wiring of it, shown with a fake slow device that cannot finish batch n until batch n+1 has been packed (so
the test is deterministic: without the overlap it would wait out its timeout and fail)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import httpx
import numpy as np
import pytest

from app.batcher import Batcher
from app.settings import Settings
from model.encoder import Encoder
from tests.app.conftest import thread_server
from tests.conftest import NOMIC


def test_batch_n_plus_1_is_packed_while_batch_n_computes() -> None:
    packed_second, first_running = threading.Event(), threading.Event()
    overlapped: list[bool] = []
    threads: dict[str, set[str]] = {"prepare": set(), "run": set()}

    def prepare(ids: list[Sequence[int]]) -> tuple[str, list[Sequence[int]]]:
        threads["prepare"].add(threading.current_thread().name)
        if ids == [[2]]:
            packed_second.set()
        return ("packed", ids)

    def run(prepared: tuple[str, list[Sequence[int]]], width: int) -> list[int]:
        threads["run"].add(threading.current_thread().name)
        kind, ids = prepared
        assert kind == "packed"
        if ids == [[1]]:
            first_running.set()
            overlapped.append(packed_second.wait(5))  # the device "computes" batch 1 until batch 2 is packed
        return [sum(x) for x in ids]

    async def main() -> None:
        b = Batcher(run, prepare=prepare, cost=sum, max_batch_tokens=100, max_batch_size=1, max_wait_ms=1,
                    max_queue_tokens=1000)
        await b.start()
        first = asyncio.create_task(b.submit([[1]]))
        await asyncio.to_thread(first_running.wait, 5)
        assert await asyncio.gather(first, b.submit([[2]])) == [[1], [2]]
        assert await b.submit([[3], [4]]) == [3, 4]  # two batches of one
        await b.drain(1)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert overlapped == [True], "batch 2 was not packed while batch 1 computed"
    assert threads == {"prepare": {"batcher-packer"}, "run": {"batcher-worker-0"}}


def test_a_failing_prepare_fails_only_its_batch() -> None:
    def prepare(ids: list[Sequence[int]]) -> list[Sequence[int]]:
        if any(666 in x for x in ids):
            raise ValueError("cannot pack")
        return ids

    async def main() -> None:
        b = Batcher(lambda ids, width: [sum(x) for x in ids], prepare=prepare, cost=sum, max_batch_tokens=100,
                    max_batch_size=8, max_wait_ms=1, max_queue_tokens=1000)
        await b.start()
        with pytest.raises(ValueError, match="cannot pack"):
            await b.submit([[666]])
        assert await b.submit([[1], [2]]) == [1, 2] and b.alive
        await b.drain(1)

    asyncio.run(asyncio.wait_for(main(), 10))


class AheadOnCpu(Encoder):
    """The real CPU encoder, wired as on a GPU (`packs_ahead`), with a slow device: `run` of the first batch of
    `PROBE` waits until the second has been packed."""

    PROBE = 4242

    def __init__(self, real: Encoder) -> None:
        self.__dict__.update(real.__dict__)
        self.packed_second, self.first_running = threading.Event(), threading.Event()
        self.prepared: list[list[list[int]]] = []
        self.overlapped: list[bool] = []

    @property
    def packs_ahead(self) -> bool:
        return True

    def prepare(self, batch, token_types=None):
        if any(self.PROBE in s for s in batch):
            self.prepared.append([list(s) for s in batch])
            if len(self.prepared) == 2:
                self.packed_second.set()
        return super().prepare(batch, token_types)

    def run(self, packed):
        if self.PROBE in packed.input_ids.tolist() and not self.first_running.is_set():
            self.first_running.set()
            self.overlapped.append(self.packed_second.wait(10))
        return super().run(packed)


def test_the_server_packs_ahead_on_a_device_and_answers_the_same_vectors():
    real = Encoder.load(str(NOMIC / "nomic-text-tiny"), device="cpu", dtype="float32")
    enc = AheadOnCpu(real)
    first, second = [101, AheadOnCpu.PROBE, 2000, 102], [101, AheadOnCpu.PROBE, 2001, 2002, 102]
    with thread_server(Settings(model="fake", max_wait_ms=1, max_batch_size=1, encoder_workers=1), enc) as (base, _):

        async def both() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                body = {"encoding_format": "float"}
                one = asyncio.create_task(client.post("/v1/embeddings", json=body | {"input": [first]}))
                await asyncio.to_thread(enc.first_running.wait, 10)
                two = await client.post("/v1/embeddings", json=body | {"input": [second]})
                return [await one, two]

        answers = asyncio.run(both())
    assert enc.overlapped == [True], "the second batch was not packed while the first computed"
    vectors = [a.json()["data"][0]["embedding"] for a in answers]
    expected = np.concatenate([real.embed([first]), real.embed([second])])  # each alone, as the server ran them
    np.testing.assert_array_equal(np.asarray(vectors, dtype=np.float32), expected)
