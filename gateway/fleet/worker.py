"""A worker process: a full serving gateway on ports it shares with its siblings (SO_REUSEPORT).

Why it takes routing from the supervisor instead of reading routing.json itself: a change must reach
every worker before the operator is told it succeeded, so the supervisor pushes each acknowledged state
and waits for every worker's answer. A worker whose supervisor goes away shuts itself down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from gateway.fleet.link import Link
from gateway.logs import configure as configure_logging
from gateway.loop import run as run_loop
from gateway.routing.table import EndpointSpec
from gateway.settings import Settings

log = logging.getLogger("onnxgate.worker")


def run_worker(
    settings: Settings,
    index: int,
    http_port: int,
    grpc_port: int,
    specs: dict[str, EndpointSpec],
    conn: Connection,
) -> None:
    """Process entry point (picklable arguments only: it starts under the spawn method)."""
    configure_logging(settings.log_level, tag=f"[w{index}]")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    worker_settings = dataclasses.replace(settings, http_port=http_port, grpc_port=grpc_port)
    run_loop(_serve(worker_settings, index, specs, conn), worker_settings)


async def _serve(settings: Settings, index: int, specs: dict[str, EndpointSpec], conn: Connection) -> None:
    from gateway.app import Gateway, ProcessRole  # late: keeps the spawn bootstrap light

    gateway = Gateway(settings, role=ProcessRole.WORKER, worker_index=index)
    stop = asyncio.Event()
    ready = asyncio.Event()

    async def handle(verb: str, payload: Any) -> Any:
        if verb == "ready":
            await ready.wait()
            return os.getpid()
        if verb == "specs":
            gateway.router.rebuild(payload)
            return None
        if verb == "snapshot":
            return gateway.service.snapshot()
        if verb == "load":
            entry = await gateway.repository.load(payload)
            return sorted(entry.versions)
        if verb == "unload":
            await gateway.repository.unload(payload)
            return None
        if verb == "samples":
            return gateway.recent_samples(*payload)
        raise ValueError(f"unknown verb {verb!r}")

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    link = Link(conn, handle, on_close=stop.set)
    link.start()
    await gateway.start(initial_specs=specs)
    ready.set()
    await stop.wait()
    await gateway.stop()
    link.close()
