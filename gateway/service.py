"""The inference service: the one protocol-neutral surface both front ends call.

Front ends translate wire messages into the calls below and render what they return; they never reach
into the repository or a session themselves. The router decides which version serves a request; the
runtime executes it. Views returned here are plain data for the codecs to render.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.observability.records import Recorder
from gateway.observability.sampling import SampleRecord, SampleSink, SamplingPolicy, Tensor
from gateway.routing.roles import Role
from gateway.routing.router import Router
from gateway.routing.shadow import ShadowDispatcher
from gateway.types import InferOutput, InferRequest, InferResponse
from runtime.config import BatchingConfig, VersionPolicy
from runtime.errors import ErrorCode, InvalidArgument, NotFound, ServingError, Unsupported
from runtime.model import BACKEND, PLATFORM, ModelVersion, TensorSpec, VersionStats
from runtime.repository import IndexRow, ModelRepository, parse_version

SERVER_NAME = "onnxgate"
EXTENSIONS = (
    "binary_tensor_data",
    "parameters",
    "model_repository",
    "model_configuration",
    "statistics",
)


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True, slots=True)
class ModelConfigView:
    """The model configuration in Triton's terms (rendered as ModelConfig proto or its JSON mapping)."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]  # dims exclude the batch dimension when max_batch_size > 0
    outputs: tuple[TensorSpec, ...]
    version_policy: VersionPolicy
    instance_kind: str  # "KIND_CPU" | "KIND_GPU"
    gpus: tuple[int, ...]
    dynamic_batching: BatchingConfig | None
    default_model_filename: str = "model.onnx"


@dataclass(frozen=True, slots=True)
class VersionStatistics:
    name: str
    version: str
    stats: VersionStats


class InferenceService:
    def __init__(
        self,
        repository: ModelRepository,
        router: Router,
        version: str,
        model_control: bool,
        shadow: ShadowDispatcher | None = None,
    ) -> None:
        self.repository = repository
        self.router = router
        self.shadow = shadow
        self.recorder = Recorder()
        self._random = random.random
        self.sink: SampleSink | None = None
        self._policies: dict[str, SamplingPolicy] = {}
        self._default_policy = SamplingPolicy()
        self._sensitive: frozenset[str] = frozenset()
        self.version = version
        self.model_control = model_control
        self.started = False
        self.draining = False

    def set_sampling(
        self, sink: SampleSink, default: SamplingPolicy, per_endpoint: dict[str, SamplingPolicy]
    ) -> None:
        self.sink = sink
        self._default_policy = default
        self._policies = dict(per_endpoint)
        self._sensitive = default.sensitive_inputs
        if self.shadow is not None:
            self.shadow.sink = sink
            self.shadow.sensitive = default.sensitive_inputs

    # ---------------------------------------------------------------- health and metadata

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.started and not self.draining and self.router.all_endpoints_ready()

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, self.version, EXTENSIONS

    def _version(self, name: str, version: str) -> ModelVersion:
        return self.router.resolve_for_metadata(name, parse_version(version))

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self._version(name, version)
        except (NotFound, InvalidArgument):
            return False
        except Exception:
            return False
        return True

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        mv = self._version(name, version)
        entry = self.repository.entry(mv.name)
        versions = [str(v) for v in sorted(entry.versions)] if entry else [mv.version_str]
        return ModelMetadata(
            name=name,
            versions=versions,
            platform=PLATFORM,
            inputs=[TensorMetadata(s.name, s.datatype.name, s.shape(mv.batched)) for s in mv.inputs],
            outputs=[TensorMetadata(s.name, s.datatype.name, s.shape(mv.batched)) for s in mv.outputs],
        )

    def model_config(self, name: str, version: str = "") -> ModelConfigView:
        mv = self._version(name, version)
        cfg = mv.config
        gpu = cfg.cuda_device_id
        return ModelConfigView(
            name=name,
            platform=PLATFORM,
            backend=BACKEND,
            max_batch_size=mv.max_batch_size,
            inputs=mv.inputs,
            outputs=mv.outputs,
            version_policy=cfg.version_policy,
            instance_kind="KIND_CPU" if gpu is None else "KIND_GPU",
            gpus=() if gpu is None else (gpu,),
            dynamic_batching=cfg.dynamic_batching,
        )

    def model_statistics(self, name: str = "", version: str = "") -> list[VersionStatistics]:
        """Per-version statistics; every model when `name` is empty, as Triton does."""
        wanted = parse_version(version)
        if name:
            model = self.router.model_name_for(name)
            entry = self.repository.entry(model)
            if entry is None:
                raise NotFound(f"unknown model: '{name}'")
            entries = [entry]
        else:
            entries = [e for n in self.repository.names() if (e := self.repository.entry(n)) is not None]
        result = []
        for entry in entries:
            for v, mv in sorted(entry.versions.items()):
                if wanted is None or v == wanted:
                    result.append(VersionStatistics(entry.name, str(v), mv.stats))
        if name and wanted is not None and not result:
            raise NotFound(f"unknown version {wanted} of model '{name}'")
        return result

    # ---------------------------------------------------------------- inference

    async def infer(self, request: InferRequest) -> InferResponse:
        t0 = time.perf_counter_ns()
        recorder = self.recorder
        try:
            mv, role, route = self.router.choose(request)
        except ServingError as exc:
            recorder.observe_unrouted(request.protocol, exc.code.value)
            raise
        series = recorder.get((route.endpoint, mv.name, mv.version_str, role))
        policy = self._policies.get(route.endpoint, self._default_policy)
        recorder.in_flight += 1
        try:
            feeds = {}
            for tensor in request.inputs:
                if tensor.name in feeds:
                    raise InvalidArgument(f"input '{tensor.name}' appears more than once in the request")
                feeds[tensor.name] = tensor.data
            requested = request.outputs
            # The version refuses work past the deadline before starting it, and stops a run at it.
            execution = await mv.infer(
                feeds, [o.name for o in requested] if requested else None, deadline=request.deadline
            )
        except ServingError as exc:
            elapsed_us = (time.perf_counter_ns() - t0) // 1000
            series.observe(request.protocol, exc.code.value, elapsed_us, 0, 0)
            if policy.errors and self.sink is not None:
                self._sample(request, route.endpoint, mv, role, [], elapsed_us, exc.code.value, exc.message)
            raise
        except BaseException:  # cancelled by the client, or a bug (the front end reports it as INTERNAL)
            series.observe(
                request.protocol, ErrorCode.CANCELLED.value, (time.perf_counter_ns() - t0) // 1000, 0, 0
            )
            raise
        finally:
            recorder.in_flight -= 1
        arrays = execution.outputs
        sampled = policy.rate > 0.0 and self.sink is not None and policy.decide(request.id)
        # Records of a request without an id get one of their own, linking its served and shadow records;
        # the client's answer still echoes only what the client sent.
        sample_id = (request.id or uuid.uuid4().hex) if sampled else ""
        if (
            route.shadow is not None
            and role is not Role.PINNED
            and self.shadow is not None
            and self._random() < route.sample_rate
        ):
            self.shadow.offer(
                route.endpoint,
                mv,
                route.shadow,
                feeds,
                arrays,
                (sample_id, request.routing_key) if sampled else None,
            )
        specs = mv.output_specs
        if requested:
            outputs = [
                InferOutput(n, specs[n].datatype.name, a.shape, a, o.binary)
                for (n, a), o in zip(arrays, requested, strict=True)
            ]
        else:
            outputs = [InferOutput(n, specs[n].datatype.name, a.shape, a) for n, a in arrays]
        elapsed_us = (time.perf_counter_ns() - t0) // 1000
        series.observe(
            request.protocol, "OK", elapsed_us, execution.queue_ns // 1000, execution.compute_ns // 1000
        )
        if sampled:
            tensors: list[Tensor] = [(o.name, o.datatype, o.shape, o.data) for o in outputs]
            self._sample(request, route.endpoint, mv, role, tensors, elapsed_us, "OK", None, sample_id)
        return InferResponse(request.model_name, mv.version_str, request.id, outputs)

    def _sample(
        self,
        request: InferRequest,
        endpoint: str,
        mv: ModelVersion,
        role: Role,
        outputs: list[Tensor],
        latency_us: int,
        status: str,
        error: str | None,
        request_id: str | None = None,
    ) -> None:
        assert self.sink is not None
        inputs: list[Tensor] = [(t.name, t.datatype, t.shape, t.data) for t in request.inputs]
        record = SampleRecord(
            time.time(), request_id or request.id, endpoint, mv.name, mv.version_str, role, request.routing_key,
            inputs, outputs, latency_us, status, error,
        )  # fmt: skip
        self.sink.offer(record, self._sensitive)

    def recent_samples(
        self, endpoint: str, version: str | None, role: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return self.sink.recent(endpoint, version, role, limit) if self.sink is not None else []

    def snapshot(self) -> dict[str, Any]:
        """Everything the records expose, as plain data (see gateway.observability.metrics)."""
        records = self.recorder.snapshot()
        models = []
        for name in self.repository.names():
            entry = self.repository.entry(name)
            if entry is None:
                continue
            for v, mv in entry.versions.items():
                models.append((name, str(v), "READY"))
                records["batch_sizes"][(name, str(v))] = {b: st.count for b, st in mv.stats.batches.items()}
            for v in entry.failed:
                if v not in entry.versions:
                    models.append((name, str(v), "UNAVAILABLE"))
        shadow = self.shadow.snapshot() if self.shadow is not None else {"counters": {}, "pairs": {}}
        sink = self.sink
        samples = (
            {"written": sink.written, "dropped": sink.dropped, "failed_writes": sink.failed_writes}
            if sink is not None
            else {"written": 0, "dropped": 0, "failed_writes": 0}
        )
        return {"records": records, "shadow": shadow, "models": models, "samples": samples}

    # ---------------------------------------------------------------- repository

    def repository_index(self, ready_only: bool = False) -> list[IndexRow]:
        return self.repository.index(ready_only)

    def _check_model_control(self) -> None:
        if not self.model_control:
            raise Unsupported(
                "model loading and unloading over the API is disabled; start the gateway with "
                "--allow-model-control (or model_control = true in gateway.toml) to enable it"
            )

    async def load_model(self, name: str) -> None:
        self._check_model_control()
        entry = await self.repository.load(name)
        if entry.failed or not entry.versions:
            kept = f"; still serving version(s) {sorted(entry.versions)}" if entry.versions else ""
            raise InvalidArgument(f"failed to load '{name}': {entry.reason}{kept}")

    async def unload_model(self, name: str) -> None:
        self._check_model_control()
        await self.repository.unload(name)
