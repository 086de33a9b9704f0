"""Every error the server returns, in the shape of the API the request came through:

- OpenAI (and Infinity, vLLM): `{"error": {"message", "type", "param", "code"}}`
- TEI: `{"error", "error_type"}`, with TEI's statuses: 400 `empty`, 413 and 422 `validation` (422 `tokenizer` for text
  the tokenizer cannot take), 424 `backend` (the model failed), 429 `overloaded`, 503 `unhealthy`
- Cohere: `{"message"}` with the HTTP status (what the cohere SDK reads into its typed errors)

The service raises one neutral `APIError` (status, message, param, code); the shape is chosen here, by the route's path
or by what the route recorded (`/tokenize` answers in TEI's shape to a TEI body)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

OPENAI, TEI, COHERE = "openai", "tei", "cohere"
# routes that are not OpenAI-shaped; every other path (and an unknown one) answers OpenAI's shape
API_OF_PATH = {
    "/embed": TEI,
    "/embed_all": TEI,
    "/rerank": TEI,
    "/similarity": TEI,
    "/decode": TEI,
    "/info": TEI,
    "/": TEI,
    "/v1/rerank": COHERE,
    "/v2/rerank": COHERE,
    "/v2/embed": COHERE,
}
TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
TEI_EMPTY_CODES = {"empty_input"}  # TEI's 400 "empty"; its other input errors are 413 or 422 "validation"
# what TEI's validation refuses (413): an input over the token limit, more inputs or tokens than a request may hold;
# the rest of our 400s are malformed bodies, TEI's 422 (what its JSON extractor answers)
TEI_TOO_LARGE = {"context_length_exceeded", "too_many_inputs", "max_tokens_per_request"}
TEI_KEEP_400 = {"wrong_model_kind"}  # a rerank request to an embedding model (and back): 400 naming its kind

LONG_HINT = "Shorten it, or set long_input to 'truncate' or 'chunk'."  # how an OpenAI-route client asks for truncation
LONG_HINTS = {TEI: "Shorten it, or set truncate to true.", COHERE: "Shorten it, or set truncate to END or START."}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def draining(**headers: str) -> APIError:
    """The answer to work that comes (or is still unanswered) while the server shuts down: retry on another replica."""
    return APIError(503, "The server is shutting down", code="draining", headers={"Retry-After": "1", **headers})


def api_of(scope: MutableMapping[str, Any]) -> str:
    """The API a request speaks: what its route recorded, else its path's."""
    return scope.get("state", {}).get("api") or API_OF_PATH.get(scope.get("path", ""), OPENAI)


def tei_status(status: int, code: str | None) -> tuple[int, str]:
    """Our status and code -> TEI's status and error_type."""
    if status == 400:
        if code in TEI_EMPTY_CODES:
            return 400, "empty"
        if code in TEI_TOO_LARGE:
            return 413, "validation"
        return (400, "validation") if code in TEI_KEEP_400 else (422, "validation")
    if status == 429:
        return 429, "overloaded"
    if status == 503:
        return 503, "unhealthy"
    if status >= 500:
        return 424, "backend"
    return status, "validation"


def printable(text: str | None) -> str | None:
    """Client text echoed into an error can hold lone surrogates (valid JSON escapes, not encodable as UTF-8):
    they are written as `\\udXXX` escapes instead of failing the response."""
    return text if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               api: str = OPENAI) -> tuple[int, dict[str, Any]]:
    """(status, body) of an error in `api`'s shape."""
    message, param = printable(message) or "", printable(param)
    if code == "context_length_exceeded" and api in LONG_HINTS:  # the service names the OpenAI routes' field
        message = message.replace(LONG_HINT, LONG_HINTS[api])
    if api == TEI:
        status, error_type = tei_status(status, code)
        return status, {"error": message, "error_type": error_type}
    if api == COHERE:
        return status, {"message": message}
    return status, {
        "error": {"message": message, "type": TYPES.get(status, "invalid_request_error"), "param": param, "code": code}
    }


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    api: str = OPENAI,
) -> JSONResponse:
    status, body = error_body(status, message, param, code, api)
    return JSONResponse(body, status_code=status, headers=headers)


def describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    """FastAPI's 422 detail -> one readable message and the offending parameter."""
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = loc[0] if loc else None
    where = ".".join(loc) if loc else "body"
    return f"Invalid value for '{where}': {first.get('msg', 'invalid request')}", param


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers, api_of(request.scope))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation(exc)
        return error_response(400, message, param, "invalid_value", api=api_of(request.scope))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        api = api_of(request.scope)
        if exc.status_code == 404:
            message = f"Unknown route: {request.method} {request.url.path}"
            return error_response(404, message, code="not_found", api=api)
        if exc.status_code == 405:
            return error_response(
                405, f"Method {request.method} not allowed on {request.url.path}", code="method_not_allowed", api=api
            )
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None), api=api)
