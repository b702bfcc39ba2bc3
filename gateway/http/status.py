"""The one place where an error becomes an HTTP answer.

Rules of this module:
- Every error body is JSON ``{"error": "<message>"}``: routing misses (404, 405), oversize bodies (413)
  and our own ServingErrors alike. Never an HTML page, never a traceback.
- Expected errors (ServingError, aiohttp's HTTPException) are answered, not logged; anything else is a
  bug: one logged traceback and a generic 500, so no internal detail reaches the client.
- A 408 (a body that did not arrive in time) is sent at once and its connection closed: no lingering.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from runtime.errors import ErrorCode, ServingError

log = logging.getLogger("onnxgate.http")

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARG: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNSUPPORTED: 501,
    ErrorCode.INTERNAL: 500,
    ErrorCode.RESOURCE_EXHAUSTED: 413,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.FAILED_PRECONDITION: 412,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.CANCELLED: 499,
}

_JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    try:
        body = orjson.dumps({"error": message})
    except orjson.JSONEncodeError:  # a message quoting client text that is not valid Unicode
        body = orjson.dumps({"error": message.encode("utf-8", "backslashreplace").decode("utf-8")})
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers)


def error_response(exc: BaseException) -> web.Response:
    """The answer for an exception raised while serving; logs only the unexpected ones."""
    if isinstance(exc, ServingError):
        headers = None
        retry = getattr(exc, "retry_after_s", None)
        if isinstance(retry, int | float) and not isinstance(retry, bool) and retry > 0:
            headers = {"Retry-After": str(math.ceil(retry))}
        return json_error(HTTP_STATUS.get(exc.code, 500), exc.message, headers)
    log.error("unexpected error while serving an HTTP request", exc_info=exc)
    return json_error(500, "internal error")


def _http_exception_response(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        message = f"no such endpoint: {request.method} {request.path}"
    elif exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        message = f"method {request.method} is not allowed for {request.path} (allowed: {allowed})"
    else:
        text = exc.text or ""
        message = text if text and not text.startswith(f"{exc.status}:") else exc.reason
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
    return json_error(exc.status, message, headers or None)


async def _answer_and_close(request: web.Request, response: web.Response) -> None:
    """Send `response` now, then close the connection at once.

    For a body that did not arrive in time (408): aiohttp would otherwise linger, reading the rest of the
    body for up to ``lingering_time`` seconds, which is just what a trickling client wants. The transport
    still flushes the answer before it closes.
    """
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are answers, not errors
            raise
        response = _http_exception_response(request, exc)
        if exc.status == 408:
            await _answer_and_close(request, response)
        return response
    except Exception as exc:
        return error_response(exc)
