"""Builds the HTTP front end's aiohttp Application; the composition root runs it."""

from __future__ import annotations

from aiohttp import web

from gateway.http.endpoints import HttpEndpoints
from gateway.http.status import error_middleware
from gateway.service import InferenceService
from gateway.settings import Limits


def create_http_app(service: InferenceService, limits: Limits) -> web.Application:
    """Routes are registered once here; the runner freezes the router when it starts."""
    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=[error_middleware])
    app.router.add_routes(HttpEndpoints(service, limits).routes())
    return app
