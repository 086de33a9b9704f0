"""Idle keep-alive connections: the server holds them for --keep-alive-s (75 s by default, above the 60 s idle timeout
of most load balancers, so the balancer closes first and never reuses a connection the server just dropped)."""

from __future__ import annotations

import socket
import time

from tests.app.conftest import server_process
from tests.conftest import NOMIC

REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"


def _idle_connection_open_after(port: int, idle_s: float) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(REQUEST)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(idle_s)
        sock.settimeout(0.3)
        try:
            while sock.recv(65536):  # whatever of the response came in a later segment
                pass
            return False  # b"": the server closed it
        except TimeoutError:
            return True  # nothing more to read and not closed: still open


def test_idle_connection_kept_past_uvicorns_5_s_default(nomic_server):
    assert _idle_connection_open_after(nomic_server.port, 6.0)


def test_idle_connection_closed_after_keep_alive_s():
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--keep-alive-s", "1") as server:
        assert not _idle_connection_open_after(server.port, 2.0)
