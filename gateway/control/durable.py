"""File writes that survive `kill -9` and power loss once they return.

Rules of this module:
- A file is never rewritten in place: the new content goes to a temporary file that is fsynced, then
  renamed over the old one, then the folder is fsynced so the rename itself is on disk. At every instant
  the path holds either the complete old content or the complete new content.
- Appends are whole lines written and fsynced before returning; a reader skips a torn last line.
- These functions block: callers on the event loop run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_copy(src: Path, dst: Path) -> None:
    """Make `dst` name `src`'s current content. A hard link costs nothing and `src` is never modified in
    place (only replaced), so the link keeps the old content after the replace."""
    staging = dst.with_name(dst.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)
    try:
        os.link(src, staging)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(src, staging)
        fd = os.open(staging, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(staging, dst)


def replace_file(path: Path, data: bytes, previous: Path | None = None) -> None:
    """Atomically make `path` hold `data`; with `previous`, the content it replaces is kept there."""
    staging = path.with_name(path.name + ".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if previous is not None and path.exists():
        _keep_copy(path, previous)
    os.replace(staging, path)
    fsync_dir(path.parent)


def append_line(path: Path, line: bytes) -> None:
    """Append one line (newline added), fsynced; a torn line left by a crash is closed off first."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        _write_all(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
