"""Builds the HTTP front end's aiohttp Application; the composition root runs it.

Rules of this module:
- With ``inference_auth`` on, every path but the two health probes needs ``Authorization: Bearer <token>``
  (checked before routing, so an unknown path tells a caller without a token nothing). With it off, the
  token middleware is not installed at all: the request path pays nothing for a feature it does not use.
- The token is never logged and never echoed back.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.control.auth import Authenticator
from gateway.control.errors import Unauthenticated
from gateway.http.endpoints import HttpEndpoints
from gateway.http.status import HTTP_STATUS, Handler, error_middleware, json_error
from gateway.service import InferenceService
from gateway.settings import Limits

# Probes (load balancers, Kubernetes) carry no token.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="onnxgate"'}


def token_middleware(auth: Authenticator) -> Middleware:
    """Refuse (401) a request without a valid bearer token, except the health probes."""

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            try:
                auth.check_inference(request.headers.get("Authorization"))
            except Unauthenticated as exc:
                return json_error(HTTP_STATUS[exc.code], exc.message, _CHALLENGE)
        return await handler(request)

    return check_token


def create_http_app(
    service: InferenceService, limits: Limits, auth: Authenticator | None = None
) -> web.Application:
    """Routes are registered once here; the runner freezes the router when it starts.

    `auth` is given only when inference needs a token (``inference_auth``).
    """
    middlewares = [error_middleware] if auth is None else [error_middleware, token_middleware(auth)]
    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=middlewares)
    app.router.add_routes(HttpEndpoints(service, limits).routes())
    return app
