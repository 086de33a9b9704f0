"""What the API routes share: the API-key check, strict JSON body parsing, picking the served model, and
racing a request's work against its client going away."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from app.errors import APIError
from app.runtime import EMBEDDING, Runtime, ServedModel, get_runtime

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
LIST_PIECE = 256  # items serialised per orjson call (~6 ms for 384-wide vectors) before the event loop gets a turn


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


def json_body(*models: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its JSON itself (see parse_body): one model's schema, or any
    of several (a path that takes more than one API's body)."""
    schemas = [m.model_json_schema() for m in models]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise APIError(400, f"Duplicate key '{key}' in the JSON body", param=key, code="invalid_json")
        out[key] = value
    return out


def _no_json_constants(name: str) -> Any:
    raise APIError(400, f"The body is not valid JSON: {name} is not a JSON value", code="invalid_json")


async def parse_json(request: Request) -> dict[str, Any]:
    """Strict JSON: the right content type, valid UTF-8 JSON (no NaN/Infinity, no duplicate keys), an object. Every
    value JSON allows but Python refuses (an integer past Python's 4,300-digit limit, nesting past the recursion
    limit) is a 400 here, never a 500."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(415, f"Content-Type must be application/json, got '{ctype}'", code="unsupported_media_type")
    data = loads(await request.body())
    if not isinstance(data, dict):
        raise APIError(400, "The body must be a JSON object", code="invalid_json")
    return data


def loads(raw: bytes) -> Any:
    """orjson where its result provably equals the strict parse's, else the strict parse with its own errors.

    The strict parse (the stdlib's, with hooks) is ~2.5x slower: 0.39 s for a 15 MB body of token ids, held on the
    event loop, where orjson takes 0.16 s. orjson differs in three ways, each sent to the strict parse: what it
    rejects (lone surrogates, which the schema then explains, NaN, nesting past 1,024, 1e999); duplicate keys, which it
    merges, so the fast path needs a body whose one object is the top level (one `{`) and whose every structural `:`
    is a member it kept (the colons in the raw bytes, less those inside the top level's strings and lists of strings,
    must equal its keys; a `\\u003a` escape, a colon that is not in the raw bytes, sends it to the strict parse); and
    integers past 64 bits, which it reads as the nearest float: every integer field rejects such a value either way."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _strict_loads(raw)
    if isinstance(data, dict) and raw.count(b"{") == 1 and _colons_are_members(raw, data):
        return data
    return _strict_loads(raw)


def _colons_are_members(raw: bytes, data: dict[str, Any]) -> bool:
    if b"\\u003a" in raw or b"\\u003A" in raw:
        return False
    in_strings = 0
    for key, value in data.items():
        in_strings += key.count(":")
        if isinstance(value, str):
            in_strings += value.count(":")
        elif isinstance(value, list) and value and isinstance(value[0], str):
            in_strings += sum(v.count(":") for v in value if isinstance(v, str))
    return raw.count(b":") - in_strings == len(data)


def _strict_loads(raw: bytes) -> Any:
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_json_constants)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, and int() past sys.get_int_max_str_digits()
        raise APIError(400, f"The body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "The body's JSON is nested too deeply", code="invalid_json") from None


def validate(model: type[M], data: dict[str, Any]) -> M:
    """A parsed body against its schema; the first problem as a 400 naming its field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        param = loc[0] if loc else None
        if first["type"] == "input_shape":  # the message names the field and its accepted forms (app/schemas.py)
            raise APIError(400, first["msg"], param=param, code="invalid_value") from None
        raise APIError(
            400, f"Invalid value for '{'.'.join(loc) or 'body'}': {first['msg']}", param=param, code="invalid_value"
        ) from None
    except RecursionError:  # pydantic walks nested values recursively too
        raise APIError(400, "The body's JSON is nested too deeply", code="invalid_json") from None


async def parse_body(request: Request, model: type[M]) -> M:
    """`parse_json`, then the schema."""
    return validate(model, await parse_json(request))


async def dumps_list(items: Sequence[Any]) -> orjson.Fragment:
    """A long list (2,048 vectors: ~50 ms of orjson) serialised LIST_PIECE items at a time, yielding to the event loop
    between pieces so other requests (a query behind bulk work) are not held up for the whole response."""
    if len(items) <= LIST_PIECE:
        return orjson.Fragment(orjson.dumps(items, option=orjson.OPT_SERIALIZE_NUMPY))
    pieces = []
    for start in range(0, len(items), LIST_PIECE):
        if start:
            await asyncio.sleep(0)
        pieces.append(orjson.dumps(items[start : start + LIST_PIECE], option=orjson.OPT_SERIALIZE_NUMPY)[1:-1])
    return orjson.Fragment(b"[" + b",".join(pieces) + b"]")


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
