"""The one place that turns an exception into a gRPC status.

Rules of this module:
- ``STATUS`` is the only ErrorCode -> grpc.StatusCode table of the gRPC front end.
- A ``ServingError`` is expected: its message is safe to show and it is not logged (it is counted elsewhere).
- Anything else is unexpected: the client sees INTERNAL "internal error" and the traceback is logged exactly
  once, here.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, NoReturn

import grpc

from runtime.errors import ErrorCode, ServingError

log = logging.getLogger("onnxgate.grpc")

STATUS: MappingProxyType[ErrorCode, grpc.StatusCode] = MappingProxyType(
    {
        ErrorCode.INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
        ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
        ErrorCode.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
        ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
        ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
        ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
        ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
        ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
        ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
        ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
        ErrorCode.CANCELLED: grpc.StatusCode.CANCELLED,
    }
)
assert set(STATUS) == set(ErrorCode), "every ErrorCode needs a gRPC status"

INTERNAL_MESSAGE = "internal error"
RETRY_AFTER = "retry-after"


def describe(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(status code, client-safe message, trailing metadata) for `exc`; logs it if it was unexpected."""
    if isinstance(exc, ServingError):
        retry_after = getattr(exc, "retry_after_s", None)
        trailers = ((RETRY_AFTER, str(retry_after)),) if retry_after is not None else ()
        return STATUS[exc.code], exc.message, trailers
    log.error("unexpected error in a gRPC handler", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, ()


def error_message(exc: BaseException) -> str:
    """The in-band error text of a streamed response (logs unexpected errors, as `describe` does)."""
    return describe(exc)[1]


async def abort(context: Any, exc: BaseException) -> NoReturn:
    """End the RPC with the status that `exc` maps to. Never returns (``context.abort`` raises)."""
    code, message, trailers = describe(exc)
    await context.abort(code, message, trailers)
    raise AssertionError("context.abort returned")  # pragma: no cover - grpc.aio always raises
