"""One loaded model version: its ONNX Runtime session, its tensor specs, its statistics, and its queue.

Rules of this module:
- Everything about the graph (specs, batch dimension, output names) is worked out once at load time; a
  request pays only for checking its own inputs against precomputed tables.
- Statistics are plain integers updated on the event loop thread after the run returns, so they need no
  lock (the run itself happens on an executor thread).
- A request is admitted only while the version's queue has room; beyond that it is refused at once
  (`QueueFull`: UNAVAILABLE with a retry-after hint). `busy` (the queue half full) is the signal on which the
  shadow lane gives way before any client is refused.
- Deadlines: a request whose deadline (a `time.monotonic()` value) has passed is refused with
  `DeadlineExceeded` before it is admitted, and again on the executor thread right before its run starts,
  so one that waited in a queue past its deadline never runs. Only a run with a deadline gets an
  `ort.RunOptions` (about 1 us); a timer set from the event loop raises its `terminate` flag at the deadline,
  and ONNX Runtime stops the run at its next node. Runs without a deadline pass no RunOptions: the common
  path allocates nothing for this. Inline runs (shorter than a thread hand-off) are only checked on entry.
  A cancelled call leaves the executor's queue if its run has not started; a started run with RunOptions is
  terminated, one without finishes and its answer is dropped.
- A version batches only when its config has [dynamic_batching] and it has a batch dimension
  (max_batch_size > 0); then requests go through a `DynamicBatcher` per executor (runtime/batching.py),
  every other version runs each request on its own exactly as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.batching import (
    BEFORE_ADMISSION,
    DURING_RUN,
    WHILE_QUEUED,
    BatchedAnswer,
    DynamicBatcher,
    deadline_passed,
    terminable_run_options,
)
from runtime.config import AUTO_MAX_BATCH_SIZE, MODEL_FILE, BatchingConfig, ModelConfig, TensorOverride
from runtime.datatypes import BY_ORT_TYPE, BYTES, DataType, from_numpy
from runtime.errors import InternalError, InvalidArgument, ModelLoadError, ServingError, Unavailable
from runtime.session import create_session

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: DataType
    dims: tuple[int, ...]  # without the batch dimension when the model batches; -1 = any size

    def shape(self, batched: bool) -> list[int]:
        """The full shape as the metadata endpoint reports it (batch dimension as -1)."""
        return [-1, *self.dims] if batched else list(self.dims)


class QueueFull(Unavailable):
    """The version's admission queue is full; clients should retry later."""

    retry_after_s = 1


@dataclass(slots=True, eq=False)
class _Expiry:
    """The deadline timer's handle on one unbatched run (event loop side only)."""

    run: Future[tuple[list[np.ndarray], int, int]]
    options: ort.RunOptions
    expired: bool = False

    def fire(self) -> None:
        self.expired = True
        self.options.terminate = True  # a started run stops at its next node
        self.run.cancel()  # a run still in the executor's queue leaves it (no-op once started)


@dataclass(slots=True)
class Execution:
    """What one request got: its outputs (name, array) in the order asked for, and where its time went.

    `batch_size` is the number of rows of the ONNX Runtime run the request was part of: its own rows when it
    ran alone, the whole batch's rows when dynamic batching stacked it with others. `compute_ns` is that
    run's duration, shared by every request of a batch (as Triton attributes it).
    """

    outputs: list[tuple[str, np.ndarray]]
    queue_ns: int
    compute_ns: int
    batch_size: int


@dataclass(slots=True)
class BatchStats:
    count: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


@dataclass(slots=True)
class VersionStats:
    """Cumulative counters in Triton's shape (durations in nanoseconds)."""

    inference_count: int = 0  # rows (batch elements) inferred
    execution_count: int = 0  # ONNX Runtime runs
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)


def _spec_from_ort(arg: ort.NodeArg, model: str) -> tuple[str, DataType, list[int]]:
    datatype = BY_ORT_TYPE.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"model {model}: tensor '{arg.name}' has type {arg.type}, which is not servable")
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return arg.name, datatype, dims


def _apply_override(spec: TensorSpec, overrides: Mapping[str, TensorOverride], model: str) -> TensorSpec:
    o = overrides.get(spec.name)
    if o is None:
        return spec
    if o.datatype is not None and o.datatype != spec.datatype:
        raise ModelLoadError(
            f"model {model}: config says '{spec.name}' is {o.datatype.name} but the graph says {spec.datatype.name}"
        )
    dims = spec.dims
    if o.dims is not None:
        if len(o.dims) != len(dims) or any(g != -1 and g != c for g, c in zip(dims, o.dims, strict=True)):
            raise ModelLoadError(
                f"model {model}: config dims {list(o.dims)} for '{spec.name}' do not fit the graph's {list(dims)}"
            )
        dims = o.dims
    return TensorSpec(spec.name, spec.datatype, dims)


def _strings_for_ort(feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """ORT's Python binding takes strings, not bytes: it would store repr(b"..."). Valid UTF-8 is decoded
    as such, so the model sees the client's exact bytes; if any element is not UTF-8 the request's BYTES
    go through latin-1 instead, which maps every byte to one code point and back, so identity-like models
    still return the exact bytes (text models then see those bytes re-encoded)."""
    converted = dict(feeds)
    latin1 = False
    for name, arr in feeds.items():
        if arr.dtype.kind != "O":
            continue
        flat = arr.reshape(-1)
        try:
            strings = [b.decode("utf-8") for b in flat]
        except UnicodeDecodeError:
            latin1 = True
            break
        converted[name] = np.array(strings, dtype=object).reshape(arr.shape)
    if latin1:
        for name, arr in feeds.items():
            if arr.dtype.kind == "O":
                converted[name] = np.array(
                    [b.decode("latin-1") for b in arr.reshape(-1)], dtype=object
                ).reshape(arr.shape)
    return converted, latin1


def _bytes_from_ort(arr: np.ndarray, latin1: bool) -> np.ndarray:
    out = np.empty(arr.size, dtype=object)
    for i, s in enumerate(arr.reshape(-1)):
        if latin1:
            try:
                out[i] = s.encode("latin-1")
                continue
            except UnicodeEncodeError:
                pass
        out[i] = s.encode("utf-8")
    return out.reshape(arr.shape)


class ModelVersion:
    """A ready-to-serve version. Built (session created, warmed up) before anyone can route to it."""

    def __init__(
        self, name: str, version: int, folder: Path, config: ModelConfig, executor: Executor
    ) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.config = config
        self.path = folder / str(version) / MODEL_FILE
        self._executor = executor
        self.session = create_session(self.path, config)
        raw_in = [_spec_from_ort(a, name) for a in self.session.get_inputs()]
        raw_out = [_spec_from_ort(a, name) for a in self.session.get_outputs()]
        batchable = all(dims and dims[0] == -1 for _, _, dims in raw_in + raw_out)
        mbs = config.max_batch_size
        if mbs is None:
            mbs = AUTO_MAX_BATCH_SIZE if batchable else 0
        elif mbs > 0 and not batchable:
            raise ModelLoadError(
                f"model {name}: max_batch_size is {mbs} but not every input and output has a dynamic first "
                "dimension to batch on"
            )
        self.max_batch_size = mbs
        self.batched = mbs > 0
        cut = 1 if self.batched else 0
        in_over = {o.name: o for o in config.inputs}
        out_over = {o.name: o for o in config.outputs}
        self.inputs = tuple(
            _apply_override(TensorSpec(n, dt, tuple(d[cut:])), in_over, name) for n, dt, d in raw_in
        )
        self.outputs = tuple(
            _apply_override(TensorSpec(n, dt, tuple(d[cut:])), out_over, name) for n, dt, d in raw_out
        )
        self.input_specs = {s.name: s for s in self.inputs}
        self.output_specs = {s.name: s for s in self.outputs}
        self.output_names = [s.name for s in self.outputs]
        self.has_bytes_inputs = any(s.datatype is BYTES for s in self.inputs)
        self.has_bytes_outputs = any(s.datatype is BYTES for s in self.outputs)
        self.stats = VersionStats()
        self.inline = False  # decided by the warm-up's timing
        self.pending = 0  # admitted and not yet answered
        self.max_queue_size = config.max_queue_size
        self.batching: BatchingConfig | None = config.dynamic_batching if self.batched else None
        if self.batching is not None:
            too_big = [b for b in self.batching.preferred_batch_sizes if b > mbs]
            if too_big:
                raise ModelLoadError(
                    f"model {name}: dynamic_batching.preferred_batch_sizes {too_big} exceed max_batch_size {mbs}"
                )
        self._batchers: dict[Executor | None, DynamicBatcher] = {}
        if config.warmup:
            self._warm_up()

    # ---------------------------------------------------------------- load time

    def _warm_up(self) -> None:
        """One run at batch 1 so that the first client does not pay for lazy initialisation."""
        feeds = {}
        for spec in self.inputs:
            shape = [1 if d == -1 else d for d in spec.shape(self.batched)]
            if spec.datatype is BYTES:
                feeds[spec.name] = np.full(shape, "0", dtype=object)  # str: the session's own type
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.datatype.numpy)
        try:
            self.session.run(None, feeds)
            best = min(self._timed_run(feeds) for _ in range(5))
        except Exception as exc:
            raise ModelLoadError(
                f"model {self.name} version {self.version} failed its warm-up run: {str(exc).strip()[:500]}"
                " (set [warmup] enabled = false in config.toml if it needs special inputs)"
            ) from None

        # Handing a run to a thread costs tens of microseconds of wake-ups and GIL hand-offs; a model that
        # runs faster than that is cheaper to run on the event loop thread itself.
        self.inline = self.config.inline_threshold_us > 0 and best < self.config.inline_threshold_us * 1000

    def _timed_run(self, feeds: Mapping[str, np.ndarray]) -> int:
        t = time.perf_counter_ns()
        self.session.run(None, feeds)
        return time.perf_counter_ns() - t

    # ---------------------------------------------------------------- request time

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Validate names, datatypes and shapes against the graph; returns the batch size (1 if unbatched)."""
        specs = self.input_specs
        if len(feeds) != len(specs) or not all(n in specs for n in feeds):
            unexpected = [n for n in feeds if n not in specs]
            if unexpected:
                raise InvalidArgument(
                    f"unexpected inference input '{unexpected[0]}' for model '{self.name}'; "
                    f"it expects {sorted(specs)}"
                )
            missing = [n for n in specs if n not in feeds]
            raise InvalidArgument(
                f"expected {len(specs)} inputs but got {len(feeds)} inputs for model '{self.name}'; "
                f"missing {missing}"
            )
        batch = -1
        for name, array in feeds.items():
            spec = specs[name]
            got = from_numpy(array.dtype) if array.dtype.kind != "O" else BYTES
            if got is not spec.datatype:
                raise InvalidArgument(
                    f"inference input '{name}' data-type is '{got.name}', but model '{self.name}' "
                    f"expects '{spec.datatype.name}'"
                )
            shape = array.shape
            dims = spec.dims
            if self.batched:
                if len(shape) != len(dims) + 1:
                    raise self._bad_shape(spec, shape)
                if batch == -1:
                    batch = shape[0]
                    if batch > self.max_batch_size:
                        raise InvalidArgument(
                            f"inference request batch-size must be <= {self.max_batch_size} for "
                            f"'{self.name}', got {batch} in input '{name}'"
                        )
                elif shape[0] != batch:
                    raise InvalidArgument(
                        f"input '{name}' has batch size {shape[0]} but other inputs of the request have "
                        f"{batch}; all inputs must share the batch dimension"
                    )
                rest = shape[1:]
            else:
                if len(shape) != len(dims):
                    raise self._bad_shape(spec, shape)
                rest = shape
            for want, have in zip(dims, rest, strict=True):
                if want != -1 and want != have:
                    raise self._bad_shape(spec, shape)
        return batch if batch >= 0 else 1

    def _bad_shape(self, spec: TensorSpec, shape: Sequence[int]) -> InvalidArgument:
        return InvalidArgument(
            f"unexpected shape for input '{spec.name}' for model '{self.name}'. "
            f"Expected {spec.shape(self.batched)}, got {list(shape)}"
        )

    def check_outputs(self, names: Sequence[str]) -> None:
        for n in names:
            if n not in self.output_specs:
                raise InvalidArgument(
                    f"unexpected inference output '{n}' for model '{self.name}'; it has {self.output_names}"
                )

    def feeds_for_ort(self, feeds: Mapping[str, np.ndarray]) -> tuple[Mapping[str, np.ndarray], bool]:
        """BYTES inputs as the strings ORT takes; True when they went through latin-1 (not UTF-8)."""
        if self.has_bytes_inputs:
            return _strings_for_ort(feeds)
        return feeds, False

    def outputs_from_ort(self, outputs: list[np.ndarray], latin1: bool) -> list[np.ndarray]:
        """ORT's string outputs back to the bytes clients get, the inverse of `feeds_for_ort`."""
        if self.has_bytes_outputs:
            return [_bytes_from_ort(a, latin1) if a.dtype.kind in "OU" else a for a in outputs]
        return outputs

    def run_error(self, exc: BaseException) -> InternalError:
        return InternalError(
            f"model '{self.name}' version {self.version} failed to run: {str(exc).strip()[:500]}"
        )

    def _run(
        self,
        feeds: Mapping[str, np.ndarray],
        names: list[str],
        submitted: int,
        deadline: float | None = None,
        options: ort.RunOptions | None = None,
    ) -> tuple[list[np.ndarray], int, int]:
        started = time.perf_counter_ns()
        if deadline is not None and time.monotonic() >= deadline:
            raise deadline_passed(self.name, self.version, WHILE_QUEUED)
        feeds, latin1 = self.feeds_for_ort(feeds)
        outputs = self.outputs_from_ort(self.session.run(names, feeds, options), latin1)
        return outputs, started - submitted, time.perf_counter_ns() - started

    def record_batch(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One ONNX Runtime execution of `rows` rows, in the per-batch-size statistics."""
        b = self.stats.batches.get(rows)
        if b is None:
            b = self.stats.batches[rows] = BatchStats()
        b.count += 1
        b.compute_input_ns += input_ns
        b.compute_infer_ns += infer_ns
        b.compute_output_ns += output_ns

    def _batcher(self, executor: Executor | None) -> DynamicBatcher:
        """This version's batcher for `executor` (None: the clients' pool), made on first use per loop."""
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(executor)
        if batcher is None or batcher.loop is not loop:
            assert self.batching is not None
            batcher = DynamicBatcher(self, self.batching, executor or self._executor, loop)
            self._batchers[executor] = batcher
        return batcher

    @property
    def busy(self) -> bool:
        """The admission queue is at least half full: the shadow lane stops adding work here."""
        return 2 * self.pending >= self.max_queue_size

    async def infer(
        self,
        feeds: Mapping[str, np.ndarray],
        output_names: Sequence[str] | None,
        executor: Executor | None = None,
        deadline: float | None = None,
    ) -> Execution:
        """Run one request; the outputs are (name, array) for each requested output, in the order asked for.

        `executor` lets a caller (the shadow lane) run on threads of its own instead of the clients' pool,
        and never inline on the event loop, however fast the version is; with dynamic batching that
        caller's requests are batched among themselves, on that executor.
        `deadline` (time.monotonic()): refused if passed before the run starts, terminated when it passes
        during the run; either way `DeadlineExceeded`.
        """
        t0 = time.perf_counter_ns()
        stats = self.stats
        if deadline is not None and time.monotonic() >= deadline:
            stats.fail_count += 1
            raise deadline_passed(self.name, self.version, BEFORE_ADMISSION)
        batcher = None
        if self.batching is not None:
            batcher = self._batcher(executor)
            if batcher.waiting >= self.batching.max_queue_size:
                raise QueueFull(
                    f"model '{self.name}' version {self.version} has {batcher.waiting} requests waiting to be "
                    f"batched (limit {self.batching.max_queue_size}); retry later"
                )
        if self.pending >= self.max_queue_size:
            raise QueueFull(
                f"model '{self.name}' version {self.version} has {self.pending} requests queued (limit "
                f"{self.max_queue_size}); retry later"
            )
        self.pending += 1
        try:
            batch = self.check_inputs(feeds)
            names = list(output_names) if output_names else self.output_names
            if output_names:
                self.check_outputs(names)
            t1 = time.perf_counter_ns()
            answer = None
            if batcher is not None and batch:  # an empty request has nothing to stack: it runs alone
                answer = await batcher.infer(feeds, names, batch, t1, deadline)
            else:
                try:
                    if self.inline and executor is None:  # shorter than a thread hand-off: nothing to stop
                        arrays, queue_ns, infer_ns = self._run(feeds, names, t1)
                    elif deadline is not None:
                        arrays, queue_ns, infer_ns = await self._run_until(
                            executor or self._executor, feeds, names, t1, deadline
                        )
                    else:
                        arrays, queue_ns, infer_ns = await asyncio.get_running_loop().run_in_executor(
                            executor or self._executor, self._run, feeds, names, t1
                        )
                except ServingError:
                    raise
                except Exception as exc:
                    raise self.run_error(exc) from None
        except BaseException:
            self.pending -= 1
            stats.fail_count += 1
            stats.fail_ns += time.perf_counter_ns() - t0
            raise
        self.pending -= 1
        if answer is not None:
            return self._batched_execution(answer, names, batch, t0, t1)
        t2 = time.perf_counter_ns()
        result = list(zip(names, arrays, strict=True))
        t3 = time.perf_counter_ns()
        input_ns, output_ns = t1 - t0, t3 - t2
        stats.inference_count += batch
        stats.execution_count += 1
        stats.success_count += 1
        stats.success_ns += t3 - t0
        stats.queue_ns += queue_ns
        stats.compute_input_ns += input_ns
        stats.compute_infer_ns += infer_ns
        stats.compute_output_ns += output_ns
        stats.last_inference_ms = time.time_ns() // 1_000_000
        self.record_batch(batch, input_ns, infer_ns, output_ns)
        return Execution(result, queue_ns, infer_ns, batch)

    async def _run_until(
        self, executor: Executor, feeds: Mapping[str, np.ndarray], names: list[str], t1: int, deadline: float
    ) -> tuple[list[np.ndarray], int, int]:
        """An unbatched run that stops at `deadline`.

        Returns (or raises) only once the executor thread is done with the run, so a caller that holds a
        slot while it waits (the shadow lane) never has more runs on threads than slots. A run that never
        started (still queued at the deadline) returns at once.
        """
        options = terminable_run_options()
        run: Future[tuple[list[np.ndarray], int, int]] = executor.submit(
            self._run, feeds, names, t1, deadline, options
        )
        expiry = _Expiry(run, options)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), expiry.fire)
        try:
            return await asyncio.wrap_future(run)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not expiry.expired or (task is not None and task.cancelling()):  # the caller was cancelled
                options.terminate = True
                raise
            raise deadline_passed(self.name, self.version, WHILE_QUEUED) from None
        except ServingError:
            raise
        except Exception:
            if expiry.expired:
                raise deadline_passed(self.name, self.version, DURING_RUN) from None
            raise
        finally:
            timer.cancel()

    def _batched_execution(
        self, answer: BatchedAnswer, names: list[str], rows: int, t0: int, t1: int
    ) -> Execution:
        """Per-request statistics of a batched request (the batcher counts executions and batch sizes)."""
        t2 = time.perf_counter_ns()
        result = list(zip(names, answer.arrays, strict=True))
        t3 = time.perf_counter_ns()
        stats = self.stats
        stats.inference_count += rows
        stats.success_count += 1
        stats.success_ns += t3 - t0
        stats.queue_ns += answer.queue_ns
        stats.compute_input_ns += t1 - t0 + answer.input_ns
        stats.compute_infer_ns += answer.infer_ns
        stats.compute_output_ns += answer.output_ns + t3 - t2
        stats.last_inference_ms = time.time_ns() // 1_000_000
        return Execution(result, answer.queue_ns, answer.infer_ns, answer.batch_size)
