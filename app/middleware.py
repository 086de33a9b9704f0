"""One pure-ASGI middleware for what every request shares: a request id, the body's limits (size, deadline, the
shared upload budget), in-flight tracking, request metrics and the access log. Pure ASGI (not BaseHTTPMiddleware)
so client disconnects still reach handlers."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

from starlette.requests import ClientDisconnect

from app.errors import APIError, api_of, draining, error_body
from app.logs import FIELDS, logfmt
from app.metrics import NO_MODEL

access_log = logging.getLogger("app.access")
error_log = logging.getLogger("app")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CLIENT_CLOSED = 499  # nginx's status for a client that went away before its answer
CLOSE = {"Connection": "close"}  # the rest of an unread body cannot be skipped: the connection ends with the answer


class Uploads:
    """The bodies still arriving, over all connections: the bytes they hold against one budget, and their deadlines,
    so a shutdown can cut them all at once."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.held_bytes = 0
        self.waiting: set[asyncio.Timeout] = set()
        self.cut = False

    def cut_all(self) -> None:
        """Shutdown: every body still arriving gets its 503 now, and later ones at once."""
        self.cut = True
        now = asyncio.get_running_loop().time()
        for deadline in self.waiting:
            deadline.reschedule(now)


class Body:
    """A request's receive channel: its body under the size limit, the deadline and the shared upload budget; once
    the body is in, what follows (the client's disconnect) is passed through for as long as the work takes."""

    def __init__(self, receive, uploads: Uploads, max_bytes: int, deadline: float):
        self.receive, self.uploads, self.max_bytes, self.deadline = receive, uploads, max_bytes, deadline
        self.received = self.held = 0
        self.done = self.disconnected = False

    async def __call__(self):
        if self.done:
            message = await self.receive()
        else:
            message = await self._next_chunk()
        if message["type"] == "http.disconnect":
            self.disconnected = self.done = True
            self.release()
        return message

    async def _next_chunk(self):
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() if self.uploads.cut else self.deadline) as deadline:
                self.uploads.waiting.add(deadline)
                try:
                    message = await self.receive()
                finally:
                    self.uploads.waiting.discard(deadline)
        except TimeoutError:
            self.release()
            if self.uploads.cut:
                raise draining(**CLOSE) from None
            raise APIError(408, "The request body did not arrive in time", code="body_timeout", headers=CLOSE) from None
        if message["type"] != "http.request":
            return message
        size = len(message.get("body", b""))
        self.received += size
        if self.received > self.max_bytes:
            self.release()
            raise APIError(413, f"Request body over {self.max_bytes} bytes", code="body_too_large", headers=CLOSE)
        if not message.get("more_body", False):
            self.done = True
            self.release()
        else:
            self.held += size
            self.uploads.held_bytes += size
            if self.uploads.held_bytes > self.uploads.budget_bytes:
                self.release()
                raise APIError(
                    429,
                    "The server is receiving too many request bodies at once; retry after the Retry-After seconds",
                    code="overloaded",
                    headers={"Retry-After": "1", **CLOSE},
                )
        return message

    def release(self) -> None:
        """The body is in (or never will be): its bytes leave the upload budget."""
        self.uploads.held_bytes -= self.held
        self.held = 0


class RequestMiddleware:
    def __init__(self, app, runtime, max_body_bytes: int, body_timeout_s: float):
        self.app, self.runtime, self.max_body_bytes, self.body_timeout_s = app, runtime, max_body_bytes, body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        start = time.perf_counter()
        status: int | None = None
        rt = self.runtime
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        body = Body(receive, rt.uploads, self.max_body_bytes, deadline)

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                rt.unanswered.discard(task)
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        length = headers.get(b"content-length")
        task = asyncio.current_task()
        rt.unanswered.add(task)
        rt.request_started()
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                message = f"Request body over {self.max_body_bytes} bytes"
                await self._reject(send_wrapper, scope, 413, message, "body_too_large", close=True)
            else:
                await self.app(scope, body, send_wrapper)
        except ClientDisconnect:
            pass  # gone while its body was read: a 499 and its access line, not a fault
        except asyncio.CancelledError:
            # only a shutdown cancels a request (the drain at its deadline, uvicorn at the end of its grace): the
            # request still gets an answer in our shape, and uvicorn (the task's owner) sees it finished, not broken
            if status is None and not body.disconnected:
                await self._reject(send_wrapper, scope, 503, "The server is shutting down", "draining")
        except Exception as exc:  # a real server fault: a 500 in the route's API's shape, logged with the request id
            error_log.exception("request %s failed: %s", request_id, exc)
            if status is not None:  # too late for an error response
                raise
            message = f"Internal server error (request id {request_id})"
            await self._reject(send_wrapper, scope, 500, message, "internal_error")
        finally:
            body.release()
            rt.unanswered.discard(task)
            model = state.get("model", NO_MODEL)  # set by the route once it knows the model (Runtime.bind)
            rt.request_finished(model)
            if status is None:  # no answer went out: the client left first (or the fault left nothing to send)
                status = CLIENT_CLOSED if body.disconnected else 500
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            label = getattr(route, "path", "other")
            rt.metrics.requests.labels(model, label, str(status)).inc()
            rt.metrics.request_duration.labels(model, label).observe(elapsed)
            self._log(scope, request_id, status, elapsed, state)

    @staticmethod
    async def _reject(send, scope, status: int, message: str, code: str, close: bool = False) -> None:
        status, payload = error_body(status, message, None, code, api_of(scope))
        body = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers + [(b"connection", b"close")] if close else headers,
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _log(scope, request_id: str, status: int, elapsed: float, state: dict) -> None:
        record = {
            "request_id": request_id,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": status,
            "latency_ms": round(elapsed * 1000, 2),
            "tokens": state.get("tokens"),
            "inputs": state.get("inputs"),
            "client": (scope.get("client") or ("-",))[0],
        }
        if "input_text" in state:  # only with the debug setting log_inputs
            record["input"] = state["input_text"]
        access_log.info(logfmt(record), extra={FIELDS: record})  # escaped by app.logs' formatters, text or JSON
