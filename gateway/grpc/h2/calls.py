"""One gRPC call on the native transport: its stream state and the servicer context handed to handlers.

Why one object: a call is the hot path's unit; a single slotted object that is at once the HTTP/2 stream
record and the ``grpc.aio.ServicerContext`` look-alike costs one allocation per call. The connection owns
the stream fields; handlers see only the context methods (the subset of grpc.aio's context our servicer,
grpc_health and grpc_reflection use, with the same meaning).

Rules of this module:
- ``abort`` raises ``Abort``; the connection turns it into trailers. Nothing here writes to the socket
  directly: ``write`` and request credit go through the connection.
- Metadata is decoded lazily (only a handler that asks pays): ``-bin`` values are base64-decoded to bytes,
  others are str; pseudo-headers and the transport's own headers are not metadata.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from gateway.grpc.h2.connection import Connection

Metadata = tuple[tuple[str, "str | bytes"], ...]
_TRANSPORT_HEADERS = frozenset(
    {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding", b"grpc-status",
     b"grpc-message", b"connection", b"host"}
)  # fmt: skip
_END: Any = object()


class Abort(Exception):
    """Raised by ``Call.abort``: the call ends with this status (as grpc.aio's AbortError does)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str | bytes]]
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = trailing


@dataclass(frozen=True, slots=True)
class Method:
    """A registered RPC: how to decode its request, run it and encode its answers."""

    path: str
    handler: Callable[..., Any]
    request_streaming: bool
    response_streaming: bool
    deserialize: Callable[[bytes], Any] | None
    serialize: Callable[[Any], bytes] | None
    # A request-streaming method may instead be served message by message: `per_message(request, call)`
    # answers one request (one response each, in-band errors), with at most `max_in_flight` unanswered
    # per stream and the stream ended after `idle_s` with nothing in flight and nothing arriving.
    per_message: Callable[[Any, Any], Awaitable[Any]] | None = None
    max_in_flight: int = 256
    idle_s: float = 600.0


def method_from_handler(path: str, handler: grpc.RpcMethodHandler) -> Method:
    run = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    return Method(
        path,
        run,
        handler.request_streaming,
        handler.response_streaming,
        handler.request_deserializer,
        handler.response_serializer,
    )


class MethodTable:
    """Collects handlers the way generated ``add_*Servicer_to_server`` functions register them."""

    def __init__(self) -> None:
        self.methods: dict[bytes, Method] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Generated code registers both ways; the per-method form below is the one we read."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            path = f"/{service}/{name}"
            self.methods[path.encode()] = method_from_handler(path, handler)


class Call:
    """Stream record + servicer context of one call (see the module rules)."""

    __slots__ = (
        "_metadata",
        "blocked_on",
        "closed",
        "code",
        "conn",
        "counted",
        "deadline",
        "details",
        "done_callbacks",
        "encoding",
        "final",
        "headers",
        "headers_sent",
        "idle_timer",
        "in_flight",
        "inbox",
        "inbox_waiter",
        "last_active",
        "method",
        "out",
        "partial",
        "queued",
        "recv_closed",
        "recv_window",
        "request",
        "request_count",
        "send_window",
        "sid",
        "task",
        "tasks",
        "timer",
        "trailing",
    )  # fmt: skip

    def __init__(
        self, conn: Connection, sid: int, headers: list[tuple[bytes, bytes]], send_window: int
    ) -> None:
        self.conn = conn
        self.sid = sid
        self.method: Method | None = None
        self.headers = headers
        self.deadline: float | None = None
        self.encoding: bytes | None = None
        self.recv_closed = False
        self.closed = False
        self.headers_sent = False
        self.send_window = send_window
        self.out: deque[bytes] = deque()  # DATA payloads and the final trailers block waiting for window
        self.blocked_on: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.partial: bytearray | None = None
        self.inbox: deque[Any] | None = None
        self.inbox_waiter: asyncio.Future[None] | None = None
        self.request_count = 0
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: Sequence[tuple[str, str | bytes]] = ()
        self.done_callbacks: list[Callable[[Any], None]] | None = None
        self._metadata: Metadata | None = None
        self.final: bytes | None = None  # the trailers frame, written once `out` is empty
        self.recv_window = 0
        self.queued = 0  # bytes of requests received and not yet read by the handler
        self.request: bytes | None = None  # a unary call's message, run at END_STREAM
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False  # counted in the server's calls in progress
        self.in_flight = 0  # per-message streams: requests received and not yet answered
        self.tasks: set[asyncio.Task[None]] | None = None  # per-message streams: answers that suspended
        self.last_active = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ servicer context

    def invocation_metadata(self) -> Metadata:
        if self._metadata is None:
            items: list[tuple[str, str | bytes]] = []
            for name, value in self.headers:
                if name[:1] == b":" or name in _TRANSPORT_HEADERS:
                    continue
                key = name.decode("latin-1")
                if key.endswith("-bin"):
                    try:
                        items.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
                    except (binascii.Error, ValueError):
                        continue
                else:
                    items.append((key, value.decode("latin-1")))
            self._metadata = tuple(items)
        return self._metadata

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        raise Abort(code, details, trailing_metadata)

    async def write(self, message: Any) -> None:
        await self.conn.write_message(self, message)

    async def read(self) -> Any:
        """The next request of a streaming call (grpc.aio's ``context.read``), or grpc.aio.EOF at the end."""
        try:
            return await self._next_request()
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        """Headers carry no metadata of ours; sending them early only fixes their order."""

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing = metadata

    def peer(self) -> str:
        return self.conn.peer

    def cancelled(self) -> bool:
        return self.closed and self.code is grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self.closed

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self.done_callbacks is None:
            self.done_callbacks = []
        self.done_callbacks.append(callback)

    # ------------------------------------------------------------------ request stream

    def __aiter__(self) -> Call:
        return self

    async def __anext__(self) -> Any:
        return await self._next_request()

    async def _next_request(self) -> Any:
        inbox = self.inbox
        assert inbox is not None, "only streaming calls have a request stream"
        while not inbox:
            waiter = self.conn.loop.create_future()
            self.inbox_waiter = waiter
            try:
                await waiter
            finally:
                self.inbox_waiter = None
        item = inbox.popleft()
        if item is _END:
            inbox.appendleft(item)  # later reads see the end again
            raise StopAsyncIteration
        if isinstance(item, Abort):
            inbox.appendleft(item)
            raise item
        body, size = item
        self.conn.credit(self, size)
        deserialize = self.method.deserialize if self.method is not None else None
        if deserialize is None:
            return body
        try:
            return deserialize(body)
        except Exception:
            raise Abort(
                grpc.StatusCode.INTERNAL, "could not parse a request message of the stream", ()
            ) from None

    def push(self, item: Any) -> None:
        """Queue a decoded request (message, wire size), an ``Abort`` or the end; wake the reader."""
        assert self.inbox is not None
        self.inbox.append(item)
        waiter = self.inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push_end(self) -> None:
        self.push(_END)
