"""Issue 17.2, what the soak found after the oneDNN cache was bounded: glibc keeps freed pages inside its heaps, so
RSS crept with every new allocation pattern (+10.8 MB per 1,000 requests over 40 minutes). With the heap trimmer
(app/heap.py) RSS falls back to what is live once traffic pauses; without it (`--heap-trim-interval-s 0`, the old
behaviour) it stays at its high-water mark. Two real servers, the same seeded mix of the soak's traffic (bench/soak.py)
on loopback, RSS from /proc/PID/status."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from app.heap import MALLOC_TRIM
from bench.soak import Traffic, rss_mb
from tests.app.conftest import server_process

REQUESTS = 80
CLIENTS = 8


async def mixed_traffic(base: str) -> None:
    traffic = Traffic(random.Random(0))
    left = REQUESTS

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            kind, args = traffic.next()
            if kind not in ("get", "disconnect"):
                r = await http.post(base + "/v1/embeddings", **args)
                assert r.status_code < 500, r.text[:200]

    async with httpx.AsyncClient(timeout=120) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))


def rss_after_traffic(interval_s: str) -> tuple[float, float, float]:
    """(RSS warm, right after the traffic, after a 2.5 s pause)."""
    with server_process("--heap-trim-interval-s", interval_s) as server:
        warm = rss_mb(server.proc.pid)
        asyncio.run(mixed_traffic(server.base))
        busy = rss_mb(server.proc.pid)
        time.sleep(2.5)
        return warm, busy, rss_mb(server.proc.pid)


@pytest.mark.skipif(MALLOC_TRIM is None, reason="no malloc_trim in this C library (glibc only)")
def test_rss_falls_back_to_what_is_live_once_traffic_pauses():
    kept = rss_after_traffic("0")
    trimmed = rss_after_traffic("1")
    print(f"RSS MB (warm, after {REQUESTS} requests, 2.5 s later): untrimmed {kept}, trimmed {trimmed}")
    # measured (AMD EPYC Zen 4, 2 vCPUs): untrimmed 444 -> 679..693 -> the same, trimmed 444 -> 578..656 -> 571..576;
    # CI's machine: untrimmed 429 -> 609 -> 609, trimmed 446 -> 656 -> 576. The two servers' batches (and so their
    # high-water marks) differ with thread timing, so the comparison across servers has no margin; the exact effect
    # on a heap is the test below.
    assert kept[2] > kept[0] + 100  # what the trimmer is for: the heap's free pages stay resident without it
    assert kept[2] > kept[1] - 5
    assert trimmed[2] < kept[2]


FRAGMENTED_HEAP = textwrap.dedent(
    """
    import time
    from app.heap import HeapTrimmer

    def rss_mb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

    blocks = [bytes(64 * 1024) for _ in range(2048)]  # 128 MB of 64 KB blocks: under mmap's threshold, in the heap
    kept = blocks[::64] + [blocks[-1]]  # every 64th and the last (the heap's top) stay live
    del blocks
    freed = rss_mb()
    trimmer = HeapTrimmer(0.05)
    trimmer.start()
    time.sleep(0.5)
    trimmer.stop()
    print(freed, rss_mb())
    """
)


@pytest.mark.skipif(MALLOC_TRIM is None, reason="no malloc_trim in this C library (glibc only)")
def test_the_trimmer_returns_free_pages_in_the_middle_of_the_heap():
    """glibc frees none of the 124 MB between live blocks by itself; one trim returns them."""
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENTED_HEAP],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    freed, trimmed = map(float, out.stdout.split())
    # measured (AMD EPYC Zen 4): 104 MB resident after the free, 14 MB after the trimmer's first call
    assert freed - trimmed > 80, (freed, trimmed)
