"""The composition root: builds every part of the gateway, owns start-up, signals and shutdown.

Order matters and is kept in one place: models load (and warm up) before any listener opens, so a client
never meets a half-loaded gateway; on shutdown readiness drops first, listeners stop accepting, in-flight
requests finish within the grace period, and only then do the executors go away.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import signal
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

from gateway import __version__
from gateway.control.api import create_control_app
from gateway.control.auth import Authenticator, inference_authenticator
from gateway.control.controller import EndpointController
from gateway.control.store import StateStore
from gateway.fleet.supervisor import Fleet, reserve_port
from gateway.grpc.server import GrpcServer, start_grpc_server
from gateway.http.app import create_http_app
from gateway.observability.metrics import SnapshotCollector
from gateway.observability.metrics_server import create_metrics_app
from gateway.observability.records import merge_snapshots
from gateway.observability.sampling import SampleSink, SamplingPolicy, SinkSettings
from gateway.routing.router import Router
from gateway.routing.shadow import ShadowDispatcher, merge_shadow_snapshots
from gateway.routing.table import EndpointSpec, Target
from gateway.service import InferenceService
from gateway.settings import EndpointSettings, Settings, SettingsError
from gateway.tls import grpc_credentials, server_context
from runtime.repository import ModelRepository

log = logging.getLogger("onnxgate")
ORPHAN_RUNS_WAIT_S = 1.0  # after the drain, runs whose calls are gone (cancelled) get this long to end


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
    app: web.Application,
    host: str,
    port: int,
    reuse_port: bool,
    ssl_context: ssl.SSLContext | None = None,
    grace_s: float = 10.0,
    cancel_on_disconnect: bool = False,
) -> tuple[web.AppRunner, int]:
    # keepalive_timeout: aiohttp's default (an hour) is the only timer that closes a connection that
    # never finishes its headers; 75 s matches common proxies. handler_cancellation: a client that hangs
    # up cancels its request's work (inference only; control changes finish whatever the client does).
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=grace_s,
        keepalive_timeout=75,
        handler_cancellation=cancel_on_disconnect,
    )
    await runner.setup()
    site = web.TCPSite(
        runner, host, port, reuse_port=reuse_port or None, backlog=1024, ssl_context=ssl_context
    )
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = address[1]
            break
    return runner, bound


class ProcessRole(enum.Enum):
    SINGLE = "single"  # everything in one process (--workers 1)
    SUPERVISOR = "supervisor"  # control plane and metrics; starts and feeds the workers
    WORKER = "worker"  # inference front ends on shared ports; routing pushed by the supervisor


class Gateway:
    """One process of the gateway; which listeners it opens depends on its role."""

    def __init__(
        self, settings: Settings, role: ProcessRole = ProcessRole.SINGLE, worker_index: int = 0
    ) -> None:
        if settings.model_repository is None:
            raise SettingsError("no model repository: pass --model-repository DIR or --config FILE")
        self.settings = settings
        self.role = role
        threads = settings.inference_threads or os.cpu_count() or 2
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="onnxgate-infer")
        # The supervisor opens the models too: control changes are validated against the same files.
        self.repository = ModelRepository(settings.model_repository, self.executor)
        self.router = Router(self.repository, {e.name: endpoint_spec(e) for e in settings.endpoints})
        self.shadow = ShadowDispatcher(
            settings.shadow_queue_size,
            settings.shadow_concurrency,
            settings.shadow_timeout_s,
            max_wait_s=settings.shadow_max_wait_s,
            busy_limit=settings.shadow_busy_limit,
        )
        self.service = InferenceService(
            self.repository, self.router, __version__, settings.model_control, self.shadow
        )
        self.sink: SampleSink | None = None
        if role is not ProcessRole.SUPERVISOR:
            self.sink = self._sampling(settings, worker_index if role is ProcessRole.WORKER else None)
        self.controller: EndpointController | None = None
        self.fleet: Fleet | None = None
        self._reserved: list[socket.socket] = []
        if role is not ProcessRole.WORKER:
            # Raises SettingsError for a non-loopback control listener without tokens, or a bad tokens file.
            self.auth = Authenticator.from_settings(settings)
            self.controller = EndpointController(self.router, self.repository, StateStore(settings.state_dir))
            self.controller.listeners.append(self.service.recorder.observe_control)
            self.registry = CollectorRegistry()
            ProcessCollector(registry=self.registry)
            GCCollector(registry=self.registry)
            self._scraped: dict[str, Any] = {}
            self.registry.register(SnapshotCollector(lambda: self._scraped))
        self._runners: list[web.AppRunner] = []
        self._grpc: GrpcServer | None = None
        self.stuck_runs = False  # set by stop() when runs outlived the grace period
        self.ports: BoundPorts | None = None

    def _sampling(self, settings: Settings, worker: int | None) -> SampleSink:
        cfg = settings.sampling
        sink = SampleSink(
            SinkSettings(
                directory=cfg.directory or settings.state_dir / "samples",
                queue_size=cfg.queue_size,
                max_file_bytes=cfg.max_file_bytes,
                max_file_age_s=cfg.max_file_age_s,
                retention_bytes=cfg.retention_bytes,
                retention_age_s=cfg.retention_age_s,
                file_prefix="samples" if worker is None else f"samples-w{worker}",
            )
        )
        sensitive = frozenset(cfg.sensitive_inputs)
        default = SamplingPolicy(cfg.rate, cfg.errors, sensitive)
        per_endpoint = {
            e.name: SamplingPolicy(e.sample_rate, cfg.errors, sensitive)
            for e in settings.endpoints
            if e.sample_rate is not None
        }
        self.service.set_sampling(sink, default, per_endpoint)
        return sink

    async def start(self, initial_specs: dict[str, EndpointSpec] | None = None) -> BoundPorts:
        s = self.settings
        await self.repository.load_all()
        if self.controller is not None:
            # Persisted routing state wins over gateway.toml; an unreadable state file stops start-up here.
            await self.controller.startup({e.name: endpoint_spec(e) for e in s.endpoints})
        elif initial_specs is not None:
            self.router.rebuild(initial_specs)
        http_port, grpc_port, metrics_port, control_port = s.http_port, s.grpc_port, 0, 0
        if self.role is ProcessRole.SUPERVISOR:
            http_port, grpc_port = await self._start_fleet()
        else:
            self.shadow.start()
            assert self.sink is not None
            self.sink.start()
            reuse = self.role is ProcessRole.WORKER
            token_check = inference_authenticator(s)  # None unless inference_auth: no per-request cost
            http_runner, http_port = await _start_site(
                create_http_app(self.service, s.limits, token_check),
                s.host,
                s.http_port,
                reuse,
                server_context(s),
                grace_s=s.shutdown_grace_s,
                cancel_on_disconnect=True,
            )
            self._runners.append(http_runner)
            self._grpc = await start_grpc_server(
                self.service,
                s.host,
                s.grpc_port,
                s.limits,
                reuse_port=reuse,
                credentials=grpc_credentials(s) if s.grpc_transport == "grpcio" else None,
                auth=token_check,
                max_pending_requests=s.grpc_max_pending_requests,
                transport=s.grpc_transport,
                ssl_context=server_context(s),
            )
            grpc_port = self._grpc.port
        if self.controller is not None:
            metrics_runner, metrics_port = await _start_site(
                create_metrics_app(self.registry, self._refresh_metrics),
                s.host,
                s.metrics_port,
                False,
                server_context(s),
            )
            self._runners.append(metrics_runner)
            control_runner, control_port = await _start_site(
                create_control_app(
                    self.controller, self.auth, snapshot_source=self._snapshot, samples_source=self._samples
                ),
                s.control_host or s.host,
                s.control_port,
                False,
                server_context(s, s.control_client_ca),
            )
            self._runners.append(control_runner)
        self.service.started = True
        if self._grpc is not None:
            await self._grpc.set_serving(self.service.ready())
        self.ports = BoundPorts(s.host, http_port, grpc_port, metrics_port, control_port)
        return self.ports

    async def _start_fleet(self) -> tuple[int, int]:
        s = self.settings
        http_sock, http_port = reserve_port(s.host, s.http_port)
        grpc_sock, grpc_port = reserve_port(s.host, s.grpc_port)
        self._reserved = [http_sock, grpc_sock]
        self.fleet = Fleet(s, http_port, grpc_port, lambda: dict(self.router.specs))
        assert self.controller is not None
        self.controller.propagate = self.fleet.apply_specs
        self.controller.propagate_model = self._propagate_model
        await self.fleet.start()
        for sock in self._reserved:  # the workers listen on the ports now
            sock.close()
        self._reserved = []
        return http_port, grpc_port

    async def _propagate_model(self, action: str, name: str) -> None:
        assert self.fleet is not None
        await self.fleet.call_all(action, name, timeout=600)

    async def _snapshot(self) -> dict[str, Any]:
        """This process's records, or with workers the sum of theirs (the supervisor serves no traffic)."""
        own = self.service.snapshot()
        if self.fleet is None:
            return own
        theirs = await self.fleet.call_all("snapshot")
        records = merge_snapshots([t["records"] for t in theirs] or [own["records"]])
        records["control_changes"] = own["records"]["control_changes"]
        samples = {k: sum(t["samples"][k] for t in theirs) for k in own["samples"]}
        shadow = merge_shadow_snapshots([t["shadow"] for t in theirs] or [own["shadow"]])
        return {"records": records, "shadow": shadow, "models": own["models"], "samples": samples}

    async def _refresh_metrics(self) -> None:
        self._scraped = await self._snapshot()

    async def _samples(
        self, endpoint: str, version: str | None, role: str | None, limit: int
    ) -> list[dict[str, Any]]:
        if self.fleet is None:
            return self.service.recent_samples(endpoint, version, role, limit)
        found: list[dict[str, Any]] = []
        for part in await self.fleet.call_all("samples", (endpoint, version, role, limit)):
            found.extend(part)
        found.sort(key=lambda r: r.get("time", 0), reverse=True)
        return found[:limit]

    def recent_samples(
        self, endpoint: str, version: str | None, role: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return self.service.recent_samples(endpoint, version, role, limit)

    def _outcomes(self) -> Counter[str]:
        """Requests answered so far by outcome code, over every series of this process."""
        total: Counter[str] = Counter()
        for series in self.service.recorder.series.values():
            for (_, code), n in series.counts.items():
                total[code] += n
        return total

    async def stop(self, grace_s: float | None = None) -> None:
        """Shut down in the order clients need (default grace: the shutdown_grace_s setting, else 10 s).

        1. Readiness turns false (``/v2/health/ready``, ServerReady, gRPC health NOT_SERVING).
        2. Every listener stops accepting at the same moment (gRPC, HTTP, metrics, control; with workers,
           each worker gets SIGTERM at once and does the same); requests already accepted get the grace
           period to finish and are answered, anything still running after it is cancelled.
        3. Shadow runs are stopped (RunOptions.terminate), so a hung shadow cannot hold up the exit.
        4. The sample sink writes out what it holds, then the inference threads finish.
        """
        if grace_s is None:
            grace_s = self.settings.shutdown_grace_s
        self.service.draining = True
        recorder = self.service.recorder
        in_flight, before = recorder.in_flight, self._outcomes()
        stopping: list[Awaitable[None]] = []
        if self.fleet is not None:
            stopping.append(self.fleet.stop(grace_s))
        if self._grpc is not None:
            stopping.append(self._grpc.stop(grace_s))
        stopping.extend(runner.cleanup() for runner in self._runners)
        for outcome in await asyncio.gather(*stopping, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.error("a listener failed to stop cleanly", exc_info=outcome)
        if self.fleet is None:
            during = self._outcomes() - before
            log.info(
                "drained: %d requests in flight at the signal; outcomes during the drain: %s; "
                "%d still in flight after the grace period",
                in_flight,
                ", ".join(f"{code}={n}" for code, n in sorted(during.items())) or "none",
                recorder.in_flight,
            )
        await self.shadow.stop()
        if self.sink is not None:
            await asyncio.to_thread(self.sink.close, 5.0)
        # Runs still on threads now are ones nobody waits for (every call has ended): a moment to finish.
        finishing = asyncio.ensure_future(
            asyncio.to_thread(self.executor.shutdown, True, cancel_futures=True)
        )
        done, _ = await asyncio.wait((finishing,), timeout=ORPHAN_RUNS_WAIT_S)
        if not done:
            self.stuck_runs = True
            log.error(
                "inference runs that no call waits for are still busy (no deadline to stop them); not waiting"
            )


async def serve(settings: Settings, ports_file: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    role = ProcessRole.SUPERVISOR if settings.workers > 1 else ProcessRole.SINGLE
    gateway = Gateway(settings, role)
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
    log.info("stopped")
    if gateway.stuck_runs:
        # Interpreter exit would join the executor's threads, and a run that cannot be stopped (no deadline,
        # no RunOptions) would hold the process forever: every answer is already sent, so leave now.
        logging.shutdown()
        os._exit(0)
