"""The native gRPC transport's listener: accepts connections and holds what they share.

Rules of this module:
- Handlers are the same servicer objects grpc.aio would run; ``MethodTable`` collects them through the
  generated ``add_*Servicer_to_server`` functions, so both transports serve identical RPCs.
- ``auth`` (when inference needs a token) takes the ``authorization`` header value and returns None to let
  the call through or the refusal message; ``open_paths`` need no token (liveness, readiness, health).
- A connection with no call for ``idle_s`` is sent GOAWAY and closed, so idle clients hold no
  socket forever.
- ``stop(grace)``: listeners close, every connection gets GOAWAY (clients open no new streams there), calls
  in progress get `grace` seconds, then whatever still runs is cancelled and connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

from gateway.grpc.h2.calls import Method
from gateway.grpc.h2.connection import Connection

LISTEN_BACKLOG = 2048
# Default for a connection with no call: then GOAWAY and close (grpc.aio's max_connection_idle, as we
# set it there; `[limits] connection_idle_timeout_s`). Clients reconnect on their next call.
CONNECTION_IDLE_S = 300.0


class NativeServer:
    def __init__(
        self,
        methods: dict[bytes, Method],
        max_message: int,
        auth: Callable[[str | None], str | None] | None = None,
        open_paths: frozenset[bytes] = frozenset(),
        max_active: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        idle_s: float = CONNECTION_IDLE_S,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.methods = methods
        self.max_message = max_message
        self.auth = auth
        self.open_paths = open_paths
        self.max_active = max_active  # 0: no server-wide bound on calls in progress
        self.active = 0
        self.connections: set[Connection] = set()
        self._ssl = ssl_context
        self._listeners: list[asyncio.Server] = []
        self._all_gone: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.idle_s = idle_s

    async def listen(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Bind and accept; returns the bound port (the real one when 0 was asked for)."""
        listener = await self.loop.create_server(
            lambda: Connection(self),
            host=host or None,
            port=port,
            reuse_port=reuse_port or None,
            ssl=self._ssl,
            backlog=LISTEN_BACKLOG,
        )
        self._listeners.append(listener)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_s / 4, self._sweep)
        return int(listener.sockets[0].getsockname()[1])

    def _sweep(self) -> None:
        """Close connections idle for ``idle_s`` (one timer per server, nothing per call)."""
        now = self.loop.time()
        for conn in tuple(self.connections):
            if not conn.calls and now - conn.idle_since >= self.idle_s:
                conn.goaway()
        self._sweeper = self.loop.call_later(self.idle_s / 4, self._sweep)

    def connection_gone(self) -> None:
        if self._all_gone is not None and not self.connections:
            self._all_gone.set()

    async def stop(self, grace: float | None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for listener in self._listeners:
            listener.close()
        self._all_gone = asyncio.Event()
        for conn in tuple(self.connections):
            conn.goaway()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_gone.wait(), timeout=grace if grace is not None else 0)
        for conn in tuple(self.connections):
            conn.abort_all()
        await asyncio.sleep(0)


def alpn_context(context: ssl.SSLContext) -> ssl.SSLContext:
    """gRPC clients insist on HTTP/2 negotiated by ALPN."""
    context.set_alpn_protocols(["h2"])
    return context
