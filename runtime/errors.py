"""The one error vocabulary of onnxgate.

Every error that can reach a client is a ``ServingError`` carrying an ``ErrorCode``. The codes are
Triton's; each protocol front end owns exactly one table that maps a code to its wire status, so the same
client mistake gets the same answer over HTTP and over gRPC. The runtime defines the vocabulary because it
is the lowest layer; the gateway adds its own subclasses but no new mapping logic.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARG = "INVALID_ARG"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    INTERNAL = "INTERNAL"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"  # overload: queue full, too large
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"  # stale If-Match revision
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    CANCELLED = "CANCELLED"


class ServingError(Exception):
    """An error with a protocol-neutral code and a message that is safe to show to the client."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value}: {self.message})"


class InvalidArgument(ServingError):
    code = ErrorCode.INVALID_ARG


class NotFound(ServingError):
    code = ErrorCode.NOT_FOUND


class Unavailable(ServingError):
    code = ErrorCode.UNAVAILABLE


class Unsupported(ServingError):
    code = ErrorCode.UNSUPPORTED


class InternalError(ServingError):
    code = ErrorCode.INTERNAL


class ResourceExhausted(ServingError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    code = ErrorCode.DEADLINE_EXCEEDED


class ModelLoadError(ServingError):
    """A model version could not be loaded; the message says why (kept as the model's not-ready reason)."""

    code = ErrorCode.UNAVAILABLE
