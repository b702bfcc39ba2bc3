"""Payload sampling: which requests to keep, and the writer that puts them on disk off the request path.

Rules of this module:
- `SampleSink.offer` never blocks and does no I/O or tensor conversion: it redacts (a name lookup), then
  `put_nowait`; a full queue drops the record and counts it. Everything else runs in the writer thread.
- Redacted inputs lose their data in `offer`, before the record is queued: it never reaches the queue, the
  in-memory ring or a file.
- Every offered record ends in exactly one counter: ``offered == written + dropped + failed_writes + queued``
  (``queued``: accepted, not yet on disk). `written` counts records handed to the OS, not fsynced.
- The writer appends whole documents; when a write fails it cuts the file back to its last whole document,
  so a file stays a clean stream (a crash can leave one truncated document at the end; readers skip it).
- Only regular files of this sink's prefix are rotated or deleted, and never the file being written.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from gateway.observability import sample_files
from gateway.routing.table import key_fraction

log = logging.getLogger(__name__)

Tensor = tuple[
    str, str, tuple[int, ...], np.ndarray | None
]  # name, V2 datatype, shape, data (None: redacted)

# key_fraction's top bits already split traffic (challenger weight, shadow): sampling reads lower bits of
# the same hash, so a request id that doubles as the routing key does not make samples lean to one arm.
_LOW_BITS = 65536.0
_FLUSH_INTERVAL_S = 0.5  # idle data reaches the file (and `samples tail`) within this
_FLUSH_BYTES = 256 * 1024
_RETENTION_EVERY_S = 30.0
_ERROR_LOG_EVERY_S = 60.0
_STOP = object()


@dataclass(slots=True)
class SampleRecord:
    time: float  # unix seconds
    request_id: str
    endpoint: str
    model: str
    version: str
    role: str  # champion | challenger | shadow | pinned
    routing_key: str | None
    inputs: list[Tensor]  # arrays held by reference; converted to bytes in the writer thread
    outputs: list[Tensor]
    latency_us: int
    status: str  # "OK" or an ErrorCode value
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingPolicy:
    """One endpoint's sampling; built once per routing table, read per request."""

    rate: float = 0.0  # fraction of requests kept, in [0, 1]
    errors: bool = True  # keep every failed request, whatever the rate
    sensitive_inputs: frozenset[str] = frozenset()  # input names whose data is never stored

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"sample rate must be in [0, 1], got {self.rate}")

    def decide(self, request_id: str) -> bool:
        """Stable in the request id, so the served and the shadow answer of a request (and every worker
        process) decide alike; a random draw when the request has no id."""
        rate = self.rate
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        if not request_id:
            return random.random() < rate
        return (key_fraction(request_id) * _LOW_BITS) % 1.0 < rate

    def keep(self, request_id: str, failed: bool) -> bool:
        return (failed and self.errors) or self.decide(request_id)


@dataclass(frozen=True, slots=True)
class SinkSettings:
    directory: Path
    queue_size: int = 10_000  # records waiting for the writer; beyond it, records are dropped
    max_file_bytes: int = 64 * 1024 * 1024  # rotate once a file reaches this
    max_file_age_s: float = 3600.0  # ... or is this old
    retention_bytes: int = 1024 * 1024 * 1024  # this prefix's files are cut to this total, oldest first
    retention_age_s: float = 7 * 24 * 3600.0  # files last written longer ago than this are deleted
    file_prefix: str = "samples"  # one per writer process sharing the folder, e.g. "samples-w0"
    recent_size: int = 1000  # records kept in memory for `recent()`

    def __post_init__(self) -> None:
        for name in ("queue_size", "max_file_bytes", "max_file_age_s", "retention_bytes", "retention_age_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sampling {name} must be positive")
        if not self.file_prefix or "/" in self.file_prefix:
            raise ValueError(f"sampling file_prefix {self.file_prefix!r} must be a plain file name")


class _OpenFile:
    """The file being appended to, and the documents not yet handed to the OS."""

    __slots__ = ("buffer", "buffered", "fd", "flushed", "opened", "path", "since")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.opened = time.monotonic()
        self.flushed = 0  # bytes of whole documents on disk
        self.buffer = bytearray()
        self.buffered = 0  # records in the buffer
        self.since = 0.0  # monotonic time the buffer became non-empty


class SampleSink:
    """A bounded queue in front of one writer thread that appends records to rotating sample files."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.written = 0
        self.dropped = 0
        self.failed_writes = 0
        self._queue: queue.Queue[Any] = queue.Queue(settings.queue_size)
        self._held = 0  # records the writer took from the queue and has not yet counted
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=settings.recent_size)
        self._recent_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._file: _OpenFile | None = None
        self._seq = 0
        self._packer = msgpack.Packer(use_bin_type=True)
        self._next_retention = 0.0
        self._last_error_log = -_ERROR_LOG_EVERY_S

    # ---------------------------------------------------------------------------- request path

    def offer(self, record: SampleRecord, sensitive: frozenset[str] = frozenset()) -> None:
        if sensitive:
            for t in record.inputs:
                if t[0] in sensitive:
                    record.inputs = [(n, d, s, None if n in sensitive else a) for n, d, s, a in record.inputs]
                    break
        if self._closed:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    # ---------------------------------------------------------------------------- control side

    @property
    def queued(self) -> int:
        """Records accepted and not yet written or failed (an estimate while the writer runs)."""
        return self._queue.qsize() + self._held

    def recent(
        self, endpoint: str, version: str | None = None, role: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest sampled records of an endpoint, newest first, JSON-ready."""
        with self._recent_lock:
            docs = list(self._recent)
        out: list[dict[str, Any]] = []
        for doc in reversed(docs):
            if len(out) >= limit:
                break
            if (
                doc["endpoint"] == endpoint
                and version in (None, doc["version"])
                and role in (None, doc["role"])
            ):
                out.append(sample_files.to_json(doc))
        return out

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sample-writer", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record offered before this call is on disk; False if the writer is stalled."""
        if self._thread is None or not self._thread.is_alive():
            return False
        done = threading.Event()
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued, close the file and stop the writer; False if it did not stop in time."""
        self._closed = True
        thread = self._thread
        if thread is None or not thread.is_alive():
            return True
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return False
        thread.join(max(0.0, deadline - time.monotonic()))
        return not thread.is_alive()

    # ---------------------------------------------------------------------------- writer thread

    def _run(self) -> None:
        existing = sample_files.list_files(self.settings.directory, self.settings.file_prefix)
        self._seq = max((f.seq for f in existing), default=-1) + 1  # a restart never reuses a name
        while True:
            try:
                self._maintain()
                item = self._queue.get(timeout=self._until_due())
            except queue.Empty:
                continue
            except Exception:  # never let housekeeping stop the writer
                log.exception("sampling: file maintenance failed")
                time.sleep(1.0)
                continue
            if item is _STOP:
                self._rotate()
                return
            if isinstance(item, threading.Event):
                self._flush()
                item.set()
                continue
            self._held += 1
            try:
                self._write(item)
            except Exception:  # never let one record stop the writer
                self.failed_writes += 1
                self._held -= 1
                log.exception("sampling: could not store a record")

    def _until_due(self) -> float:
        now = time.monotonic()
        due = self._next_retention
        f = self._file
        if f is not None:
            due = min(due, f.opened + self.settings.max_file_age_s)
            if f.buffered:
                due = min(due, f.since + _FLUSH_INTERVAL_S)
        return min(max(due - now, 0.0), 1.0)

    def _maintain(self) -> None:
        now = time.monotonic()
        f = self._file
        if f is not None and now - f.opened >= self.settings.max_file_age_s:
            self._rotate()
        elif f is not None and f.buffered and now - f.since >= _FLUSH_INTERVAL_S:
            self._flush()
        if now >= self._next_retention:
            self._retain()

    def _write(self, record: SampleRecord) -> None:
        try:
            doc = _document(record)
            data = self._packer.pack(doc)
        except (TypeError, ValueError, KeyError, OverflowError) as exc:  # a malformed record
            self._packer.reset()
            self._failed(1, exc)
            return
        with self._recent_lock:
            self._recent.append(doc)
        f = self._file
        if f is None:
            try:
                f = self._open()
            except OSError as exc:
                self._failed(1, exc)
                return
        if not f.buffered:
            f.since = time.monotonic()
        f.buffer += data
        f.buffered += 1
        if len(f.buffer) >= _FLUSH_BYTES:
            self._flush()
        if (
            self._file is not None
            and self._file.flushed + len(self._file.buffer) >= self.settings.max_file_bytes
        ):
            self._rotate()

    def _open(self) -> _OpenFile:
        directory = self.settings.directory
        directory.mkdir(parents=True, exist_ok=True)  # recreated if someone deleted it
        path = directory / sample_files.file_name(self.settings.file_prefix, time.time(), self._seq)
        self._seq += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._file = _OpenFile(fd, path)
        return self._file

    def _flush(self) -> None:
        f = self._file
        if f is None or not f.buffered:
            return
        count, f.buffered = f.buffered, 0
        size = len(f.buffer)
        try:
            while f.buffer:  # a short write (a pipe, a disk filling up) leaves the rest for the next call
                del f.buffer[: os.write(f.fd, f.buffer)]
        except OSError as exc:
            f.buffer.clear()
            self._failed(count, exc)
            try:
                os.ftruncate(f.fd, f.flushed)  # back to the last whole document
            except OSError:
                self._close_file()  # cannot repair (a pipe, a dead disk): the next record opens a new file
        else:
            f.flushed += size
            self.written += count
            self._held -= count

    def _failed(self, count: int, exc: Exception) -> None:
        self.failed_writes += count
        self._held -= count
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning(
                "sampling: storing to %s failed (%r); records are dropped", self.settings.directory, exc
            )

    def _close_file(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                os.close(f.fd)

    def _rotate(self) -> None:
        if self._file is not None:
            self._flush()
            self._close_file()
            self._retain()

    def _retain(self) -> None:
        """Delete this prefix's oldest files until both retention limits hold (never the open file)."""
        s = self.settings
        self._next_retention = time.monotonic() + min(_RETENTION_EVERY_S, s.retention_age_s / 2)
        files = sample_files.list_files(s.directory, s.file_prefix)
        current = self._file.path if self._file is not None else None
        total = sum(f.size for f in files)
        cutoff = time.time() - s.retention_age_s
        for f in files:
            if f.path == current or (total <= s.retention_bytes and f.mtime >= cutoff):
                continue
            try:
                f.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("sampling: could not delete %s: %s", f.path, exc)
                continue
            total -= f.size


def _document(record: SampleRecord) -> dict[str, Any]:
    return {
        "v": sample_files.FORMAT_VERSION,
        "time": float(record.time),
        "request_id": record.request_id,
        "endpoint": record.endpoint,
        "model": record.model,
        "version": str(record.version),
        "role": _text(record.role),
        "routing_key": record.routing_key,
        "latency_us": int(record.latency_us),
        "status": _text(record.status),
        "error": record.error,
        "inputs": [sample_files.encode_tensor(*t) for t in record.inputs],
        "outputs": [sample_files.encode_tensor(*t) for t in record.outputs],
    }


def _text(value: Any) -> str:
    """An enum's value (Role, ErrorCode) or the string itself."""
    return str(getattr(value, "value", value))
