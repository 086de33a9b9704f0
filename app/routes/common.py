"""What the API routes share: the API-key check, strict JSON body parsing, picking the served model, and
racing a request's work against its client going away."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from app.errors import APIError
from app.runtime import EMBEDDING, Runtime, ServedModel, get_runtime

M = TypeVar("M", bound=BaseModel)
INPUT_SHAPES = (
    " ('input' must be a non-empty string, a list of strings, a list of token ids, or a list of token-id lists)"
)
T = TypeVar("T")


async def require_api_key(request: Request, rt: Runtime = Depends(get_runtime)) -> None:
    key = rt.settings.api_key
    if not key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # compare_digest takes the same time wherever the first difference is
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "Incorrect or missing API key: send `Authorization: Bearer KEY`", code="invalid_api_key")


async def require_ready(rt: Runtime = Depends(get_runtime)) -> Runtime:
    if rt.draining:
        raise APIError(503, "The server is shutting down", code="draining", headers={"Retry-After": "1"})
    if not rt.ready:
        raise APIError(503, "The model is still loading", code="not_ready", headers={"Retry-After": "5"})
    return rt


def pick_model(rt: Runtime, request: Request, name: str | None, kind: str = EMBEDDING) -> ServedModel:
    """The model a request names (when it names none, the first of `kind`): 404 if unknown, 400 if not of `kind`.
    From here on the request's metrics carry that model's label."""
    return rt.bind(request.scope["state"], rt.model(name, kind)).require(kind)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its JSON itself (see parse_body)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise APIError(400, f"Duplicate key '{key}' in the JSON body", param=key, code="invalid_json")
        out[key] = value
    return out


async def parse_body(request: Request, model: type[M]) -> M:
    """Strict JSON: the right content type, valid UTF-8 JSON, no duplicate keys, then the schema."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(415, f"Content-Type must be application/json, got '{ctype}'", code="unsupported_media_type")
    raw = await request.body()
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"The body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "The body's JSON is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        param = loc[0] if loc else None
        shape = INPUT_SHAPES if param == "input" else ""
        raise APIError(
            400,
            f"Invalid value for '{'.'.join(loc) or 'body'}': {first['msg']}{shape}",
            param=param,
            code="invalid_value",
        ) from None


async def until_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it (and its queued items) if the client disconnects first; None in that case."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()  # the batcher drops the request's queued items
    return None
