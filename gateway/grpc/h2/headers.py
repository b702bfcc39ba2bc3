"""HPACK (RFC 7541) header-block decoding for the native gRPC transport, with a memo for repeated blocks.

Why our own decoder: the ``hpack`` package's ``Decoder`` costs about 21 us for a typical gRPC request
block here, as much as the rest of a call. gRPC clients repeat the same block for every call on a channel
(after the first call every header is a one-byte reference into the dynamic table), so a block that did
not change the table decodes to the same list while the table stays as it is: we keep those results.

Rules of this module:
- The memo is keyed by the block's bytes and valid for one state of the dynamic table: any insertion or
  size change clears it, and a block that changes the table is never memoised.
- Huffman strings and the static table come from the ``hpack`` package (well-kept, and not our core).
- Every malformed block raises ``CompressionError``; the connection answers it with GOAWAY
  COMPRESSION_ERROR, as RFC 7540 requires (the decoder's state is then unusable).
- The decoded header list is bounded by ``max_list_size`` (RFC 7541 sizes: name + value + 32 per field).
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

Header = tuple[bytes, bytes]
STATIC: tuple[Header, ...] = tuple(HeaderTable.STATIC_TABLE)
_STATIC_LEN = len(STATIC)
_ENTRY_OVERHEAD = 32
MEMO_ENTRIES = 256


class CompressionError(Exception):
    """A header block that cannot be decoded (a connection error: COMPRESSION_ERROR)."""


class HeaderListTooLarge(Exception):
    """A decoded header list over the limit we announced (the stream is refused, the connection lives)."""


class HeaderDecoder:
    """One connection's HPACK decoder: dynamic table state plus the memo of unchanged-table blocks."""

    __slots__ = ("_limit", "_max_size", "_memo", "_size", "_table", "max_list_size")

    def __init__(self, max_table_size: int = 4096, max_list_size: int = 65536) -> None:
        self._table: deque[Header] = deque()
        self._size = 0
        self._max_size = max_table_size  # current size, as the peer's size updates set it
        self._limit = max_table_size  # what we announced: the peer may not exceed it
        self._memo: dict[bytes, list[Header]] = {}
        self.max_list_size = max_list_size

    def decode(self, block: bytes) -> list[Header]:
        memo = self._memo.get(block)
        if memo is not None:
            return memo
        headers, changed = self._decode(block)
        if changed:
            self._memo.clear()
        elif len(self._memo) < MEMO_ENTRIES:
            self._memo[block] = headers
        return headers

    # ------------------------------------------------------------------ decoding

    def _decode(self, block: bytes) -> tuple[list[Header], bool]:
        out: list[Header] = []
        changed = False
        listed = 0
        limit = self.max_list_size
        pos, end = 0, len(block)
        try:
            while pos < end:
                first = block[pos]
                if first & 0x80:  # indexed field
                    index, pos = _integer(block, pos, 7)
                    header = self._lookup(index)
                elif first & 0x40:  # literal with incremental indexing
                    header, pos = self._literal(block, pos, 6)
                    self._insert(header)
                    changed = True
                elif first & 0x20:  # dynamic table size update
                    size, pos = _integer(block, pos, 5)
                    if size > self._limit:
                        raise CompressionError(f"table size update {size} over the announced {self._limit}")
                    self._max_size = size
                    self._evict(0)
                    changed = True
                    continue
                else:  # literal without indexing / never indexed
                    header, pos = self._literal(block, pos, 4)
                out.append(header)
                listed += len(header[0]) + len(header[1]) + _ENTRY_OVERHEAD
        except IndexError:
            raise CompressionError("truncated header block") from None
        if listed > limit:  # only after the whole block: the table must stay in step with the peer's
            if changed:
                self._memo.clear()
            raise HeaderListTooLarge(f"header list of {listed} bytes is over the limit of {limit}")
        return out, changed

    def _lookup(self, index: int) -> Header:
        if index == 0:
            raise CompressionError("header index 0")
        if index <= _STATIC_LEN:
            return STATIC[index - 1]
        dynamic = index - _STATIC_LEN - 1
        if dynamic >= len(self._table):
            raise CompressionError(f"header index {index} outside the table")
        return self._table[dynamic]

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[Header, int]:
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._lookup(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return (name, value), pos

    def _insert(self, header: Header) -> None:
        size = len(header[0]) + len(header[1]) + _ENTRY_OVERHEAD
        if size > self._max_size:  # an entry larger than the table empties it (RFC 7541 4.4)
            self._table.clear()
            self._size = 0
            return
        self._evict(size)
        self._table.appendleft(header)
        self._size += size

    def _evict(self, room: int) -> None:
        while self._table and self._size + room > self._max_size:
            name, value = self._table.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise CompressionError("header integer too large")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    stop = pos + length
    if stop > len(block):
        raise CompressionError("header string runs past the block")
    raw = block[pos:stop]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except Exception as exc:  # hpack raises its own HPACKDecodingError
            raise CompressionError(f"bad Huffman string: {exc}") from None
    return raw, stop
