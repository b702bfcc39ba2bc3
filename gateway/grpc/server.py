"""Build and start the gRPC server: our servicer, the standard health service, server reflection.

Two transports serve the same servicers: "native" (gateway.grpc.h2, our own HTTP/2 framing: the default,
for its CPU cost per call) and "grpcio" (grpc.aio: the reference, and a fallback an operator can choose
with ``grpc_transport``). ``start_grpc_server`` returns a ``GrpcServer`` handle (bound port, health
servicer, how to stop). The app's
composition root keeps it, flips health with ``set_serving`` as ``InferenceService.ready()`` changes, and
calls ``stop`` at shutdown (health goes NOT_SERVING first, so load balancers drain before the port closes).

Rules of this module:
- TLS comes ready-made (gateway.tls: credentials for grpc.aio, an SSL context for native); without it the
  port is plain text.
- With ``inference_auth`` on, ``TokenInterceptor`` asks every call for ``authorization: Bearer <token>``
  metadata, except ServerLive, ServerReady and the grpc.health service (probes carry no token); a refused
  call is answered UNAUTHENTICATED before its message is decoded. With it off, no interceptor is installed.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from gateway.control.auth import Authenticator
from gateway.control.errors import Unauthenticated
from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from gateway.grpc.h2.calls import MethodTable
from gateway.grpc.h2.server import NativeServer, alpn_context
from gateway.grpc.servicer import STREAM_IN_FLIGHT, InferenceServicer, routing_key_of
from gateway.service import InferenceService
from gateway.settings import Limits, SettingsError

TRANSPORTS = ("native", "grpcio")

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
STREAM_PATH = f"/{INFERENCE_SERVICE}/ModelStreamInfer"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Health names we report: "" (the whole server) and the inference service, as grpc health probes ask.
HEALTH_NAMES = ("", INFERENCE_SERVICE)

# Calls that need no token even with inference_auth on.
OPEN_METHODS = frozenset({f"/{INFERENCE_SERVICE}/ServerLive", f"/{INFERENCE_SERVICE}/ServerReady"})
OPEN_PREFIXES = (f"/{HEALTH_SERVICE}/",)
AUTHORIZATION_METADATA = "authorization"

try:  # grpcio-health-checking ships an asyncio servicer on Python 3; fall back to the threaded one.
    from grpc_health.v1.health import aio as _health_aio

    _HealthServicer: Any = _health_aio.HealthServicer
    _ASYNC_HEALTH = True
except (ImportError, AttributeError):  # pragma: no cover - depends on the installed grpcio-health-checking
    _HealthServicer = health.HealthServicer
    _ASYNC_HEALTH = False


@dataclass(slots=True)
class GrpcServer:
    """A started gRPC server: ``port`` is the bound port (the real one when 0 was asked for)."""

    server: grpc.aio.Server | NativeServer
    port: int
    health: Any  # grpc_health HealthServicer (asyncio or threaded flavour)

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server and the inference service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in HEALTH_NAMES:
            if _ASYNC_HEALTH:
                await self.health.set(name, status)
            else:  # pragma: no cover
                self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING for good, then stop taking calls; running ones get `grace` seconds."""
        if _ASYNC_HEALTH:
            await self.health.enter_graceful_shutdown()
        else:  # pragma: no cover
            self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def set_health(handle: GrpcServer, serving: bool) -> None:
    """Module-level form of ``GrpcServer.set_serving`` for the composition root."""
    await handle.set_serving(serving)


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED without decoding anything."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, None, serialize)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, None, serialize)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, None, serialize)
    return grpc.stream_stream_rpc_method_handler(refuse, None, serialize)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token of every call but the health probes (see the rules above)."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method in OPEN_METHODS or method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        authorization = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTHORIZATION_METADATA:
                authorization = value if isinstance(value, str) else None
                break
        try:
            self._auth.check_inference(authorization)
        except Unauthenticated as exc:
            handler = await continuation(handler_call_details)
            return handler if handler is None else _refusal(handler, exc.message)
        return await continuation(handler_call_details)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _register(service: InferenceService, limits: Limits, server: Any) -> Any:
    """Our servicer, health and reflection on `server` (a grpc.aio server or a MethodTable)."""
    servicer = InferenceServicer(service, limits)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_servicer = _HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME)
    if isinstance(server, MethodTable):
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), server
        )
        # The native transport answers stream requests one by one: no reader or writer task in between.
        path = STREAM_PATH.encode()
        server.methods[path] = dataclasses.replace(
            server.methods[path],
            per_message=lambda request, call: servicer.stream_answer(request, routing_key_of(call), call),
            max_in_flight=STREAM_IN_FLIGHT,
            idle_s=servicer.stream_idle_s,
        )
    else:
        reflection.enable_server_reflection(names, server)
    return health_servicer


def _token_check(auth: Authenticator) -> Callable[[str | None], str | None]:
    def check(authorization: str | None) -> str | None:
        try:
            auth.check_inference(authorization)
        except Unauthenticated as exc:
            return exc.message
        return None

    return check


async def start_grpc_server(
    service: InferenceService,
    host: str,
    port: int,
    limits: Limits,
    reuse_port: bool = False,
    credentials: grpc.ServerCredentials | None = None,
    auth: Authenticator | None = None,
    max_pending_requests: int = 0,
    transport: str = "native",
    ssl_context: ssl.SSLContext | None = None,
) -> GrpcServer:
    """Start serving on host:port (0 = an ephemeral port); health starts as ``service.ready()`` says.

    TLS: `credentials` (gateway.tls.grpc_credentials) for grpc.aio, `ssl_context` (gateway.tls.server_context)
    for the native transport; `auth` is given only when inference needs a token (``inference_auth``).
    `max_pending_requests` bounds calls waiting for Python (grpcio) or in progress (native); 0: no bound.
    """
    if transport not in TRANSPORTS:
        raise SettingsError(
            f"setting 'grpc_transport' is '{transport}'; it must be one of {', '.join(TRANSPORTS)}"
        )
    if transport == "native":
        table = MethodTable()
        health_servicer = _register(service, limits, table)
        native = NativeServer(
            table.methods,
            limits.max_body_bytes,
            auth=_token_check(auth) if auth is not None else None,
            open_paths=frozenset(p.encode() for p in OPEN_METHODS)
            | frozenset(p for p in table.methods if p.decode().startswith(OPEN_PREFIXES)),
            max_active=max_pending_requests,
            ssl_context=alpn_context(ssl_context) if ssl_context is not None else None,
            idle_s=limits.connection_idle_timeout_s,
        )
        try:
            bound = await native.listen(host, port, reuse_port)
        except OSError as exc:
            raise OSError(f"gRPC server cannot listen on {_address(host, port)}: {exc}") from None
        handle = GrpcServer(native, bound, health_servicer)
        await handle.set_serving(service.ready())
        return handle
    server = grpc.aio.server(
        interceptors=[TokenInterceptor(auth)] if auth is not None else None,
        options=[
            ("grpc.max_receive_message_length", limits.max_body_bytes),
            ("grpc.max_send_message_length", limits.max_body_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_connection_idle_ms", int(limits.connection_idle_timeout_s * 1000)),
        ]
        + (
            # gRPC core refuses calls beyond this many waiting for Python (soft) or 4x (hard).
            [
                ("grpc.server.max_pending_requests", max_pending_requests),
                ("grpc.server.max_pending_requests_hard_limit", 4 * max_pending_requests),
            ]
            if max_pending_requests > 0
            else []
        ),
    )
    health_servicer = _register(service, limits, server)
    address = _address(host, port)
    try:
        if credentials is not None:
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"gRPC server cannot listen on {address}: {exc}") from None
    if not bound:
        raise OSError(f"gRPC server cannot listen on {address}")
    handle = GrpcServer(server, bound, health_servicer)
    await handle.set_serving(service.ready())
    await server.start()
    return handle
