"""uvicorn with what a server facing the open network needs and uvicorn lacks: a deadline for a request's head (h11
waits forever, so a client trickling a header byte a second held its socket for good), and one shutdown budget that
signals cannot break.

Shutdown: the first SIGTERM or SIGINT starts the drain (`Runtime.drain`: /ready 503, new work 503, bodies still
arriving cut with a 503, admitted requests answered); uvicorn then closes the connections in what is left of the
budget. A second signal hurries the drain (`Runtime.hurry`) and never force-quits, since uvicorn's force-quit
cancels requests into plain-text 500s. The process exits 0 within `shutdown_grace_s`, signals included: uvicorn
re-raises a caught signal after its shutdown (SIGINT then exits -2), so they are handled here and never captured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.errors import error_body

# Of the budget, the drain's deadline leaves CLOSE_RESERVE_S for uvicorn to close the connections, of which it leaves
# EXIT_RESERVE_S for the lifespan shutdown and the exit (0.3-0.4 s measured); the rest is margin for an event loop
# that runs late on busy cores (up to 1.8 s measured with 2 cores shared by a dozen busy processes).
CLOSE_RESERVE_S = 3.0
EXIT_RESERVE_S = 1.5
# asyncio accepts up to `backlog` connections per loop tick, and a closed connection frees its descriptor only ticks
# later, so bursts run past the cap: it is kept to half the descriptors left after the process's own (a running
# server holds about 30). Running out of descriptors locks new clients out, and asyncio then retries in a loop that
# logged 85,000 errors in 30 s here.
BACKLOG = 128
OWN_FILES = 128
# A connection closed while its client still sends the request body (an early 413, 408, 429 or 503) reads and drops
# what comes for up to this long after its answer, so the client reads that answer (nginx's lingering close)
LINGER_S = 2.0
_, _BUSY = error_body(503, "Too many connections; retry after the Retry-After seconds", code="overloaded")
_BUSY_BODY = json.dumps(_BUSY)
BUSY = (
    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\n"
    f"content-length: {len(_BUSY_BODY)}\r\n\r\n{_BUSY_BODY}"
).encode()


class LingeringTransport:
    """A connection's transport as uvicorn sees it, with one change: closing a connection whose client is still
    sending its body sends the answer and a FIN, then reads and drops what arrives until the client closes too, or
    for LINGER_S. Closed at once, the unread bytes made the kernel reset the connection, and a client still writing
    its body (httpx's async client, 6 tries of 6 with a 17 MiB body) saw the reset instead of its 413."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol) -> None:
        self.transport, self.protocol = transport, protocol
        self.lingering: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str):
        return getattr(self.transport, name)

    def is_closing(self) -> bool:
        return self.lingering is not None or self.transport.is_closing()

    def close(self) -> None:
        t = self.transport
        if self.lingering is None and not t.is_closing() and self.protocol.conn.their_state is h11.SEND_BODY:
            t.write_eof()  # after the answer still buffered
            t.resume_reading()
            self.lingering = self.protocol.loop.call_later(LINGER_S, t.close)
        else:  # a second close (a shutdown, the cap making room) ends the lingering
            if self.lingering is not None:
                self.lingering.cancel()
            t.close()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines and a connection cap. A connection that has sent nothing yet is idle and
    closes after the keep-alive timeout, like one between requests; from a head's first byte, the whole head must
    arrive within `header_timeout_s`. Past `max_connections`, each new connection closes the one that has waited
    longest for a head to complete (then the longest idle): a flood of idle or trickling sockets never uses up the
    process's file descriptors, which locked every new client out. When every connection has a request in
    progress, the new one is answered 503 instead."""

    def __init__(self, *args, header_timeout_s: float, max_connections: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_connections = header_timeout_s, max_connections
        self.head_deadline: asyncio.TimerHandle | None = None
        self.waiting_since = 0.0  # since when it has sent nothing, or the part of a head it has sent

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(LingeringTransport(transport, self))  # type: ignore[arg-type]
        self.waiting_since = self.loop.time()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        if len(self.connections) > self.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering is not None:  # type: ignore[attr-defined]
            return  # the rest of a body already answered
        if self.head_deadline is None and self._between_requests():
            self.waiting_since = self.loop.time()
            self.head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)
        super().data_received(data)  # cancels the keep-alive timer; parses what it can
        if self.head_deadline is not None and not self._between_requests():
            self.head_deadline.cancel()
            self.head_deadline = None

    def on_response_complete(self) -> None:
        self.waiting_since = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        if self.transport.lingering is not None:  # type: ignore[attr-defined]
            self.transport.lingering.cancel()  # type: ignore[attr-defined]
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        waiting = [
            c for c in self.connections if isinstance(c, GuardedH11Protocol) and c is not self and c._between_requests()
        ]
        if waiting:  # half-sent heads first, then the longest idle
            victim = min(waiting, key=lambda c: (c.head_deadline is None, c.waiting_since))
            victim.transport.close()
        else:
            self.transport.write(BUSY)
            self.transport.close()


def guarded_protocol(header_timeout_s: float, max_connections: int):
    """uvicorn's `http` setting takes a protocol class (or factory) as well as a name."""
    return partial(GuardedH11Protocol, header_timeout_s=header_timeout_s, max_connections=max_connections)


def connection_limit(wanted: int) -> int:
    """`wanted`, within half the open-file limit left after OWN_FILES (the soft limit is first raised to the hard
    one: the soft default, often 1,024, is a historical value)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return max(1, min(wanted, (soft - OWN_FILES) // 2))


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime, budget_s: float) -> None:
        super().__init__(config)
        self.runtime, self.budget_s = runtime, budget_s
        self.fatal: str | None = None
        self.shutting_down: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    async def serve(self, sockets=None) -> None:
        await super().serve(sockets)
        # asyncio.run's teardown joins the default executor's threads: a model still loading (a hub download takes
        # minutes; the packaged MiniLM held a SIGTERM'd server 10 s) would keep the process past its budget. A fresh
        # executor leaves those threads to `python -m app`'s os._exit (app/__main__.py:run).
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))

    def handle_exit(self, sig: int, frame) -> None:  # uvicorn's signal handler; runs between two bytecodes
        if not self.started or self.loop is None:
            self.should_exit = True  # nothing admitted yet: stop at once
            return
        self.runtime.draining = True  # /ready -> 503 now, before the loop even runs the drain
        self.loop.call_soon_threadsafe(self._on_signal)

    def _on_signal(self) -> None:
        if self.shutting_down is None:
            self.shutting_down = asyncio.ensure_future(self._shut_down())
        else:
            self.runtime.hurry()

    async def _shut_down(self) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.budget_s
        await self.runtime.drain(end - CLOSE_RESERVE_S)
        # uvicorn waits this long for connections to close (a response still going out to a slow reader), then
        # cancels their tasks; the middleware answers a cancelled request a JSON 503 if it had no answer yet
        self.config.timeout_graceful_shutdown = max(0.1, end - EXIT_RESERVE_S - loop.time())  # type: ignore[assignment]
        self.should_exit = True

    def stop_with(self, reason: str) -> None:
        self.fatal = reason
        self.should_exit = True
