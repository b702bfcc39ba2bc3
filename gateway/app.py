"""The composition root: builds every part of the gateway, owns start-up, signals and shutdown.

Order matters and is kept in one place: models load (and warm up) before any listener opens, so a client
never meets a half-loaded gateway; on shutdown readiness drops first, listeners stop accepting, in-flight
requests finish within the grace period, and only then do the executors go away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

from gateway import __version__
from gateway.control.api import create_control_app
from gateway.control.auth import Authenticator
from gateway.control.controller import EndpointController
from gateway.control.store import StateStore
from gateway.grpc.server import GrpcServer, start_grpc_server
from gateway.http.app import create_http_app
from gateway.observability.metrics import SnapshotCollector
from gateway.observability.metrics_server import create_metrics_app
from gateway.routing.router import Router
from gateway.routing.shadow import ShadowDispatcher
from gateway.routing.table import EndpointSpec, Target
from gateway.service import InferenceService
from gateway.settings import EndpointSettings, Settings, SettingsError
from runtime.repository import ModelRepository

log = logging.getLogger("onnxgate")


@dataclass(frozen=True, slots=True)
class BoundPorts:
    host: str
    http: int
    grpc: int
    metrics: int
    control: int


def endpoint_spec(e: EndpointSettings) -> EndpointSpec:
    return EndpointSpec(
        name=e.name,
        champion=Target(e.champion.model, e.champion.version),
        challenger=Target(e.challenger.model, e.challenger.version) if e.challenger else None,
        weight=e.challenger.weight if e.challenger else 0.0,
        shadow=Target(e.shadow.model, e.shadow.version) if e.shadow else None,
        sample_rate=e.shadow.sample_rate if e.shadow else 0.0,
    )


async def _start_site(
    app: web.Application, host: str, port: int, reuse_port: bool
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=1024)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = address[1]
            break
    return runner, bound


class Gateway:
    def __init__(self, settings: Settings) -> None:
        if settings.model_repository is None:
            raise SettingsError("no model repository: pass --model-repository DIR or --config FILE")
        self.settings = settings
        threads = settings.inference_threads or os.cpu_count() or 2
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onnxgate-infer")
        self.repository = ModelRepository(settings.model_repository, self.executor)
        self.router = Router(self.repository, {e.name: endpoint_spec(e) for e in settings.endpoints})
        self.shadow = ShadowDispatcher(
            settings.shadow_queue_size, settings.shadow_concurrency, settings.shadow_timeout_s
        )
        self.service = InferenceService(
            self.repository, self.router, __version__, settings.model_control, self.shadow
        )
        # Raises SettingsError for a non-loopback control listener without tokens, or a bad tokens file.
        self.auth = Authenticator.from_settings(settings)
        self.controller = EndpointController(self.router, self.repository, StateStore(settings.state_dir))
        self.controller.listeners.append(self.service.recorder.observe_control)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(SnapshotCollector(self.service.snapshot))
        self._runners: list[web.AppRunner] = []
        self._grpc: GrpcServer | None = None
        self.ports: BoundPorts | None = None

    async def start(self) -> BoundPorts:
        s = self.settings
        await self.repository.load_all()
        # Persisted routing state wins over gateway.toml; an unreadable state file stops start-up here.
        await self.controller.startup({e.name: endpoint_spec(e) for e in s.endpoints})
        self.shadow.start()
        reuse = s.workers > 1
        http_runner, http_port = await _start_site(
            create_http_app(self.service, s.limits), s.host, s.http_port, reuse
        )
        self._runners.append(http_runner)
        self._grpc = await start_grpc_server(self.service, s.host, s.grpc_port, s.limits, reuse_port=reuse)
        metrics_runner, metrics_port = await _start_site(
            create_metrics_app(self.registry), s.host, s.metrics_port, reuse
        )
        self._runners.append(metrics_runner)
        control_runner, control_port = await _start_site(
            create_control_app(self.controller, self.auth), s.control_host or s.host, s.control_port, False
        )
        self._runners.append(control_runner)
        self.service.started = True
        await self._grpc.set_serving(self.service.ready())
        self.ports = BoundPorts(s.host, http_port, self._grpc.port, metrics_port, control_port)
        return self.ports

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish within `grace_s`, then release everything."""
        self.service.draining = True
        if self._grpc is not None:
            await self._grpc.set_serving(False)
            await self._grpc.server.stop(grace_s)
        for runner in self._runners:
            await runner.cleanup()
        await self.shadow.stop()
        self.executor.shutdown(wait=True, cancel_futures=False)


async def serve(settings: Settings, ports_file: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ports = await gateway.start()
    line = json.dumps(asdict(ports))
    if ports_file is not None:
        tmp = ports_file.with_suffix(ports_file.suffix + ".tmp")
        tmp.write_text(line)
        tmp.replace(ports_file)
    log.info(
        "onnxgate %s ready: http=%s:%d grpc=%s:%d metrics=%s:%d control=%s:%d",
        __version__,
        ports.host,
        ports.http,
        ports.host,
        ports.grpc,
        ports.host,
        ports.metrics,
        settings.control_host or ports.host,
        ports.control,
    )
    await stop.wait()
    log.info("shutting down")
    await gateway.stop()
