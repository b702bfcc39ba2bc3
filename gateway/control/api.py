"""The control API: an aiohttp app for the control listener. Handlers are thin: parse, call the controller.

Rules of this module:
- Every call but ``GET /openapi.json`` needs a caller (gateway.control.auth); GET needs any role, every
  other method an operator. The audit log records the token's name as the actor.
- Errors go through the one HTTP error table (gateway.http.status), so they read as they do on the
  inference API: JSON ``{"error": "..."}`` with the status of the error's code.
- A change is answered only after the controller returns, that is after the state is on disk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.control.auth import Authenticator, Principal
from gateway.control.controller import EndpointController
from gateway.control.errors import Unauthenticated
from gateway.control.openapi import OPENAPI
from gateway.control.state import EndpointState
from gateway.http.status import HTTP_STATUS, Handler, error_middleware, json_error
from gateway.observability.stats import endpoint_stats
from gateway.routing.roles import Role
from runtime.errors import InvalidArgument, NotFound, Unsupported
from runtime.repository import ModelEntry

MAX_BODY_BYTES = 1024 * 1024
MAX_AUDIT_LIMIT = 1000
MAX_SAMPLES_LIMIT = 1000
DEFAULT_SAMPLES_LIMIT = 100
_ROLES = frozenset(r.value for r in Role)

# The records snapshot (``InferenceService.snapshot()``; with several workers, the supervisor's merge).
SnapshotSource = Callable[[], Awaitable[dict[str, Any]]]
# (endpoint, version or None, role or None, limit) -> the latest payload samples, newest last.
SamplesSource = Callable[[str, str | None, str | None, int], Awaitable[list[dict[str, Any]]]]
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC = frozenset({"/openapi.json"})

AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
PRINCIPAL = web.RequestKey("principal", Principal)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _endpoint(state: EndpointState, status: int = 200) -> web.Response:
    return _json(state.to_json(), status, {"ETag": f'"{state.revision}"'})


def parse_if_match(value: str | None) -> int | None:
    """`If-Match: 3`, `"3"` or `W/"3"` -> 3; absent -> None (the change is unconditional)."""
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip().strip('"').strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise InvalidArgument(f"If-Match must be an endpoint revision (an integer), got {value!r}")
    return int(text)


def _query_int(request: web.Request, key: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise InvalidArgument(f"query parameter '{key}' must be an integer in [{low}, {high}], got {raw!r}")
    return int(raw)


def _model_state(entry: ModelEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "state": entry.state.value,
        "versions": sorted(entry.versions),
        "failed": {str(v): why for v, why in sorted(entry.failed.items())},
        "reason": entry.reason,
    }


def _client_common_name(request: web.Request) -> str | None:
    """The subject CN of the caller's TLS client certificate (verified by the listener's context)."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _PUBLIC:
        return await handler(request)
    auth = request.app[AUTHENTICATOR]
    try:
        request[PRINCIPAL] = auth.authenticate(
            request.headers.get("Authorization"),
            write=request.method not in _READS,
            common_name=_client_common_name(request) if auth.client_certs else None,
        )
    except Unauthenticated as exc:
        status = HTTP_STATUS[exc.code]
        return json_error(status, exc.message, {"WWW-Authenticate": 'Bearer realm="onnxgate-control"'})
    return await handler(request)


class _Handlers:
    def __init__(
        self,
        controller: EndpointController,
        snapshot_source: SnapshotSource | None = None,
        samples_source: SamplesSource | None = None,
    ) -> None:
        self.controller = controller
        self.snapshot_source = snapshot_source
        self.samples_source = samples_source

    @staticmethod
    async def _body(request: web.Request) -> Any:
        data = await request.read()
        if not data.strip():
            raise InvalidArgument("a JSON body is required")
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"the body is not valid JSON: {exc}") from None

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(OPENAPI)

    async def list_endpoints(self, request: web.Request) -> web.Response:
        return _json({"endpoints": [state.to_json() for state in self.controller.list()]})

    async def get_endpoint(self, request: web.Request) -> web.Response:
        return _endpoint(self.controller.get(request.match_info["name"]))

    async def put_endpoint(self, request: web.Request) -> web.Response:
        if_match = parse_if_match(request.headers.get("If-Match"))
        body = await self._body(request)
        state, created = await self.controller.put(
            request.match_info["name"], body, request[PRINCIPAL].name, if_match
        )
        return _endpoint(state, 201 if created else 200)

    async def patch_endpoint(self, request: web.Request) -> web.Response:
        if_match = parse_if_match(request.headers.get("If-Match"))
        body = await self._body(request)
        return _endpoint(
            await self.controller.patch(request.match_info["name"], body, request[PRINCIPAL].name, if_match)
        )

    async def promote(self, request: web.Request) -> web.Response:
        if_match = parse_if_match(request.headers.get("If-Match"))
        name = request.match_info["name"]
        return _endpoint(await self.controller.promote(name, request[PRINCIPAL].name, if_match))

    async def rollback(self, request: web.Request) -> web.Response:
        if_match = parse_if_match(request.headers.get("If-Match"))
        name = request.match_info["name"]
        return _endpoint(await self.controller.rollback(name, request[PRINCIPAL].name, if_match))

    async def audit(self, request: web.Request) -> web.Response:
        limit = _query_int(request, "limit", 100, 1, MAX_AUDIT_LIMIT)
        since = _query_int(request, "since_revision", None, 0, 1 << 62)
        endpoint = request.query.get("endpoint") or None
        entries = await self.controller.audit(limit or 100, since, endpoint)
        return _json({"entries": list(entries)})

    async def stats(self, request: web.Request) -> web.Response:
        if self.snapshot_source is None:
            raise Unsupported("per-version statistics are not available on this gateway")
        name = request.match_info["name"]
        try:
            self.controller.get(name)
            known = True
        except NotFound:
            known = False
        return _json(endpoint_stats(await self.snapshot_source(), name, known))

    async def samples(self, request: web.Request) -> web.Response:
        limit = _query_int(request, "limit", DEFAULT_SAMPLES_LIMIT, 1, MAX_SAMPLES_LIMIT)
        version = request.query.get("version") or None
        if version is not None and not (
            version.isascii() and version.isdigit() and 0 < int(version) < 1 << 62
        ):
            raise InvalidArgument(f"query parameter 'version' must be a positive integer, got {version!r}")
        role = request.query.get("role") or None
        if role is not None and role not in _ROLES:
            raise InvalidArgument(
                f"query parameter 'role' must be one of {', '.join(sorted(_ROLES))}, got {role!r}"
            )
        if self.samples_source is None:
            raise Unsupported("payload samples are not available on this gateway")
        rows = await self.samples_source(
            request.match_info["name"], version, role, limit or DEFAULT_SAMPLES_LIMIT
        )
        return _json({"samples": rows})

    async def models(self, request: web.Request) -> web.Response:
        rows = self.controller.models()
        return _json(
            {
                "models": [
                    {"name": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in rows
                ]
            }
        )

    async def load(self, request: web.Request) -> web.Response:
        entry = await self.controller.load_model(request.match_info["name"], request[PRINCIPAL].name)
        return _json(_model_state(entry))

    async def unload(self, request: web.Request) -> web.Response:
        entry = await self.controller.unload_model(request.match_info["name"], request[PRINCIPAL].name)
        return _json(_model_state(entry))


def create_control_app(
    controller: EndpointController,
    auth: Authenticator,
    snapshot_source: SnapshotSource | None = None,
    samples_source: SamplesSource | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> web.Application:
    """The control API app; serve it on the control listener after ``controller.startup`` has run.

    `snapshot_source` feeds ``GET /v1/endpoints/{name}/stats`` and `samples_source`
    ``GET /v1/endpoints/{name}/samples``; each route answers 501 while its source is None.
    """
    app = web.Application(middlewares=[error_middleware, _auth_middleware], client_max_size=max_body_bytes)
    app[AUTHENTICATOR] = auth
    h = _Handlers(controller, snapshot_source, samples_source)
    app.router.add_get("/openapi.json", h.openapi, allow_head=False)
    app.router.add_get("/v1/endpoints", h.list_endpoints, allow_head=False)
    app.router.add_get("/v1/endpoints/{name}", h.get_endpoint, allow_head=False)
    app.router.add_put("/v1/endpoints/{name}", h.put_endpoint)
    app.router.add_patch("/v1/endpoints/{name}", h.patch_endpoint)
    app.router.add_post("/v1/endpoints/{name}/promote", h.promote)
    app.router.add_post("/v1/endpoints/{name}/rollback", h.rollback)
    app.router.add_get("/v1/endpoints/{name}/stats", h.stats, allow_head=False)
    app.router.add_get("/v1/endpoints/{name}/samples", h.samples, allow_head=False)
    app.router.add_get("/v1/audit", h.audit, allow_head=False)
    app.router.add_get("/v1/models", h.models, allow_head=False)
    app.router.add_post("/v1/models/{name}/load", h.load)
    app.router.add_post("/v1/models/{name}/unload", h.unload)
    return app
