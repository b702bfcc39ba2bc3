"""One HTTP/2 connection of the native gRPC transport: frames in, calls run, frames out.

Why it exists: grpc.aio costs 250-350 us of CPU per unary call here before any of our code runs; this
protocol object parses frames with ``struct``, decodes headers through a memo (gateway.grpc.h2.headers),
runs each call as one task and writes an answer as one buffer (headers, data, trailers).

Rules of this module:
- Writes are gathered and flushed once per event-loop turn (one system call for every answer that
  completed in that turn); control answers (SETTINGS ACK, PING ACK, WINDOW_UPDATE) go the same way.
- Flow control both ways (RFC 7540 6.9). We announce ``STREAM_WINDOW`` per stream and raise the
  connection window to ``CONNECTION_WINDOW``; a stream's window is given back as its bytes are read by the
  handler, so a client can never have more than a window of unread requests buffered per stream. A peer
  that sends past a window gets FLOW_CONTROL_ERROR. Our sends wait for the peer's windows: a streaming
  handler's ``write`` awaits until its message is on its way (and while the socket's buffer is full).
- A request message over ``max_message`` is refused before it is buffered (RESOURCE_EXHAUSTED).
- Protocol violations end the connection with GOAWAY and the matching error code; a stream-level problem
  ends only that stream. A client that stops reading its answers is not read from until it drains them,
  so its unread answers cannot pile up in memory. Nothing here logs per request; an unexpected handler error is logged once.
- A client that resets more than ``RESET_ALLOWANCE`` calls, and more calls than it let finish, is cut off
  (GOAWAY ENHANCE_YOUR_CALM): opening streams only to reset them costs the server and nobody else.
- A call's deadline (``grpc-timeout``) ends it with DEADLINE_EXCEEDED and cancels its handler; a client's
  RST_STREAM or a lost connection cancels the handler (it sees ``CancelledError``).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import time
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any

import grpc

from gateway import eager
from gateway.grpc.h2 import frames as f
from gateway.grpc.h2.calls import Abort, Call, Method
from gateway.grpc.h2.headers import CompressionError, HeaderDecoder, HeaderListTooLarge

if TYPE_CHECKING:
    from gateway.grpc.h2.server import NativeServer

log = logging.getLogger("onnxgate.grpc")

STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 64 << 20
MAX_FRAME = 1 << 20  # what we accept; we send at most what the peer allows
MAX_CONCURRENT_STREAMS = 1024
MAX_HEADER_LIST = 64 << 10
# A client may reset this many of its calls before its resets are weighed against its answered calls:
# one that resets more calls than it lets finish is opening streams only to cancel them ("rapid reset")
# and gets GOAWAY ENHANCE_YOUR_CALM.
RESET_ALLOWANCE = 1000
_HEAD = f.HEAD
_HEAD_LEN = 9
_RESPONSE_HEADERS_LEN = len(f.RESPONSE_HEADERS)
_OK_TRAILERS_LEN = len(f.OK_TRAILERS)
_TIMEOUT_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}
_ENCODINGS = {b"identity": None, b"gzip": 31, b"deflate": 15}
_OK = grpc.StatusCode.OK


class ConnectionError_(Exception):
    """A connection-level protocol error: answered with GOAWAY carrying ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (at most 8 digits and a unit), None when malformed."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


class Connection(asyncio.Protocol):
    """See the module rules."""

    def __init__(self, server: NativeServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.calls: dict[int, Call] = {}
        self._buf = b""
        self._preface = False
        self._decoder = HeaderDecoder(max_list_size=MAX_HEADER_LIST)
        self._last_sid = 0
        self._continued: tuple[int, int, bytearray] | None = None  # (stream, flags, block so far)
        self._send_window = f.DEFAULT_WINDOW
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._peer_max_frame = f.DEFAULT_MAX_FRAME
        self._recv_window = CONNECTION_WINDOW
        self._recv_unacked = 0
        self._blocked: dict[int, Call] = {}
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.goaway_sent = False
        self._resets = 0  # calls the client reset before their answer
        self._answered = 0  # calls that got their last frame from us
        self._closed = False
        self.idle_since = server.loop.time()  # when its last call ended (read by the server's idle sweep)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = peer[0]
            self.peer = f"ipv6:[{host}]:{peer[1]}" if ":" in host else f"ipv4:{host}:{peer[1]}"
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            transport.close()  # gRPC over TLS is HTTP/2 negotiated with ALPN; anything else is not ours
            return
        self.server.connections.add(self)
        self._write(
            f.settings(
                (
                    (f.SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
                    (f.SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                    (f.SETTINGS_MAX_FRAME_SIZE, MAX_FRAME),
                    (f.SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
                    (f.SETTINGS_ENABLE_PUSH, 0),
                )
            )
            + f.window_update(0, CONNECTION_WINDOW - f.DEFAULT_WINDOW)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        for call in tuple(self.calls.values()):
            self._cancel(call)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        self.server.connection_gone()

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its requests until it does."""
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
        pos = 0
        if not self._preface:
            if len(data) < len(f.PREFACE):
                if not f.PREFACE.startswith(data):
                    self._close_now()
                else:
                    self._buf = data
                return
            if not data.startswith(f.PREFACE):
                self._close_now()  # not HTTP/2 with prior knowledge: nothing useful to answer
                return
            self._preface = True
            pos = len(f.PREFACE)
        end = len(data)
        try:
            while end - pos >= _HEAD_LEN:
                high, low, kind, flags, sid = _HEAD.unpack_from(data, pos)
                length = (high << 8) | low
                if length > MAX_FRAME:
                    raise ConnectionError_(f.FRAME_SIZE_ERROR, f"frame of {length} bytes over {MAX_FRAME}")
                stop = pos + _HEAD_LEN + length
                if stop > end:
                    break
                payload = data[pos + _HEAD_LEN : stop]
                pos = stop
                self._on_frame(kind, flags, sid & 0x7FFFFFFF, payload)
                if self._closed:
                    return
        except ConnectionError_ as exc:
            self._connection_error(exc.code, str(exc))
            return
        self._buf = data[pos:] if pos < end else b""

    # ------------------------------------------------------------------ frames in

    def _on_frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self._continued is not None and kind != f.CONTINUATION:
            raise ConnectionError_(f.PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == f.DATA:
            self._on_data(sid, flags, payload)
        elif kind == f.HEADERS:
            if sid == 0:
                raise ConnectionError_(f.PROTOCOL_ERROR, "HEADERS on stream 0")
            block = _strip(payload, flags, header=True)
            if flags & f.END_HEADERS:
                self._on_headers(sid, flags, block)
            else:
                self._continued = (sid, flags, bytearray(block))
        elif kind == f.CONTINUATION:
            if self._continued is None or self._continued[0] != sid:
                raise ConnectionError_(f.PROTOCOL_ERROR, "unexpected CONTINUATION")
            self._continued[2].extend(payload)
            if len(self._continued[2]) > MAX_HEADER_LIST * 2:
                raise ConnectionError_(f.ENHANCE_YOUR_CALM, "header block too large")
            if flags & f.END_HEADERS:
                sid, first_flags, gathered = self._continued
                self._continued = None
                self._on_headers(sid, first_flags, bytes(gathered))
        elif kind == f.SETTINGS:
            if sid != 0 or (flags & f.ACK and payload) or len(payload) % 6:
                raise ConnectionError_(f.PROTOCOL_ERROR, "malformed SETTINGS")
            if not flags & f.ACK:
                self._on_settings(payload)
        elif kind == f.WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif kind == f.PING:
            if sid != 0 or len(payload) != 8:
                raise ConnectionError_(f.PROTOCOL_ERROR, "malformed PING")
            if not flags & f.ACK:
                self._write(f.frame(f.PING, f.ACK, 0, payload))
        elif kind == f.RST_STREAM:
            if sid == 0 or len(payload) != 4:
                raise ConnectionError_(f.PROTOCOL_ERROR, "malformed RST_STREAM")
            call = self.calls.get(sid)
            if call is not None:
                self._cancel(call)
                self._resets += 1
                if self._resets > RESET_ALLOWANCE and self._resets > self._answered:
                    raise ConnectionError_(f.ENHANCE_YOUR_CALM, "too many streams reset by the client")
        elif kind == f.GOAWAY:
            self.goaway_sent = True  # the peer will open nothing new; finish what is open, then close
            if not self.calls:
                self._close_now()
        elif kind == f.PUSH_PROMISE:
            raise ConnectionError_(f.PROTOCOL_ERROR, "clients cannot push")
        # PRIORITY and unknown frame types are ignored (RFC 7540 5.5).

    def _on_settings(self, payload: bytes) -> None:
        grow = False
        for ident, value in f.parse_settings(payload):
            if ident == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise ConnectionError_(f.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for call in self.calls.values():
                    call.send_window += delta
                grow = delta > 0
            elif ident == f.SETTINGS_MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value < 1 << 24:
                    raise ConnectionError_(f.PROTOCOL_ERROR, "invalid max frame size")
                self._peer_max_frame = value
        self._write(f.frame(f.SETTINGS, f.ACK, 0))
        if grow:
            self._flush_blocked()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(f.FRAME_SIZE_ERROR, "malformed WINDOW_UPDATE")
        increment = f.u32(payload) & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise ConnectionError_(f.PROTOCOL_ERROR, "window increment 0")
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise ConnectionError_(f.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            self._flush_blocked()
            return
        call = self.calls.get(sid)
        if call is None:
            return
        if increment == 0 or call.send_window + increment > f.MAX_WINDOW:
            self._reset(call, f.FLOW_CONTROL_ERROR if increment else f.PROTOCOL_ERROR)
            return
        call.send_window += increment
        if call.out or call.final is not None:
            self._flush_call(call)

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        length = len(payload)
        self._recv_window -= length
        if self._recv_window < 0:
            raise ConnectionError_(f.FLOW_CONTROL_ERROR, "data past the connection window")
        self._recv_unacked += length
        if self._recv_unacked >= CONNECTION_WINDOW // 4:
            self._write(f.window_update(0, self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        call = self.calls.get(sid)
        if call is None or call.recv_closed:
            if sid == 0 or sid > self._last_sid:
                raise ConnectionError_(f.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we already ended: its late data only counts against the window
        call.recv_window -= length
        if call.recv_window < 0:
            self._reset(call, f.FLOW_CONTROL_ERROR)
            return
        if flags & f.PADDED:
            payload = _strip(payload, flags, header=False)
        if payload:
            self._receive(call, payload)
            if call.closed:
                return
        if flags & f.END_STREAM:
            call.recv_closed = True
            self._requests_ended(call)
        elif call.recv_window <= STREAM_WINDOW // 2 and self._may_credit(call):
            self._give_window(call)

    def _on_headers(self, sid: int, flags: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block)
        except CompressionError as exc:
            raise ConnectionError_(f.COMPRESSION_ERROR, str(exc)) from None
        except HeaderListTooLarge as exc:
            headers = None
            too_large = str(exc)
        call = self.calls.get(sid)
        if call is not None:  # trailers from the client: only END_STREAM matters
            if not flags & f.END_STREAM:
                raise ConnectionError_(f.PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            if not call.recv_closed:
                call.recv_closed = True
                self._requests_ended(call)
            return
        if sid % 2 == 0:
            raise ConnectionError_(f.PROTOCOL_ERROR, f"stream {sid} cannot be opened by a client")
        if sid <= self._last_sid:  # a stream we already ended: that stream's error, not the connection's
            self._write(f.rst_stream(sid, f.STREAM_CLOSED))
            return
        self._last_sid = sid
        if self.goaway_sent or len(self.calls) >= MAX_CONCURRENT_STREAMS:
            self._write(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        call = Call(self, sid, headers or [], self._peer_initial_window)
        call.recv_window = STREAM_WINDOW
        call.recv_closed = bool(flags & f.END_STREAM)
        self.calls[sid] = call
        if headers is None:
            self._finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED, too_large)
            return
        self._start(call, headers)

    # ------------------------------------------------------------------ calls

    def _start(self, call: Call, headers: list[tuple[bytes, bytes]]) -> None:
        server = self.server
        path = method = content_type = timeout = encoding = authorization = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b"content-type":
                content_type = value
            elif name == b":method":
                method = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b"grpc-encoding":
                encoding = value
            elif name == b"authorization":
                authorization = value
        if method != b"POST":
            self._http_answer(call, 405)
            return
        if content_type is None or not content_type.startswith(b"application/grpc"):
            self._http_answer(call, 415)
            return
        entry = server.methods.get(path) if path is not None else None
        if entry is None:
            self._finish(call, grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {_text(path)}")
            return
        call.method = entry
        if server.auth is not None and path not in server.open_paths:
            refusal = server.auth(None if authorization is None else authorization.decode("latin-1"))
            if refusal is not None:
                self._finish(call, grpc.StatusCode.UNAUTHENTICATED, refusal)
                return
        if encoding is not None and encoding != b"identity":
            if encoding not in _ENCODINGS:
                self._finish(
                    call,
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"message encoding '{_text(encoding)}' is not supported (identity, gzip, deflate are)",
                )
                return
            call.encoding = encoding
        if server.max_active and server.active >= server.max_active:
            self._finish(call, grpc.StatusCode.UNAVAILABLE, "server is at its limit of calls in progress")
            return
        server.active += 1
        call.counted = True
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is not None:
                call.deadline = time.monotonic() + seconds
                call.timer = self.loop.call_later(seconds, self._deadline_passed, call)
        if entry.per_message is not None:
            call.last_active = self.loop.time()
            call.idle_timer = self.loop.call_later(entry.idle_s, self._stream_idle, call)
        elif entry.request_streaming:
            call.inbox = deque()
            call.task = self.loop.create_task(self._run(call, call))
        if call.recv_closed:
            self._requests_ended(call)

    def _receive(self, call: Call, data: bytes) -> None:
        """Gather gRPC messages (1-byte flag, 4-byte length, body) from a stream's DATA payloads."""
        limit = self.server.max_message
        partial = call.partial
        if partial is None:
            if len(data) >= 5:
                size = int.from_bytes(data[1:5], "big")
                if size > limit:
                    self._too_large(call, size)
                    return
                if len(data) == 5 + size:
                    self._message(call, data[0], data[5:], 5 + size)
                    return
            partial = call.partial = bytearray(data)
        else:
            partial.extend(data)
        while len(partial) >= 5:
            size = int.from_bytes(partial[1:5], "big")
            if size > limit:
                self._too_large(call, size)
                return
            if len(partial) < 5 + size:
                break
            flag = partial[0]
            body = bytes(partial[5 : 5 + size])
            del partial[: 5 + size]
            self._message(call, flag, body, 5 + size)
            if call.closed:
                return
        if not partial:
            call.partial = None

    def _too_large(self, call: Call, size: int) -> None:
        self._finish(
            call,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({size} vs. {self.server.max_message})",
        )

    def _message(self, call: Call, flag: int, body: bytes, wire: int) -> None:
        if flag:
            if call.encoding is None:
                self._finish(call, grpc.StatusCode.INTERNAL, "compressed message without grpc-encoding")
                return
            try:
                body = _decompress(body, _ENCODINGS[call.encoding], self.server.max_message)
            except ValueError as exc:
                self._finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                return
            except zlib.error:
                self._finish(call, grpc.StatusCode.INTERNAL, "could not decompress the request message")
                return
        method = call.method
        assert method is not None
        if method.per_message is not None:
            self._stream_message(call, method, body, wire)
            return
        if method.request_streaming:
            call.queued += wire
            call.push((body, wire))
            return
        call.request_count += 1
        if call.request_count > 1:
            self._finish(call, grpc.StatusCode.UNIMPLEMENTED, "a unary call carried more than one message")
            return
        call.request = body

    def _stream_message(self, call: Call, method: Method, body: bytes, wire: int) -> None:
        """Per-message streams: answer each request as it completes, no reader or writer task between."""
        assert method.deserialize is not None and method.per_message is not None
        try:
            request = method.deserialize(body)
        except Exception:
            self._finish(call, grpc.StatusCode.INTERNAL, "could not parse a request message of the stream")
            return
        call.queued += wire
        call.in_flight += 1
        call.last_active = self.loop.time()
        task = eager.start(self._answer_message(call, method, request, wire), self.loop)
        if task is not None:
            if call.tasks is None:
                call.tasks = set()
            call.tasks.add(task)
            task.add_done_callback(call.tasks.discard)

    async def _answer_message(self, call: Call, method: Method, request: Any, wire: int) -> None:
        assert method.per_message is not None and method.serialize is not None
        try:
            response = await method.per_message(request, call)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.error("unexpected error in a gRPC stream handler (%s)", method.path, exc_info=exc)
            self._finish(call, grpc.StatusCode.UNKNOWN, "unexpected error")
            return
        if call.closed:
            return
        call.in_flight -= 1
        call.last_active = self.loop.time()
        self._queue_message(call, method.serialize(response))
        if call.recv_closed and not call.in_flight:
            self._finish(call, _OK, "")
        else:
            self.credit(call, wire)

    def _stream_idle(self, call: Call) -> None:
        call.idle_timer = None
        if call.closed or call.method is None:
            return
        idle_s = call.method.idle_s
        quiet = self.loop.time() - call.last_active
        if not call.in_flight and quiet >= idle_s:
            self._finish(
                call,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"stream sent no request for {idle_s:g} s; closing it",
            )
            return
        call.idle_timer = self.loop.call_later(max(idle_s - quiet, 0.001), self._stream_idle, call)

    def _may_credit(self, call: Call) -> bool:
        """Give a stream window back only while its requests are being consumed (backpressure)."""
        method = call.method
        if method is None or method.per_message is None:
            return call.queued < STREAM_WINDOW
        return call.in_flight < method.max_in_flight and not call.out

    def _requests_ended(self, call: Call) -> None:
        if call.closed or call.method is None:
            return
        if call.method.per_message is not None:
            if not call.in_flight:
                self._finish(call, _OK, "")
            return
        if call.inbox is not None:
            call.push_end()
            return
        if call.request is None:
            self._finish(call, grpc.StatusCode.UNIMPLEMENTED, "a unary call carried no message")
            return
        request, call.request = call.request, None
        # Eagerly: a call whose model runs inline finishes here, with no task and no loop turn.
        call.task = eager.start(self._run(call, request), self.loop)

    async def _run(self, call: Call, request: Any) -> None:
        method = call.method
        assert method is not None
        try:
            if not method.request_streaming and method.deserialize is not None:
                try:
                    request = method.deserialize(request)
                except Exception:
                    self._finish(call, grpc.StatusCode.INTERNAL, "could not parse the request message")
                    return
            result = method.handler(request, call)
            if method.response_streaming:
                if inspect.isasyncgen(result):
                    async for item in result:
                        await self.write_message(call, item)
                else:
                    await result
                self._finish(call, call.code or _OK, call.details, call.trailing)
                return
            response = await result
            if call.closed:
                return
            if call.code is not None and call.code is not _OK:
                self._finish(call, call.code, call.details, call.trailing)
            elif response is None:
                self._finish(call, grpc.StatusCode.INTERNAL, "the handler returned no answer")
            else:
                assert method.serialize is not None
                self._answer(call, method.serialize(response))
        except Abort as exc:
            self._finish(call, exc.code, exc.details, exc.trailing)
        except asyncio.CancelledError:
            if not call.closed:  # cancelled by the server (shutdown): the client learns it
                self._finish(call, grpc.StatusCode.CANCELLED, "the server cancelled the call")
        except Exception as exc:
            log.error("unexpected error in a gRPC handler (%s)", method.path, exc_info=exc)
            self._finish(call, grpc.StatusCode.UNKNOWN, "unexpected error")

    def credit(self, call: Call, size: int) -> None:
        """The handler read `size` bytes of requests: give the stream its window back once it is low."""
        call.queued -= size
        if (
            not call.recv_closed
            and not call.closed
            and call.recv_window <= STREAM_WINDOW // 2
            and self._may_credit(call)
        ):
            self._give_window(call)

    def _give_window(self, call: Call) -> None:
        grant = STREAM_WINDOW - call.recv_window
        if grant > 0:
            call.recv_window = STREAM_WINDOW
            self._write(f.window_update(call.sid, grant))

    def _deadline_passed(self, call: Call) -> None:
        call.timer = None
        if not call.closed:
            self._finish(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            _stop_tasks(call)

    # ------------------------------------------------------------------ frames out

    def _answer(self, call: Call, data: bytes) -> None:
        """Headers, the one message and OK trailers; one write when the windows allow (nearly always)."""
        sid = call.sid
        size = len(data) + 5
        if (
            size <= self._send_window
            and size <= call.send_window
            and size <= self._peer_max_frame
            and not call.headers_sent
        ):
            self._send_window -= size
            self._wbuf += (
                _HEAD.pack(0, _RESPONSE_HEADERS_LEN, f.HEADERS, f.END_HEADERS, sid) + f.RESPONSE_HEADERS,
                _HEAD.pack(size >> 8, size & 0xFF, f.DATA, 0, sid) + b"\x00" + (size - 5).to_bytes(4, "big"),
                data,
                _HEAD.pack(0, _OK_TRAILERS_LEN, f.HEADERS, f.END_HEADERS | f.END_STREAM, sid) + f.OK_TRAILERS,
            )
            self._schedule_flush()
            self._closed_call(call)
            return
        self._queue_message(call, data)
        self._finish(call, _OK, "", ())

    async def write_message(self, call: Call, message: Any) -> None:
        """A streaming handler's ``context.write``: returns once the message is handed to the socket."""
        if call.closed:
            raise asyncio.CancelledError  # the stream ended (client reset, deadline): stop the handler
        method = call.method
        assert method is not None and method.serialize is not None
        self._queue_message(call, method.serialize(message))
        if call.out:
            waiter = self.loop.create_future()
            call.blocked_on = waiter
            await waiter
        if self._paused and not self._closed:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _queue_message(self, call: Call, data: bytes) -> None:
        if not call.headers_sent:
            call.headers_sent = True
            self._write(
                _HEAD.pack(0, _RESPONSE_HEADERS_LEN, f.HEADERS, f.END_HEADERS, call.sid) + f.RESPONSE_HEADERS
            )
        call.out.append(b"\x00" + len(data).to_bytes(4, "big") + data)
        self._flush_call(call)

    def _flush_call(self, call: Call) -> None:
        out = call.out
        while out:
            avail = min(self._send_window, call.send_window, self._peer_max_frame)
            if avail <= 0:
                self._blocked[call.sid] = call
                self._schedule_flush()
                return
            item = out[0]
            if len(item) <= avail:
                out.popleft()
                chunk = item
            else:
                chunk, out[0] = item[:avail], item[avail:]
            n = len(chunk)
            self._send_window -= n
            call.send_window -= n
            self._wbuf += (_HEAD.pack(n >> 8, n & 0xFF, f.DATA, 0, call.sid), chunk)
        self._schedule_flush()
        self._blocked.pop(call.sid, None)
        if call.in_flight or call.queued:  # a per-message stream whose answers were waiting: read on
            self.credit(call, 0)
        waiter = call.blocked_on
        if waiter is not None:
            call.blocked_on = None
            if not waiter.done():
                waiter.set_result(None)
        if call.final is not None:
            final, call.final = call.final, None
            self._write(final)
            self._closed_call(call)

    def _flush_blocked(self) -> None:
        for call in tuple(self._blocked.values()):
            if self._send_window <= 0:
                return
            self._flush_call(call)

    def _finish(
        self,
        call: Call,
        code: grpc.StatusCode,
        details: str,
        trailing: Any = (),
    ) -> None:
        """End the call with a status: trailers (or trailers-only headers) after any queued data."""
        if call.closed or call.final is not None:
            return
        block = f.status_block(code.value[0], details, _metadata(trailing))
        if not call.headers_sent:
            call.headers_sent = True
            block = f.RESPONSE_HEADERS + block
        trailers = f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, call.sid, block)
        if call.out:
            call.final = trailers
            return
        self._write(trailers)
        self._closed_call(call)

    def _http_answer(self, call: Call, status: int) -> None:
        call.headers_sent = True
        self._write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, call.sid, f.http_status_block(status)))
        self._closed_call(call)

    def _closed_call(self, call: Call) -> None:
        """The call's last frame is written: forget it (and tell a still-sending client to stop)."""
        if call.closed:
            return
        call.closed = True
        self._answered += 1
        self._release(call)
        if not call.recv_closed:
            self._write(f.rst_stream(call.sid, f.NO_ERROR))

    def _cancel(self, call: Call) -> None:
        """The client reset the stream or the connection is gone: stop the handler, send nothing."""
        if call.closed:
            return
        call.closed = True
        call.code = grpc.StatusCode.CANCELLED
        self._release(call)
        _stop_tasks(call)
        for waiter in (call.blocked_on, call.inbox_waiter):
            if waiter is not None and not waiter.done():
                waiter.cancel()

    def _reset(self, call: Call, code: int) -> None:
        self._write(f.rst_stream(call.sid, code))
        self._cancel(call)

    def _release(self, call: Call) -> None:
        self.calls.pop(call.sid, None)
        if not self.calls:
            self.idle_since = self.loop.time()
        self._blocked.pop(call.sid, None)
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if call.idle_timer is not None:
            call.idle_timer.cancel()
            call.idle_timer = None
        if call.counted:
            call.counted = False
            self.server.active -= 1
        if call.done_callbacks:
            for callback in call.done_callbacks:
                callback(call)
        if self.goaway_sent and not self.calls:
            self.loop.call_soon(self._close_now)

    def _write(self, data: bytes) -> None:
        self._wbuf.append(data)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_writes)

    def _flush_writes(self) -> None:
        self._flush_scheduled = False
        if self._wbuf and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self._wbuf)
        self._wbuf.clear()

    # ------------------------------------------------------------------ shutdown

    def goaway(self) -> None:
        """Graceful: no new streams; the open ones finish; the connection closes when they have."""
        if self.goaway_sent and self._closed:
            return
        self.goaway_sent = True
        self._write(f.goaway(self._last_sid, f.NO_ERROR))
        if not self.calls:
            self.loop.call_soon(self._close_now)

    def abort_all(self) -> None:
        """Grace is over: cancel what still runs and close."""
        for call in tuple(self.calls.values()):
            self._finish(call, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            _stop_tasks(call)
        self._flush_writes()
        self._close_now()

    def _connection_error(self, code: int, message: str) -> None:
        self._write(f.goaway(self._last_sid, code, message.encode("ascii", "replace")[:256]))
        self._flush_writes()
        for call in tuple(self.calls.values()):
            self._cancel(call)
        self._close_now()

    def _close_now(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush_writes()
            self.transport.close()


def _stop_tasks(call: Call) -> None:
    """Cancel whatever still works for a call that has ended."""
    task = call.task
    if task is not None and not task.done():
        task.cancel()
    for pending in tuple(call.tasks or ()):
        pending.cancel()


def _strip(payload: bytes, flags: int, header: bool) -> bytes:
    """Remove padding (and a HEADERS frame's priority fields) from a frame's payload."""
    start, stop = 0, len(payload)
    if flags & f.PADDED:
        if not payload:
            raise ConnectionError_(f.PROTOCOL_ERROR, "padded frame without a pad length")
        stop -= payload[0]
        start = 1
    if header and flags & f.PRIORITY_FLAG:
        start += 5
    if stop < start:
        raise ConnectionError_(f.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[start:stop]


def _decompress(body: bytes, wbits: int | None, limit: int) -> bytes:
    if wbits is None:
        return body
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit:
        raise ValueError(f"Received message larger than max (over {limit} after decompression)")
    return out


def _metadata(items: Any) -> list[tuple[bytes, bytes]]:
    out = []
    for key, value in items or ():
        name = str(key).lower().encode("latin-1")
        if isinstance(value, bytes):
            out.append((name, base64.b64encode(value).rstrip(b"=")))
        else:
            out.append((name, str(value).encode("latin-1", "replace")))
    return out


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("latin-1")
