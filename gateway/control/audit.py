"""The audit trail: one JSON line per accepted change in `<state_dir>/audit.jsonl`, append-only.

Rules of this module:
- An entry is appended and fsynced before the change is acknowledged; it is never rewritten.
- Readers skip a line they cannot parse (a crash can tear the last one), so the log never blocks anything.
- Reading walks the file backwards from its end, so asking for the latest entries stays cheap however
  long the log grows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.control.durable import append_line

_BLOCK = 64 * 1024


@dataclass(frozen=True, slots=True)
class AuditEntry:
    time: str
    actor: str
    action: str  # put, patch, promote, rollback, load, unload
    endpoint: str | None
    revision: int | None
    before: dict[str, Any] | None  # spec JSON (or model state) before and after the change
    after: dict[str, Any] | None
    model: str | None = None  # for load / unload


def _lines_backwards(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        pos = f.seek(0, 2)
        rest = b""
        while pos > 0:
            step = min(_BLOCK, pos)
            pos -= step
            f.seek(pos)
            lines = (f.read(step) + rest).split(b"\n")
            rest = lines[0]
            yield from (line for line in reversed(lines[1:]) if line.strip())
        if rest.strip():
            yield rest


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # appends come from worker threads; one line must not split another

    def append(self, entry: AuditEntry) -> None:
        """Blocking (fsync): run it with asyncio.to_thread."""
        line = orjson.dumps(asdict(entry))
        with self._lock:
            append_line(self.path, line)

    def read(
        self, limit: int, endpoint: str | None = None, since_revision: int | None = None
    ) -> list[dict[str, Any]]:
        """The latest `limit` matching entries, oldest first; `since_revision` keeps revisions above it."""
        found: list[dict[str, Any]] = []
        if limit <= 0 or not self.path.exists():
            return found
        for line in _lines_backwards(self.path):
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(entry, dict):
                continue
            if endpoint is not None and entry.get("endpoint") != endpoint:
                continue
            if since_revision is not None:
                revision = entry.get("revision")
                if not isinstance(revision, int) or revision <= since_revision:
                    continue
            found.append(entry)
            if len(found) >= limit:
                break
        found.reverse()
        return found
