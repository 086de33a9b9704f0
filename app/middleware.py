"""One pure-ASGI middleware for what every request shares: a request id, the body-size limit, in-flight tracking,
request metrics and the access log. Pure ASGI (not BaseHTTPMiddleware) so client disconnects still reach handlers."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from app.errors import APIError, api_of, error_body
from app.metrics import NO_MODEL

access_log = logging.getLogger("app.access")
error_log = logging.getLogger("app")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestMiddleware:
    def __init__(self, app, runtime, max_body_bytes: int, log_json: bool):
        self.app, self.runtime, self.max_body_bytes, self.log_json = app, runtime, max_body_bytes, log_json

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        start = time.perf_counter()
        status = 500
        rt = self.runtime

        started = False

        async def send_wrapper(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0

        async def receive_wrapper():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise APIError(413, f"Request body over {self.max_body_bytes} bytes", code="body_too_large")
            return message

        length = headers.get(b"content-length")
        rt.request_started()
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await self._reject(
                    send_wrapper, scope, 413, f"Request body over {self.max_body_bytes} bytes", "body_too_large"
                )
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:  # a real server fault: a 500 in the route's API's shape, logged with the request id
            error_log.exception("request %s failed: %s", request_id, exc)
            if started:  # too late for an error response
                raise
            message = f"Internal server error (request id {request_id})"
            await self._reject(send_wrapper, scope, 500, message, "internal_error")
        finally:
            model = state.get("model", NO_MODEL)  # set by the route once it knows the model (Runtime.bind)
            rt.request_finished(model)
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            label = getattr(route, "path", "other")
            rt.metrics.requests.labels(model, label, str(status)).inc()
            rt.metrics.request_duration.labels(model, label).observe(elapsed)
            self._log(scope, request_id, status, elapsed, state)

    @staticmethod
    async def _reject(send, scope, status: int, message: str, code: str) -> None:
        status, payload = error_body(status, message, None, code, api_of(scope))
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _log(self, scope, request_id: str, status: int, elapsed: float, state: dict) -> None:
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
        if self.log_json:
            access_log.info(json.dumps(record, ensure_ascii=False))
        else:
            access_log.info(" ".join(f"{k}={v}" for k, v in record.items() if v is not None))
