"""A minimal gRPC client over HTTP/2 on one asyncio connection: the load generator's cheap gRPC path.

Why it exists: grpcio's Python client costs about as much CPU per call as the servers we measure (about
210-260 us per unary call here, aio or sync), so on two shared cores it, not the server, would set the pace.
This client writes pre-built frames and reads only what it must, for a few tens of microseconds a call.

Rules of this module:
- Requests are pre-encoded: the HPACK header block is built once per path (static-table and literal
  representations only, so it needs no encoder state); a call writes two frames with fresh stream ids.
- We announce SETTINGS_HEADER_TABLE_SIZE = 0, so the server's header blocks use no dynamic table; they
  are read with the gateway's own HPACK decoder (gateway.grpc.h2.headers, Huffman included), for
  ``grpc-status`` and ``grpc-message`` only.
- Flow control both ways: our receive windows are large and topped up; our sends wait for the server's
  connection and stream windows. PING is answered, GOAWAY and RST_STREAM fail the streams they concern.
- Loopback only is enforced by the caller (``loadgen.LoadSpec``).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from gateway.grpc.h2.frames import frame, literal
from gateway.grpc.h2.headers import HeaderDecoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
RECV_WINDOW = 1 << 30
_HEAD = struct.Struct(">HBBBI")  # length high 16 bits, length low 8 bits, type, flags, stream id
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


class GrpcError(Exception):
    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


def request_headers(path: str, authority: str) -> bytes:
    return b"".join(
        (
            b"\x83",  # :method POST (static 3)
            b"\x86",  # :scheme http (static 6)
            literal(4, path.encode("ascii")),  # :path
            literal(1, authority.encode("ascii")),  # :authority
            literal(b"content-type", b"application/grpc"),
            literal(b"te", b"trailers"),
            literal(b"user-agent", b"onnxgate-bench"),
        )
    )


def grpc_status(decoder: HeaderDecoder, block: bytes) -> tuple[int | None, str]:
    """(grpc-status, grpc-message) from a response header block."""
    status: int | None = None
    message = ""
    for name, value in decoder.decode(block):
        if name == b"grpc-status":
            status = int(value) if value.isdigit() else -1
        elif name == b"grpc-message" and value:
            message = value.decode("latin-1")
    return status, message


class _Stream:
    __slots__ = ("buf", "future", "header_block", "message", "on_message", "reply", "status")

    def __init__(
        self, future: asyncio.Future[bytes] | None, on_message: Callable[[bytes], Any] | None
    ) -> None:
        self.future = future
        self.on_message = on_message
        self.buf = bytearray()
        self.reply: bytes | None = None
        self.header_block = bytearray()
        self.status: int | None = None
        self.message = ""


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection carrying unary calls and bidirectional streams."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.rbuf = bytearray()
        self.streams: dict[int, _Stream] = {}
        self._decoder = HeaderDecoder(max_table_size=0)  # we announce a zero-size table
        self.next_id = 1
        self.send_window = 65535  # connection-level, from the server
        self.initial_stream_window = 65535
        self.stream_windows: dict[int, int] = {}
        self.pending: list[tuple[int, bytes, int]] = []  # (stream, frames, data bytes) waiting for windows
        self.received = 0
        self.closed: Exception | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.continuation: int = 0
        self._out: list[bytes] = []  # frames written at the end of this loop iteration, in one send
        self._loop = asyncio.get_running_loop()

    # -------------------------------------------------------------------------------------- connecting

    @classmethod
    async def open(cls, host: str, port: int) -> H2Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, port)
        await asyncio.wait_for(conn.ready, 10)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        settings = struct.pack(">HIHIHI", 1, 0, 2, 0, 4, RECV_WINDOW - 1)  # table size 0, no push, window
        transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", RECV_WINDOW - 65535))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(exc or ConnectionResetError("connection closed"))

    def _fail_all(self, exc: Exception) -> None:
        self.closed = exc
        if not self.ready.done():
            self.ready.set_exception(exc)
        for sid, st in list(self.streams.items()):
            self._finish(sid, st, GrpcError("UNAVAILABLE", str(exc)))

    # -------------------------------------------------------------------------------------- sending

    def call(self, headers_block: bytes, message: bytes) -> asyncio.Future[bytes]:
        """A unary call: the future gets the answer message, or GrpcError."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self.closed is not None:
            fut.set_exception(GrpcError("UNAVAILABLE", str(self.closed)))
            return fut
        sid = self.next_id
        self.next_id += 2
        self.streams[sid] = _Stream(fut, None)
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        frames = frame(HEADERS, END_HEADERS, sid, headers_block) + frame(DATA, END_STREAM, sid, body)
        self._send(sid, frames, len(body))
        return fut

    def open_stream(
        self, headers_block: bytes, on_message: Callable[[bytes], Any]
    ) -> tuple[int, asyncio.Future[bytes]]:
        """A bidirectional stream: `on_message` gets each answer; the future resolves when it ends."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        sid = self.next_id
        self.next_id += 2
        self.streams[sid] = _Stream(fut, on_message)
        self._write(frame(HEADERS, END_HEADERS, sid, headers_block))
        return sid, fut

    def send_message(self, sid: int, message: bytes, end: bool = False) -> None:
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        self._send(sid, frame(DATA, END_STREAM if end else 0, sid, body), len(body))

    def end_stream(self, sid: int) -> None:
        self._send(sid, frame(DATA, END_STREAM, sid, b""), 0)

    def _send(self, sid: int, frames: bytes, size: int) -> None:
        window = self.stream_windows.get(sid, self.initial_stream_window)
        if self.pending or size > self.send_window or size > window:
            self.pending.append((sid, frames, size))
            return
        self.send_window -= size
        self.stream_windows[sid] = window - size
        self._write(frames)

    cork = True

    def _write(self, data: bytes) -> None:
        if not self.cork:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)
            return
        # Corked: every frame of one loop iteration goes out in a single send() (syscalls dominate here).
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _flush_pending(self) -> None:
        out = []
        while self.pending:
            sid, frames, size = self.pending[0]
            window = self.stream_windows.get(sid, self.initial_stream_window)
            if size > self.send_window or size > window:
                break
            self.pending.pop(0)
            self.send_window -= size
            self.stream_windows[sid] = window - size
            out.append(frames)
        for frames in out:
            self._write(frames)

    # -------------------------------------------------------------------------------------- receiving

    def data_received(self, data: bytes) -> None:
        buf = self.rbuf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 9:
            hi, lo, kind, flags, sid = _HEAD.unpack_from(buf, pos)
            length = (hi << 8) | lo
            if end - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            if kind == DATA:
                self._on_data(sid, flags, payload)
            elif kind in (HEADERS, CONTINUATION):
                self._on_headers(kind, sid, flags, payload)
            elif kind == SETTINGS:
                if not flags & ACK:
                    self._on_settings(payload)
            elif kind == WINDOW_UPDATE:
                inc = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                if sid == 0:
                    self.send_window += inc
                else:
                    self.stream_windows[sid] = self.stream_windows.get(sid, self.initial_stream_window) + inc
                if self.pending:
                    self._flush_pending()
            elif kind == PING:
                if not flags & ACK:
                    self._write(frame(PING, ACK, 0, payload))
            elif kind == RST_STREAM:
                st = self.streams.get(sid)
                if st is not None:
                    code = int.from_bytes(payload[:4], "big")
                    self._finish(
                        sid, st, GrpcError("CANCELLED" if code == 8 else "UNAVAILABLE", f"RST_STREAM {code}")
                    )
            elif kind == GOAWAY:
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                for s, st in list(self.streams.items()):
                    if s > last:
                        self._finish(s, st, GrpcError("UNAVAILABLE", "GOAWAY"))
                self.closed = ConnectionResetError("GOAWAY")
        del buf[:pos]

    def _on_settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == 4:  # INITIAL_WINDOW_SIZE: applies to every open stream, by the difference
                delta = value - self.initial_stream_window
                self.initial_stream_window = value
                for sid in self.stream_windows:
                    self.stream_windows[sid] += delta
        self._write(frame(SETTINGS, ACK, 0, b""))
        if not self.ready.done():
            self.ready.set_result(None)
        if self.pending:
            self._flush_pending()

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        self.received += len(payload)
        if self.received > RECV_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        st = self.streams.get(sid)
        if st is None:
            return
        b = st.buf
        b += payload
        while len(b) >= 5:
            n = int.from_bytes(b[1:5], "big")
            if len(b) < 5 + n:
                break
            msg = bytes(b[5 : 5 + n])
            del b[: 5 + n]
            if st.on_message is not None:
                st.on_message(msg)
            else:
                st.reply = msg
        if flags & END_STREAM:
            self._finish(sid, st, None)

    def _on_headers(self, kind: int, sid: int, flags: int, payload: bytes) -> None:
        st = self.streams.get(sid)
        if kind == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY:
                payload = payload[5:]
        if st is None:
            return
        st.header_block += payload
        if not flags & END_HEADERS:
            self.continuation = sid
            return
        status, message = grpc_status(self._decoder, bytes(st.header_block))
        st.header_block.clear()
        if status is not None:
            st.status, st.message = status, message
        if flags & END_STREAM:
            self._finish(sid, st, None)

    def _finish(self, sid: int, st: _Stream, error: GrpcError | None) -> None:
        self.streams.pop(sid, None)
        self.stream_windows.pop(sid, None)
        fut = st.future
        if fut is None or fut.done():
            return
        if error is None and st.status != 0:
            code = (
                STATUS_NAMES[st.status]
                if st.status is not None and 0 <= st.status < len(STATUS_NAMES)
                else "UNKNOWN"
            )
            error = GrpcError(code, st.message)
        if error is not None:
            fut.set_exception(error)
        elif st.on_message is None and st.reply is None:
            fut.set_exception(GrpcError("INTERNAL", "no answer message"))
        else:
            fut.set_result(st.reply or b"")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
