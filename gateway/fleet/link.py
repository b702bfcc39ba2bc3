"""A request/answer channel over a multiprocessing pipe, driven by the asyncio loop on both ends.

Rules of this module:
- Messages are pickled tuples: ``(id, verb, payload)`` one way and ``(id, ok, payload)`` back. Only
  control-plane traffic crosses (routing changes, snapshots, model loads), never requests.
- Reading is event driven (``add_reader`` on the pipe's descriptor): nothing blocks the loop waiting.
- A link whose peer died fails every pending call with ``LinkClosed`` so callers can react.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

Handler = Callable[[str, Any], Awaitable[Any]]


class LinkClosed(ConnectionError):
    pass


class RemoteError(RuntimeError):
    """The peer's handler raised; `message` is its text, `code` its ErrorCode value when it had one."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Link:
    def __init__(
        self, conn: Connection, handler: Handler | None = None, on_close: Callable[[], None] | None = None
    ) -> None:
        self._conn = conn
        self._on_close = on_close
        self._handler = handler
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._conn.fileno(), self._readable)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            self._loop.remove_reader(self._conn.fileno())
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LinkClosed("the other process went away"))
        self._pending.clear()
        self._conn.close()
        if self._on_close is not None:
            self._on_close()

    async def call(self, verb: str, payload: Any = None, timeout: float = 30.0) -> Any:
        if self.closed or self._loop is None:
            raise LinkClosed("link is closed")
        msg_id = next(self._ids)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[msg_id] = fut
        try:
            self._conn.send((msg_id, verb, payload))
        except (OSError, ValueError) as exc:
            self._pending.pop(msg_id, None)
            self.close()
            raise LinkClosed(str(exc)) from None
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg_id, None)

    def _readable(self) -> None:
        try:
            while self._conn.poll():
                message = self._conn.recv()
                self._dispatch(message)
        except (EOFError, OSError):
            self.close()

    def _dispatch(self, message: tuple[int, Any, Any]) -> None:
        msg_id, second, payload = message
        if isinstance(second, str):  # a call from the peer
            task = asyncio.ensure_future(self._answer(msg_id, second, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        fut = self._pending.get(msg_id)
        if fut is None or fut.done():
            return
        if second:
            fut.set_result(payload)
        else:
            fut.set_exception(RemoteError(*payload))

    async def _answer(self, msg_id: int, verb: str, payload: Any) -> None:
        assert self._handler is not None, "this end of the link takes no calls"
        try:
            result = await self._handler(verb, payload)
            reply: tuple[int, bool, Any] = (msg_id, True, result)
        except Exception as exc:
            code = getattr(getattr(exc, "code", None), "value", None)
            reply = (msg_id, False, (getattr(exc, "message", None) or str(exc) or type(exc).__name__, code))
        if not self.closed:
            try:
                self._conn.send(reply)
            except (OSError, ValueError):
                self.close()
