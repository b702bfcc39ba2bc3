"""The control plane's own error classes; each carries its code, so the one HTTP table maps it."""

from __future__ import annotations

from runtime.errors import ErrorCode, ServingError


class Unauthenticated(ServingError):
    """No credentials, or credentials that match no token (HTTP 401)."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(ServingError):
    """A known caller whose role does not allow the call (HTTP 403)."""

    code = ErrorCode.PERMISSION_DENIED


class StaleRevision(ServingError):
    """If-Match named a revision that is no longer current (HTTP 412): someone else changed it first."""

    code = ErrorCode.FAILED_PRECONDITION
