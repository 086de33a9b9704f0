"""Graceful shutdown on SIGTERM and a bounded overload test, against `python -m app` with the real MiniLM.

The overload test measures capacity first, then offers about twice that for a fixed time (<= 12 s) and a fixed
request cap, on 127.0.0.1 only. It writes its figures to $TMPDIR/overload-report.json and prints them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.app.conftest import ServerProcess, server_process
from tests.conftest import NOMIC

TEXTS = [f"Request number {i}: the quick brown fox jumps over the lazy dog near the river bank." for i in range(50)]
BODIES = [" ".join(TEXTS[i : i + 4]) for i in range(48)]  # ~60 tokens each


def request_inputs(k: int) -> list[str]:
    return [BODIES[(k + j) % len(BODIES)] for j in range(4)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_drains_admitted_work_and_exits_zero(sig):
    with server_process("--shutdown-grace-s", "30", "--max-batch-size", "16") as server:
        url = f"{server.base}/v1/embeddings"
        body = {"input": [t * 3 for t in TEXTS[:24]]}  # 10 x 24 inputs of ~60 tokens: seconds of work, far from 30

        async def scenario():
            async with httpx.AsyncClient(timeout=60) as client:
                admitted = [asyncio.create_task(client.post(url, json=body)) for _ in range(10)]
                await asyncio.sleep(0.5)  # all ten are now queued or running
                start = time.monotonic()
                server.proc.send_signal(sig)
                ready = None
                while time.monotonic() - start < 2:
                    ready = await client.get(f"{server.base}/ready")
                    if ready.status_code == 503:
                        break
                ready_after = time.monotonic() - start
                late = await client.post(url, json={"input": "too late"})
                return await asyncio.gather(*admitted), ready, ready_after, late

        answered, ready, ready_after, late = asyncio.run(scenario())
        assert ready.status_code == 503 and ready.json()["status"] == "draining" and ready_after < 1.0
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        assert [r.status_code for r in answered] == [200] * 10
        assert all(len(r.json()["data"]) == 24 for r in answered)
        start = time.monotonic()
        assert server.proc.wait(35) == 0
        assert time.monotonic() - start < 30


HEAVY = {"input": [f"{i} " + "a long document about nothing in particular " * 28 for i in range(256)]}  # ~64k tokens


def is_json_answer(r: httpx.Response) -> bool:
    return r.headers.get("content-type") == "application/json" and (r.status_code == 200 or "error" in r.json())


def post_head(port: int, length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    sock.sendall((head % length).encode())
    return sock


def test_shutdown_fits_its_budget_whatever_the_clients_do():
    """Work queued for far longer than the budget, stalled uploads, a trickled head, a silent connection and a client
    that never reads its 8 MB answer: SIGTERM still exits 0 within --shutdown-grace-s, every admitted request gets a
    JSON answer (200, or 503 for what the budget could not fit), and stalled uploads get their 503 at once."""
    budget = 8.0
    with server_process("--shutdown-grace-s", str(budget)) as server:
        url = f"{server.base}/v1/embeddings"
        stalled = [post_head(server.port, 10_000) for _ in range(3)]
        for sock in stalled:
            sock.sendall(b'{"input": "never finis')
        trickle = socket.create_connection(("127.0.0.1", server.port))
        trickle.sendall(b"GET /health HTTP/1.1\r\n")
        silent = socket.create_connection(("127.0.0.1", server.port))  # noqa: F841 (held open, never written to)
        big = json.dumps({"input": ["word " * 50] * 2048, "encoding_format": "float"}).encode()
        never_reads = post_head(server.port, len(big))
        never_reads.sendall(big)

        async def scenario():
            async with httpx.AsyncClient(timeout=60) as client:
                admitted = [asyncio.create_task(client.post(url, json=HEAVY)) for _ in range(12)]
                await asyncio.sleep(2.0)  # all admitted and queued: minutes of work on 2 cores
                start = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                answers = await asyncio.gather(*admitted)
                return start, answers

        start, answers = asyncio.run(scenario())
        cut = []
        for sock in stalled:
            sock.settimeout(5)
            cut.append(sock.recv(65536))
        rc = server.proc.wait(budget + 5)
        took = time.monotonic() - start
    statuses = sorted(r.status_code for r in answers)
    print("shutdown:", {"budget_s": budget, "exit_code": rc, "exit_s": round(took, 2), "answers": statuses})
    # the budget ends with 1.5 s to spare (app/server.py); on 2 cores shared with a dozen busy processes the event
    # loop woke up to 1.8 s late, hence the allowance
    assert rc == 0 and took < budget + 2.0, (rc, took)
    assert all(is_json_answer(r) for r in answers), [(r.status_code, r.text[:80]) for r in answers]
    assert {r.status_code for r in answers} <= {200, 503}
    assert all(r.json()["error"]["code"] == "draining" for r in answers if r.status_code == 503)
    assert all(c.startswith(b"HTTP/1.1 503") and b'"draining"' in c for c in cut), cut
    assert "Traceback" not in server.output()


def test_a_second_signal_hurries_the_drain_without_breaking_the_protocol():
    with server_process() as server:  # the default 30 s budget

        async def scenario():
            async with httpx.AsyncClient(timeout=60) as client:
                admitted = [
                    asyncio.create_task(client.post(f"{server.base}/v1/embeddings", json=HEAVY)) for _ in range(8)
                ]
                await asyncio.sleep(2.0)
                start = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                server.proc.send_signal(signal.SIGINT)
                return start, await asyncio.gather(*admitted)

        start, answers = asyncio.run(scenario())
        rc = server.proc.wait(30)
        took = time.monotonic() - start
    assert rc == 0 and took < 10.0, (rc, took)  # hurried: 1 s after the second signal (+ a loaded box), not 30 s
    assert all(is_json_answer(r) for r in answers), [(r.status_code, r.text[:80]) for r in answers]
    assert "Traceback" not in server.output()


def test_overload_gives_429s_not_failures(minilm):
    """Requests of 4 medium texts (~250 tokens) keep the server compute-bound, so the test measures the queue
    bound rather than the load generator's own CPU (client and server share these 2 cores)."""
    reference = {t: v for t, v in zip(BODIES, minilm.embed(minilm.tokenize(BODIES)))}
    args = ("--max-queue-tokens", "2000", "--max-batch-tokens", "1024", "--request-timeout-s", "30")
    with server_process(*args) as server:
        url = f"{server.base}/v1/embeddings"
        rss_before = rss_mb(server.proc.pid)

        async def closed_loop(seconds: float, concurrency: int) -> float:
            done = 0
            stop = time.monotonic() + seconds

            async def worker(client, k):
                nonlocal done
                while time.monotonic() < stop:
                    r = await client.post(url, json={"input": request_inputs(k)})
                    assert r.status_code == 200
                    done += 1

            async with httpx.AsyncClient(timeout=30) as client:
                await asyncio.gather(*(worker(client, k) for k in range(concurrency)))
            return done / seconds

        async def open_loop(rate: float, seconds: float, cap: int):
            results = []
            limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:

                async def one(k):
                    start = time.monotonic()
                    texts = request_inputs(k)
                    r = await client.post(url, json={"input": texts, "encoding_format": "float"})
                    results.append((texts, r, time.monotonic() - start))

                tasks, start = [], time.monotonic()
                for k in range(cap):
                    due = start + k / rate
                    if due - start > seconds:
                        break
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    tasks.append(asyncio.create_task(one(k)))
                await asyncio.gather(*tasks)
            return results

        # 5 x ~300 tokens (guessed ~340 each while admitted and parsed) stays under the 2,000-token queue
        capacity = asyncio.run(closed_loop(3.0, 5))
        results = asyncio.run(open_loop(2 * capacity, seconds=10.0, cap=4000))
        rss_after = rss_mb(server.proc.pid)

    statuses = [r.status_code for _, r, _ in results]
    ok = [(t, r, s) for t, r, s in results if r.status_code == 200]
    refused = [r for _, r, _ in results if r.status_code == 429]
    latencies = sorted(s for _, _, s in ok)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    report = {
        "capacity_rps": round(capacity, 1),
        "offered_rps": round(2 * capacity, 1),
        "sent": len(results),
        "ok": len(ok),
        "refused_429": len(refused),
        "failed": len(results) - len(ok) - len(refused),
        "admitted_p99_s": round(p99, 3),
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
    }
    Path(os.environ.get("TMPDIR", "/tmp"), "overload-report.json").write_text(json.dumps(report))
    print("overload:", report)
    assert all(s in (200, 429) for s in statuses), sorted(set(statuses))
    assert refused, "twice the capacity should have filled the queue"
    assert all(int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["type"] == "rate_limit_error" for r in refused)
    for texts, r, _ in ok:
        got = [d["embedding"] for d in r.json()["data"]]
        np.testing.assert_allclose(got, [reference[t] for t in texts], atol=1e-5)
    # The stated bound: an admitted request waits for at most the queue limit (2,000 tokens) plus two 1,024-token
    # batches in flight, ~1.5 s of work at the capacity measured on a quiet box (p99 there 2.2-2.7 s). The load
    # generator shares the 2 cores, and other work on the box slows both alike, so the bound is three times that work
    # at the capacity measured in this run (5 s at least): a queue that were not bounded would wait out the whole
    # 10 s of backlog offered at twice the capacity.
    tokens_per_request = np.mean([sum(map(len, minilm.tokenize(request_inputs(k)))) for k in range(len(BODIES))])
    bounded_work_s = (2000 + 2 * 1024) / tokens_per_request / capacity
    assert p99 < max(5.0, 3 * bounded_work_s), report
    assert rss_after - rss_before < 200


def test_sigterm_while_the_model_is_still_loading_exits_at_once(tmp_path):
    """A model whose weights never arrive (a FIFO nobody writes: a hub download that hangs): the loading thread never
    ends, and SIGTERM must not wait for it."""
    folder = tmp_path / "never-arrives"
    folder.mkdir()
    for item in (NOMIC / "nomic-text-tiny").iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            (folder / item.name).write_bytes(item.read_bytes())
    os.mkfifo(folder / "model.safetensors")
    server = ServerProcess("--model", str(folder))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{server.base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert httpx.get(f"{server.base}/ready").status_code == 503  # still loading
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
        assert time.monotonic() - start < 5
    finally:
        server.stop()
