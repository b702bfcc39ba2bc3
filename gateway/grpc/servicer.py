"""The GRPCInferenceService handlers: translate with the codec, call InferenceService, render, map errors.

Rules of this module:
- Thin: no protocol logic beyond reading metadata; every conversion lives in ``codec``, every error mapping
  in ``status``.
- The inference path does no logging and no work that could be done once (per server or per stream).
- ModelStreamInfer serves the requests of one stream concurrently (at most ``STREAM_IN_FLIGHT`` admitted
  and not yet written) and has exactly one writer; a failed request is answered in-band and the stream
  goes on. A stream with nothing in flight that sends nothing for ``STREAM_IDLE_TIMEOUT_S`` is ended with
  DEADLINE_EXCEEDED; waiting for it costs a coroutine, never a thread, so it blocks no other client.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from gateway import eager
from gateway.grpc import codec
from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from gateway.grpc.status import abort, error_message
from gateway.service import InferenceService
from gateway.settings import Limits
from gateway.types import InferRequest
from runtime.errors import DeadlineExceeded, ServingError, Unsupported

ROUTING_KEY_METADATA = codec.ROUTING_KEY_METADATA
# Requests of one stream admitted (being served, or answered and waiting to be written) at a time.
STREAM_IN_FLIGHT = 256
# A stream idle this long (no request in flight, none arriving) is ended; a `Limits` field of the same
# name (stream_idle_timeout_s) or the servicer's argument wins.
STREAM_IDLE_TIMEOUT_S = 600.0
# tritonclient's stream flag for decoupled models: it wants each response marked final.
_EMPTY_FINAL = "triton_enable_empty_final_response"
_FINAL = "triton_final_response"

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Handler = Callable[[Any, _Req, Any], Awaitable[_Resp]]


def routing_key_of(context: Any) -> str | None:
    """The x-routing-key metadata value, if the client sent one."""
    for key, value in context.invocation_metadata() or ():
        if key == ROUTING_KEY_METADATA:
            return value if isinstance(value, str) else None
    return None


def with_call_deadline(request: InferRequest, context: Any) -> InferRequest:
    """The call's gRPC deadline becomes the request's (the earlier one wins over a `timeout` parameter)."""
    remaining = context.time_remaining()
    if remaining is not None:
        deadline = time.monotonic() + remaining
        if request.deadline is None or deadline < request.deadline:
            request.deadline = deadline
    return request


def _errors_to_status(handler: _Handler[_Req, _Resp]) -> _Handler[_Req, _Resp]:
    """Turn any exception of a unary handler into the RPC's status (see gateway.grpc.status)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: _Req, context: Any) -> _Resp:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            await abort(context, exc)

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, service: InferenceService, limits: Limits, stream_idle_timeout_s: float | None = None
    ) -> None:
        self._service = service
        self._limits = limits
        if stream_idle_timeout_s is None:
            stream_idle_timeout_s = getattr(limits, "stream_idle_timeout_s", STREAM_IDLE_TIMEOUT_S)
        self.stream_idle_s = float(stream_idle_timeout_s)

    # ---------------------------------------------------------------- health and metadata

    @_errors_to_status
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._service.live())

    @_errors_to_status
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.ready())

    @_errors_to_status
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._service.model_ready(request.name, request.version))

    @_errors_to_status
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return codec.server_metadata_response(*self._service.server_metadata())

    @_errors_to_status
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return codec.model_metadata_response(self._service.model_metadata(request.name, request.version))

    @_errors_to_status
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return codec.model_config_response(self._service.model_config(request.name, request.version))

    @_errors_to_status
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        return codec.model_statistics_response(self._service.model_statistics(request.name, request.version))

    # ---------------------------------------------------------------- inference

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        try:
            decoded = codec.decode_infer_request(request, routing_key_of(context), self._limits)
            with_call_deadline(decoded, context)
            return codec.encode_infer_response(await self._service.infer(decoded))
        except Exception as exc:
            await abort(context, exc)

    async def stream_answer(
        self, msg: pb.ModelInferRequest, routing_key: str | None, context: Any
    ) -> pb.ModelStreamInferResponse:
        """One request of a ModelStreamInfer stream, answered in-band: a failure is an error_message item and
        the stream goes on. Transports that hand over stream messages one by one call this directly."""
        try:
            decoded = with_call_deadline(codec.decode_infer_request(msg, routing_key, self._limits), context)
            response = codec.encode_infer_response(await self._service.infer(decoded))
            if decoded.parameters and decoded.parameters.get(_EMPTY_FINAL) is True:
                response.parameters[_FINAL].bool_param = True
            return pb.ModelStreamInferResponse(infer_response=response)
        except Exception as exc:
            failed = pb.ModelInferResponse(
                model_name=msg.model_name, model_version=msg.model_version, id=msg.id
            )
            return pb.ModelStreamInferResponse(error_message=error_message(exc), infer_response=failed)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> None:
        idle_s = self.stream_idle_s
        routing_key = routing_key_of(context)
        results: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        answer = self.stream_answer

        async def serve(msg: pb.ModelInferRequest) -> None:
            results.put_nowait(await answer(msg, routing_key, context))

        # [requests admitted and not yet answered on the wire, monotonic time of the last request or answer]
        state: list[Any] = [0, time.monotonic()]
        loop = asyncio.get_running_loop()
        idle = asyncio.Event()

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    state[1] = time.monotonic()
                    await slots.acquire()  # before the task exists: a fast client cannot outrun the bound
                    state[0] += 1
                    task = eager.start(serve(msg), loop)  # an inline model answers without a task
                    if task is not None:
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                while tasks:  # the client half-closed: finish what it sent
                    await asyncio.wait(tuple(tasks))
            finally:
                results.put_nowait(None)

        async def watch(reader: asyncio.Task[None]) -> None:
            """The idle rule, off the per-message path: one timer per stream, not one wait per message."""
            while True:
                await asyncio.sleep(max(idle_s - (time.monotonic() - state[1]), 0.001))
                if state[0] == 0 and time.monotonic() - state[1] >= idle_s:
                    idle.set()
                    reader.cancel()
                    return

        reader = asyncio.create_task(read())
        watchdog = asyncio.create_task(watch(reader))
        try:
            while (item := await results.get()) is not None:
                await context.write(item)
                slots.release()
                state[0] -= 1
                state[1] = time.monotonic()
            if idle.is_set():
                raise DeadlineExceeded(f"stream sent no request for {idle_s:g} s; closing it")
            await reader  # re-raises a failure to read the stream
        except ServingError as exc:
            await abort(context, exc)
        finally:
            watchdog.cancel()
            reader.cancel()
            for task in tuple(tasks):
                task.cancel()

    # ---------------------------------------------------------------- repository

    @_errors_to_status
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        return codec.repository_index_response(self._service.repository_index(request.ready))

    @_errors_to_status
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        for key in request.parameters:
            if key == "config" or key.startswith("file:"):
                raise Unsupported(f"load parameter '{key}' (config override or model files) is not supported")
        await self._service.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_errors_to_status
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self._service.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()
