"""The supervisor of several worker processes: starts them on shared ports, pushes routing changes to
all of them before a change is acknowledged, gathers their records, and restarts any that dies.

Rules of this module:
- Workers start with the spawn method (a clean interpreter each: no inherited event loop or threads).
- Ports asked as 0 are resolved once, here, and reserved with an SO_REUSEPORT socket until the workers
  listen on them, so all workers share one port.
- A push to a worker that is down is skipped: a restarted worker is given the current state at start.
- A worker that dies is restarted; the others keep serving on the shared ports meanwhile. The delay before
  a restart doubles (0.5 s up to 30 s) while a worker keeps dying within `STABLE_S` of its start, and is
  back to 0.5 s once one has lived that long. A restart that fails (the new process dies, or is not ready
  in time and is killed) is followed by another one, so a slot is never left empty for good.
- On stop every worker gets SIGTERM at the same moment and drains on its own; the supervisor waits for
  them (grace period + 5 s), then kills any that is left.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from gateway.fleet.link import Link, LinkClosed
from gateway.fleet.worker import run_worker
from gateway.routing.table import EndpointSpec
from gateway.settings import Settings

log = logging.getLogger("onnxgate.supervisor")
_CTX = multiprocessing.get_context("spawn")
STABLE_S = 30.0  # a worker that lived this long had a fault, not a crash loop: restart it at once
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 30.0
READY_TIMEOUT_S = 300.0


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) an SO_REUSEPORT socket so the workers can share the port it holds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    link: Link
    started: float = field(default_factory=time.monotonic)


class Fleet:
    def __init__(
        self,
        settings: Settings,
        http_port: int,
        grpc_port: int,
        current_specs: Callable[[], dict[str, EndpointSpec]],
    ) -> None:
        self.settings = settings
        self.http_port = http_port
        self.grpc_port = grpc_port
        self._current_specs = current_specs
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        self._quick_deaths: dict[int, int] = {}  # per slot: deaths in a row within STABLE_S of a start
        self._respawns: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(i) for i in range(self.settings.workers)))

    async def _spawn(self, index: int) -> None:
        parent, child = _CTX.Pipe(duplex=True)
        process = _CTX.Process(
            target=run_worker,
            args=(self.settings, index, self.http_port, self.grpc_port, self._current_specs(), child),
            name=f"onnxgate-worker-{index}",
            daemon=False,
        )
        process.start()
        child.close()
        link = Link(parent)
        link.start()
        worker = _Worker(index, process, link)
        self.workers[index] = worker
        loop = asyncio.get_running_loop()
        loop.add_reader(process.sentinel, self._exited, worker)
        try:
            pid = await link.call("ready", timeout=READY_TIMEOUT_S)
        except (LinkClosed, TimeoutError) as exc:
            if process.is_alive():  # stuck in its start-up: its exit makes the next restart happen
                process.kill()
            raise RuntimeError(f"worker {index} did not start: {exc}") from None
        log.info("worker %d ready (pid %d)", index, pid)

    def _exited(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.process.sentinel)
        worker.link.close()
        worker.process.join(1.0)  # the sentinel closes a moment before the process can be reaped
        if self._stopping or self.workers.get(worker.index) is not worker:
            return
        quick = time.monotonic() - worker.started < STABLE_S
        deaths = self._quick_deaths[worker.index] = (
            self._quick_deaths.get(worker.index, 0) + 1 if quick else 0
        )
        delay = min(FIRST_DELAY_S * 2 ** max(0, deaths - 1), MAX_DELAY_S)
        log.error(
            "worker %d (pid %s) exited with %s; starting a new one in %.1f s",
            worker.index,
            worker.process.pid,
            worker.process.exitcode,
            delay,
        )
        self.restarts += 1
        task = asyncio.ensure_future(self._respawn(worker.index, delay))
        self._respawns.add(task)
        task.add_done_callback(self._respawned)

    def _respawned(self, task: asyncio.Task[None]) -> None:
        self._respawns.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s; trying again when it exits", exc)  # its process is dead or killed: _exited follows

    async def _respawn(self, index: int, delay: float) -> None:
        # A worker that dies at once again and again should not spin the machine.
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn(index)

    def _live(self) -> list[_Worker]:
        return [w for w in self.workers.values() if not w.link.closed and w.process.is_alive()]

    async def call_all(self, verb: str, payload: Any = None, timeout: float = 30.0) -> list[Any]:
        """Ask every live worker; a worker that dies meanwhile is skipped (it restarts with current state)."""
        workers = self._live()
        results = await asyncio.gather(
            *(w.link.call(verb, payload, timeout) for w in workers), return_exceptions=True
        )
        answers = []
        for result in results:
            if isinstance(result, LinkClosed | TimeoutError):
                continue
            if isinstance(result, BaseException):
                raise result
            answers.append(result)
        return answers

    async def apply_specs(self, specs: dict[str, EndpointSpec]) -> None:
        await self.call_all("specs", specs)

    async def stop(self, grace_s: float) -> None:
        self._stopping = True
        for task in tuple(self._respawns):
            task.cancel()
        for w in self.workers.values():
            if w.process.is_alive():
                w.process.terminate()  # SIGTERM: the worker drains its in-flight requests
        deadline = time.monotonic() + grace_s + 5
        for w in self.workers.values():
            remaining = max(0.1, deadline - time.monotonic())
            await asyncio.to_thread(w.process.join, remaining)
            if w.process.is_alive():
                log.error("worker %d did not stop in time; killing it", w.index)
                w.process.kill()
                await asyncio.to_thread(w.process.join, 5)
            w.link.close()
