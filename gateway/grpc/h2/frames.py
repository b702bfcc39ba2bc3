"""HTTP/2 frame layout (RFC 7540) and the header blocks the native gRPC transport sends.

Rules of this module:
- Pure functions and constants: no state, no I/O.
- Blocks we send use only static-table references and literals without indexing, never Huffman, so they
  need no encoder state and the common ones (response headers, OK trailers) are built once at import.
- ``grpc-message`` is percent-encoded as the gRPC wire spec says (bytes outside 0x20-0x7E, and '%').
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings identifiers.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# Error codes (RFC 7540 section 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = (1 << 31) - 1

HEAD = struct.Struct(">HBBBI")  # length (high 16 bits, low 8 bits), type, flags, stream id
_SETTING = struct.Struct(">HI")
_U32 = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return HEAD.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


def frame_head(kind: int, flags: int, stream: int, length: int) -> bytes:
    return HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream)


def settings(values: Iterable[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, _U32.pack(increment))


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, _U32.pack(code))


def goaway(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream, code) + debug)


def u32(payload: bytes) -> int:
    return int(_U32.unpack_from(payload)[0])


# ---------------------------------------------------------------------- header blocks we send


def _int(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer with an N-bit prefix; `first` holds the representation's flag bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes | int, value: bytes) -> bytes:
    """Literal field without indexing (name by static index or spelled out), value not Huffman-coded."""
    if isinstance(name, int):
        return _int(name, 4, 0x00) + _int(len(value), 7, 0) + value
    return b"\x00" + _int(len(name), 7, 0) + name + _int(len(value), 7, 0) + value


_STATUS_200 = b"\x88"  # :status 200 (static 8)
_CONTENT_TYPE = literal(31, b"application/grpc")  # static 31 is content-type
RESPONSE_HEADERS = _STATUS_200 + _CONTENT_TYPE
OK_TRAILERS = literal(b"grpc-status", b"0")
_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}


def percent_encode(message: str) -> bytes:
    raw = message.encode("utf-8", "replace")
    if all(b in _SAFE for b in raw):
        return raw
    return b"".join(bytes((b,)) if b in _SAFE else b"%%%02X" % b for b in raw)


def status_block(code: int, message: str, metadata: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """Trailers: grpc-status, grpc-message (if any), then trailing metadata."""
    parts = [literal(b"grpc-status", str(code).encode())]
    if message:
        parts.append(literal(b"grpc-message", percent_encode(message)))
    parts.extend(literal(k, v) for k, v in metadata)
    return b"".join(parts)


def http_status_block(status: int) -> bytes:
    """A plain HTTP answer (wrong method or content type): :status and nothing else."""
    return literal(8, str(status).encode())
