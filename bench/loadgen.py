"""A bounded loopback load generator: `concurrency` workers send POSTs until `max_requests` are done or `max_s` has
passed, whichever comes first. Only 127.0.0.1 / localhost URLs are accepted.

One asyncio httpx client saturates its own core at about 16 connections (measured: 4 processes x 16 drove our server to
272 embeddings/s where one process x 64 got ~110), so `run_load_spread` splits high concurrency over processes.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class LoadResult:
    requests: int
    errors: int
    embeddings: int
    elapsed_s: float
    latencies_s: list[float] = field(repr=False)
    first_error: str | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def embeddings_per_s(self) -> float:
        return self.embeddings / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        if len(self.latencies_s) == 1:
            return self.latencies_s[0] * 1e3
        return statistics.quantiles(self.latencies_s, n=1000, method="inclusive")[round(q * 10) - 1] * 1e3

    def summary(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "embeddings": self.embeddings,
                "elapsed_s": round(self.elapsed_s, 3), "requests_per_s": self.requests_per_s,
                "embeddings_per_s": self.embeddings_per_s, "p50_ms": self.percentile_ms(50),
                "p95_ms": self.percentile_ms(95), "p99_ms": self.percentile_ms(99), "first_error": self.first_error}


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"load is only ever sent to loopback, not {host!r}")


async def run_load(
    url: str,
    bodies: list[dict],
    concurrency: int,
    max_requests: int,
    max_s: float,
    warmup_requests: int = 0,
    pause_s: float = 0.0,
) -> LoadResult:
    """POST `bodies` (cycled) to `url`. `pause_s` sleeps between a worker's requests (an idle server each time)."""
    check_loopback(url)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:
        warm = itertools.cycle(bodies)
        for _ in range(warmup_requests):
            (await client.post(url, json=next(warm))).raise_for_status()

        source = itertools.cycle(bodies)
        latencies: list[float] = []
        errors = embeddings = 0
        first_error: str | None = None
        issued = 0
        start = time.perf_counter()
        deadline = start + max_s

        async def worker() -> None:
            nonlocal issued, errors, embeddings, first_error
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                body = next(source)
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, json=body)
                    ok = response.status_code == 200
                    detail = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                if ok:
                    latencies.append(time.perf_counter() - t0)
                    embeddings += len(body["input"]) if isinstance(body["input"], list) else 1
                else:
                    errors += 1
                    first_error = first_error or detail
                if pause_s:
                    await asyncio.sleep(pause_s)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start - (pause_s * len(latencies) / concurrency if pause_s else 0.0)
    return LoadResult(len(latencies), errors, embeddings, elapsed, latencies, first_error)


PER_PROCESS = 16  # connections one client process drives before it, not the server, becomes the limit


def _load_in_process(args: tuple) -> LoadResult:  # a pool worker: run_load's arguments in run_load's order
    return asyncio.run(run_load(*args))


def run_load_spread(
    url: str,
    bodies: list[dict],
    concurrency: int,
    max_requests: int,
    max_s: float,
    warmup_requests: int = 0,
    pause_s: float = 0.0,
) -> LoadResult:
    """`run_load` with the concurrency split over ceil(concurrency / 16) processes, results merged. Each process
    sends its share of the requests over its share of the connections; the elapsed time is the slowest one's."""
    check_loopback(url)
    procs = max(1, -(-concurrency // PER_PROCESS))
    if procs == 1:
        return asyncio.run(run_load(url, bodies, concurrency, max_requests, max_s, warmup_requests, pause_s))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    jobs = [(url, bodies[i::procs] or bodies, c, -(-max_requests * c // concurrency), max_s,
             -(-warmup_requests * c // concurrency), pause_s) for i, c in enumerate(shares)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(_load_in_process, jobs)
    return LoadResult(
        requests=sum(p.requests for p in parts),
        errors=sum(p.errors for p in parts),
        embeddings=sum(p.embeddings for p in parts),
        elapsed_s=max(p.elapsed_s for p in parts),
        latencies_s=[t for p in parts for t in p.latencies_s],
        first_error=next((p.first_error for p in parts if p.first_error), None),
    )


def post_together(url: str, body: dict, n: int, timeout_s: float = 300) -> list[int]:
    """`n` copies of one POST sent at once (the bulk side of the priority scenario, run in its own process so its
    clients' JSON work does not slow the measured side); their statuses."""
    check_loopback(url)

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=n)) as client:
            answers = await asyncio.gather(*(client.post(url, json=body) for _ in range(n)))
        return [a.status_code for a in answers]

    return asyncio.run(main())
