"""Slow and vanishing clients against `python -m app`, with raw sockets (what an attacker uses): a head trickled a
byte at a time, a connection that never speaks, a body that stalls, uploads that would fill memory, a connection
flood past the cap, and clients that disconnect mid-request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time

import httpx
import pytest

from tests.app.conftest import server_process
from tests.app.test_shutdown_and_overload import rss_mb
from tests.conftest import NOMIC

HEAD_TIMEOUT_S, BODY_TIMEOUT_S, KEEP_ALIVE_S = 1.0, 2.0, 3
MIB = 1024 * 1024
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def guarded():
    with server_process(
        "--model",
        str(NOMIC / "nomic-text-tiny"),
        "--header-timeout-s",
        str(HEAD_TIMEOUT_S),
        "--body-timeout-s",
        str(BODY_TIMEOUT_S),
        "--keep-alive-s",
        str(KEEP_ALIVE_S),
        "--max-connections",
        "300",
    ) as server:
        yield server


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_by_server(sock: socket.socket) -> bool:
    """Whatever the server sent, then EOF (or a reset): it closed the connection."""
    try:
        sock.settimeout(0.05)
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict, bool]:
    """(status, JSON body, whether the server then closed the connection)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body[:length]), closed_by_server_within(sock, 2.0)


def closed_by_server_within(sock: socket.socket, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if closed_by_server(sock):
            return True
    return False


def post_head(length: int, path: str = "/v1/embeddings") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def statuses(base: str) -> dict[str, float]:
    """/v1/embeddings requests by status (over every `model` label), from /metrics."""
    text = httpx.get(f"{base}/metrics").text
    counts: dict[str, float] = {}
    for status, count in re.findall(r'embed_requests_total\{[^}]*route="/v1/embeddings",status="(\d+)"\} (\S+)', text):
        counts[status] = counts.get(status, 0.0) + float(count)
    return counts


def test_a_head_trickled_byte_by_byte_is_closed_while_others_are_served(guarded):
    trickling = [connect(guarded.port) for _ in range(200)]
    keep_alive = connect(guarded.port)  # one real request first, then a trickled second head on the same connection
    keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert keep_alive.recv(65536).startswith(b"HTTP/1.1 200")
    trickling.append(keep_alive)
    start = time.monotonic()
    for sock in trickling:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
    open_ones = list(trickling)
    while open_ones and time.monotonic() - start < HEAD_TIMEOUT_S + 4:
        for sock in list(open_ones):
            try:
                sock.sendall(b"X")  # a header byte at a time, never the blank line
            except OSError:
                open_ones.remove(sock)
                continue
            if closed_by_server(sock):
                open_ones.remove(sock)
        r = httpx.post(f"{guarded.base}/v1/embeddings", json={"input": "a real client"}, timeout=5)
        assert r.status_code == 200
        time.sleep(0.2)
    assert not open_ones, f"{len(open_ones)} trickling connections still open after {HEAD_TIMEOUT_S + 4} s"
    assert time.monotonic() - start >= HEAD_TIMEOUT_S * 0.9  # closed by the deadline, not at once


def test_a_connection_that_sends_nothing_closes_after_the_keep_alive_timeout(guarded):
    silent = connect(guarded.port)
    time.sleep(KEEP_ALIVE_S - 1)
    assert not closed_by_server(silent)
    assert closed_by_server_within(silent, 3)


def test_a_stalled_body_gets_a_408_and_the_connection_closes(guarded):
    sock = connect(guarded.port)
    sock.sendall(post_head(1000) + b'{"input": "half a bo')
    start = time.monotonic()
    status, body, closed = read_response(sock, BODY_TIMEOUT_S + 5)
    waited = time.monotonic() - start
    assert status == 408 and body["error"]["code"] == "body_timeout" and closed
    assert BODY_TIMEOUT_S * 0.9 <= waited < BODY_TIMEOUT_S + 3
    assert "Traceback" not in guarded.output()


def test_past_the_connection_cap_idle_and_half_sent_connections_make_room(guarded):
    flood = [connect(guarded.port) for _ in range(400)]  # the cap is 300
    for sock in flood[::2]:
        sock.sendall(b"GET /health HTTP/1.1\r\n")
    time.sleep(0.5)
    for _ in range(5):  # new clients keep getting in, each pushing out the oldest half-sent or idle one
        r = httpx.post(f"{guarded.base}/v1/embeddings", json={"input": "still served"}, timeout=5)
        assert r.status_code == 200
    assert sum(closed_by_server(sock) for sock in flood) >= 100
    for sock in flood:
        sock.close()


def test_a_client_disconnect_is_a_499_and_one_log_line(guarded):
    before = statuses(guarded.base)
    gone_mid_body = connect(guarded.port)
    gone_mid_body.sendall(
        post_head(1000).replace(b"\r\n\r\n", b"\r\nX-Request-ID: gone-mid-body\r\n\r\n") + b'{"input": "ab'
    )
    time.sleep(0.3)
    gone_mid_body.close()
    gone_waiting = connect(guarded.port)
    body = json.dumps({"input": ["a longer text to embed " * 40] * 64}).encode()
    gone_waiting.sendall(post_head(len(body)).replace(b"\r\n\r\n", b"\r\nX-Request-ID: gone-waiting\r\n\r\n") + body)
    time.sleep(0.05)
    gone_waiting.close()
    log = guarded.output_containing("gone-waiting", timeout=10)
    log = guarded.output_containing("gone-mid-body", timeout=10)
    after = statuses(guarded.base)
    assert after.get("499", 0) - before.get("499", 0) == 2
    assert after.get("500") == before.get("500")
    for request_id in ("gone-mid-body", "gone-waiting"):
        lines = [line for line in log.splitlines() if request_id in line]
        assert len(lines) == 1 and "status=499" in lines[0], lines
    assert "Traceback" not in log and "ClientDisconnect" not in log


def test_stalled_uploads_hold_at_most_the_upload_budget():
    """Ten 15 MiB uploads that stall near their end: past the 64 MiB budget the rest get a 429 at once (the budget
    is what bounds memory), and those held get their 408 at the body deadline; small requests are served meanwhile.
    A 429'd client may see a reset instead of its answer (its unread bytes), so the counts come from /metrics."""
    args = ("--body-timeout-s", "4", "--upload-buffer-bytes", str(64 * MIB), "--max-body-bytes", str(16 * MIB))
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), *args) as server:
        rss_before, peak = rss_mb(server.proc.pid), 0.0
        size = 15 * MIB
        uploads = []

        def upload(sock: socket.socket) -> None:
            with contextlib.suppress(OSError):
                sock.sendall(post_head(size) + b'{"input": "' + b"a" * (size - 100))

        threads = []
        for _ in range(10):
            sock = connect(server.port)
            uploads.append(sock)
            threads.append(threading.Thread(target=upload, args=(sock,)))
            threads[-1].start()
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            peak = max(peak, rss_mb(server.proc.pid))
            time.sleep(0.05)
        assert httpx.post(f"{server.base}/v1/embeddings", json={"input": "small"}, timeout=5).status_code == 200
        for thread in threads:
            thread.join(10)
        time.sleep(4.0)  # past the body deadline
        counts = statuses(server.base)
        for sock in uploads:
            assert closed_by_server_within(sock, 2.0)
    assert counts.get("429", 0) >= 5 and counts.get("429", 0) + counts.get("408", 0) == 10, counts
    # before the budget each stalled upload held ~19 MB, for as long as its client liked
    assert peak - rss_before < 160, (rss_before, peak)


def test_a_body_refused_before_it_is_read_still_reaches_a_client_that_keeps_writing(guarded):
    """A 17 MiB body is refused by its Content-Length (413) before it is read. httpx's async client keeps writing its
    body before it reads: with the connection closed at once, the unread bytes made the kernel reset it and the client
    saw a ReadError (6 tries of 6), not the answer. The server now lingers (reads and drops) until the client is
    done."""
    raw = b'{"input": "' + b"a" * (17 * MIB) + b'"}'

    async def post_twice():
        async with httpx.AsyncClient(timeout=30) as client:
            return [await client.post(f"{guarded.base}/v1/embeddings", content=raw, headers=JSON) for _ in range(2)]

    for r in asyncio.run(post_twice()):
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
