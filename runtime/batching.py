"""Dynamic batching: concurrent requests to one model version stacked into one ONNX Runtime run.

Rules of this module:
- A request joins a queue only after its version has validated it (inputs, requested outputs), so an
  invalid request fails alone and never joins a batch.
- Requests are stacked only with requests whose inputs have the same non-batch shapes and dtypes (the
  compatibility key). A request is never split across batches, and within a key batches keep arrival
  order: a request bigger than the room left waits for the next batch.
- A batch runs the union of its requests' outputs; each request gets only the outputs it asked for, in its
  own order, as row slices (views) of the batch's arrays. BYTES are converted per request, so one request's
  non-UTF-8 bytes never change what its batch-mates' text looks like to the model.
- If a batched run raises, or returns an output that is not row-aligned with the stacked inputs, every
  request of that batch is rerun alone: only a request that fails on its own gets an error.
- A batch leaves when it holds max_batch_size rows (or the next request does not fit), when the whole queue
  of its key makes a preferred batch size, or when its oldest request has waited max_queue_delay_us.
  Decisions are taken at the end of the loop iteration in which requests arrived, so a burst forms one
  batch. At most `max_concurrent_batches` batches of one batcher run at once: while they run the queue
  fills, so batches grow with load instead of racing as many tiny ones.
- Everything but `_execute` runs on the event loop thread: queues and counters need no lock, and nothing is
  held across an await. `_execute` runs on an executor thread and touches only the session and its own
  batch. No per-request logging; the only Python loops are over requests, never over tensor elements.
- A request cancelled while queued leaves the queue; one cancelled while its batch runs is dropped when the
  batch returns. The batch itself completes unless every request in it has gone (cancelled or past its
  deadline) and it has RunOptions: then its `terminate` flag stops the run.
- Deadlines: a request with a deadline has a timer on the loop; at the deadline it leaves the queue (or its
  running batch) and is answered DEADLINE_EXCEEDED. `_dispatch` skips requests already past their deadline,
  and `_execute` checks again on the thread right before stacking, so an expired request never runs. Only a
  batch holding a request with a deadline gets an `ort.RunOptions`; batches without pay nothing for it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from runtime.config import BatchingConfig
from runtime.errors import DeadlineExceeded, InternalError, ServingError

if TYPE_CHECKING:
    from runtime.model import ModelVersion

log = logging.getLogger("onnxgate.runtime")

# Per input, in the graph's order: the shape without the batch dimension, and the dtype.
Key = tuple[tuple[tuple[int, ...], np.dtype], ...]

# Where a request was when its deadline passed (the end of the DEADLINE_EXCEEDED message).
BEFORE_ADMISSION = "before it was admitted"
WHILE_QUEUED = "while it waited in the queue; it never ran"
DURING_RUN = "during its run, which was stopped"


def deadline_passed(name: str, version: int, stage: str) -> DeadlineExceeded:
    return DeadlineExceeded(f"deadline exceeded for model '{name}' version {version} {stage}")


def terminable_run_options() -> ort.RunOptions:
    """RunOptions whose `terminate` the event loop may raise (about 1 us to make, so only when needed).

    A terminated run is an expected outcome here, so its own ORT error log is silenced (level 4: fatal only).
    """
    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


@dataclass(slots=True)
class BatchedAnswer:
    """What one request of a batch gets back (durations in nanoseconds, shared ones counted in full)."""

    arrays: list[np.ndarray]  # the request's outputs, in the order it asked for them
    queue_ns: int  # from joining the queue to its run starting on an executor thread
    input_ns: int  # stacking the batch's inputs
    infer_ns: int  # the ONNX Runtime run it was part of
    output_ns: int  # splitting the outputs back
    batch_size: int  # rows of the run it was part of


@dataclass(slots=True, eq=False)
class _Request:
    feeds: Mapping[str, np.ndarray]
    names: Sequence[str]  # requested outputs
    rows: int
    key: Key
    enqueued_ns: int
    future: asyncio.Future[BatchedAnswer]
    deadline: float | None = None  # time.monotonic()
    queued: bool = True
    batch: _Batch | None = None  # its running batch, once dispatched with RunOptions


@dataclass(slots=True, eq=False)
class _Batch:
    """Requests dispatched together to one executor thread, tracked only when the run can be stopped."""

    requests: list[_Request]
    options: ort.RunOptions
    live: int  # requests still waiting for this batch's answer

    def leave(self) -> None:
        """One request no longer wants the answer; when none does, the run is stopped."""
        self.live -= 1
        if self.live == 0:
            self.options.terminate = True


@dataclass(slots=True, eq=False)
class _Group:
    """Queued requests sharing one compatibility key, in arrival order."""

    key: Key
    requests: deque[_Request] = field(default_factory=deque)
    rows: int = 0


@dataclass(slots=True)
class _Report:
    """What an executor thread hands back for one batch."""

    answers: list[BatchedAnswer | ServingError]
    runs: list[tuple[int, int, int, int]]  # per successful ORT run: rows, input_ns, infer_ns, output_ns


class DynamicBatcher:
    """The queue and scheduler of one model version on one executor (clients' or the shadow's)."""

    def __init__(
        self,
        version: ModelVersion,
        config: BatchingConfig,
        executor: Executor,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.loop = loop
        self.waiting = 0  # requests queued, not yet dispatched
        self.running = 0  # batches on executor threads
        self._version = version
        self._executor = executor
        self._max_rows = version.max_batch_size
        self._delay_ns = config.max_queue_delay_us * 1000
        self._preferred = frozenset(config.preferred_batch_sizes)
        self._max_running = config.max_concurrent_batches
        self._input_names = tuple(s.name for s in version.inputs)
        self._groups: dict[Key, _Group] = {}
        self._wakeup = False  # a _schedule is already due at the end of this loop iteration
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0

    # ---------------------------------------------------------------- event loop side

    async def infer(
        self,
        feeds: Mapping[str, np.ndarray],
        names: Sequence[str],
        rows: int,
        now_ns: int,
        deadline: float | None = None,
    ) -> BatchedAnswer:
        """Queue a validated request and wait for its share of a batch (or its deadline)."""
        key = tuple([(a.shape[1:], a.dtype) for a in [feeds[n] for n in self._input_names]])
        request = _Request(feeds, names, rows, key, now_ns, self.loop.create_future(), deadline)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key)
        group.requests.append(request)
        group.rows += rows
        self.waiting += 1
        if not self._wakeup:
            self._wakeup = True
            self.loop.call_soon(self._schedule)
        if deadline is None:
            try:
                return await request.future
            except asyncio.CancelledError:
                self._leave(request)
                raise
        timer = self.loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, request)
        try:
            return await request.future
        except asyncio.CancelledError:
            self._leave(request)
            raise
        finally:
            timer.cancel()

    def _expire(self, request: _Request) -> None:
        """The request's deadline passed: it leaves the queue or its batch and is answered at once."""
        if request.future.done():
            return
        stage = WHILE_QUEUED if request.queued else DURING_RUN
        self._leave(request)
        request.future.set_exception(deadline_passed(self._version.name, self._version.version, stage))

    def _leave(self, request: _Request) -> None:
        if request.batch is not None:
            batch, request.batch = request.batch, None
            batch.leave()  # the batch completes and the answer is dropped, unless nobody is left
            return
        self._withdraw(request)  # queued: leaves the queue; in a batch without RunOptions: answer dropped

    def _withdraw(self, request: _Request) -> None:
        if not request.queued:
            return
        request.queued = False
        group = self._groups[request.key]
        group.requests.remove(request)
        group.rows -= request.rows
        self.waiting -= 1
        if not group.requests:
            del self._groups[request.key]

    def _schedule(self) -> None:
        self._wakeup = False
        now = time.perf_counter_ns()
        while self.running < self._max_running and self._groups:
            group = self._ready_group(now)
            if group is None:
                break
            self._dispatch(group, now)
        if self._groups and self.running < self._max_running:
            self._arm_timer(now)

    def _ready_group(self, now: int) -> _Group | None:
        """The ready group whose oldest request came first, if any."""
        best: _Group | None = None
        best_at = 0
        for group in self._groups.values():
            at = group.requests[0].enqueued_ns
            if best is not None and at >= best_at:
                continue
            rows = group.rows
            if rows >= self._max_rows or rows in self._preferred or now - at >= self._delay_ns:
                best, best_at = group, at
        return best

    def _arm_timer(self, now: int) -> None:
        due = min(g.requests[0].enqueued_ns for g in self._groups.values()) + self._delay_ns
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.loop.call_later(max(due - now, 0) / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _dispatch(self, group: _Group, now: int) -> None:
        requests = group.requests
        batch: list[_Request] = []
        rows = taken_rows = taken = 0
        clock = 0.0  # time.monotonic(), read only if a request has a deadline
        while requests and taken_rows + requests[0].rows <= self._max_rows:
            request = requests.popleft()
            request.queued = False
            taken += 1
            taken_rows += request.rows
            if request.future.done():  # cancelled, its task not yet resumed to withdraw it
                continue
            if request.deadline is not None:
                clock = clock or time.monotonic()
                if request.deadline <= clock:  # its timer is due in this very iteration
                    self._expire(request)
                    continue
            batch.append(request)
            rows += request.rows
        group.rows -= taken_rows
        self.waiting -= taken
        if not requests:
            del self._groups[group.key]
        if not batch:
            return
        options = None
        if clock:  # a request with a deadline: the batch can be stopped once nobody wants its answer
            options = terminable_run_options()
            running = _Batch(batch, options, len(batch))
            for r in batch:
                r.batch = running
        first = batch[0].names
        if all(r.names is first for r in batch):
            names = list(first)
        else:
            wanted = {n for r in batch for n in r.names}
            names = [n for n in self._version.output_names if n in wanted]
        self.running += 1
        try:
            future = self.loop.run_in_executor(self._executor, self._execute, batch, names, rows, options)
        except RuntimeError as exc:  # the executor is shut down: the gateway is stopping
            self.running -= 1
            for r in batch:
                r.batch = None
                r.future.set_exception(self._version.run_error(exc))
            return
        future.add_done_callback(functools.partial(self._finished, batch))

    def _finished(self, batch: list[_Request], run: asyncio.Future[_Report]) -> None:
        self.running -= 1
        for r in batch:
            r.batch = None
        try:
            report = run.result()
        except BaseException as exc:  # cancelled by an executor shutdown, or a bug in _execute
            if not isinstance(exc, asyncio.CancelledError):
                log.error("batch of model %s failed unexpectedly", self._version.name, exc_info=exc)
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(InternalError(f"model '{self._version.name}' failed to run"))
        else:
            stats = self._version.stats
            stats.execution_count += len(report.runs)
            for rows, input_ns, infer_ns, output_ns in report.runs:
                self._version.record_batch(rows, input_ns, infer_ns, output_ns)
            for r, answer in zip(batch, report.answers, strict=True):
                if r.future.done():
                    continue
                if isinstance(answer, ServingError):
                    r.future.set_exception(answer)
                else:
                    r.future.set_result(answer)
        self._schedule()

    # ---------------------------------------------------------------- executor thread side

    def _execute(
        self, batch: list[_Request], names: list[str], rows: int, options: ort.RunOptions | None
    ) -> _Report:
        if options is not None:  # some requests have deadlines: those already past them must not run
            now = time.monotonic()
            if any(r.deadline is not None and r.deadline <= now for r in batch):
                return self._execute_unexpired(batch, names, options, now)
        return self._execute_batch(batch, names, rows, options)

    def _execute_unexpired(
        self, batch: list[_Request], names: list[str], options: ort.RunOptions, now: float
    ) -> _Report:
        """Run the requests still within their deadlines; the others are answered DEADLINE_EXCEEDED."""
        alive = [r.deadline is None or r.deadline > now for r in batch]
        todo = [r for r, ok in zip(batch, alive, strict=True) if ok]
        report = self._execute_batch(todo, names, sum(r.rows for r in todo), options) if todo else None
        done = iter(report.answers if report is not None else ())
        version = self._version
        answers = [
            next(done) if ok else deadline_passed(version.name, version.version, WHILE_QUEUED) for ok in alive
        ]
        return _Report(answers, report.runs if report is not None else [])

    def _execute_batch(
        self, batch: list[_Request], names: list[str], rows: int, options: ort.RunOptions | None
    ) -> _Report:
        started = time.perf_counter_ns()
        version = self._version
        latin1 = [False] * len(batch)
        try:
            if version.has_bytes_inputs:
                parts = []
                for i, r in enumerate(batch):
                    converted, latin1[i] = version.feeds_for_ort(r.feeds)
                    parts.append(converted)
            else:
                parts = [r.feeds for r in batch]
            if len(parts) == 1:
                feeds = parts[0]
            else:
                feeds = {n: np.concatenate([p[n] for p in parts]) for n in self._input_names}
            stacked = time.perf_counter_ns()
            outputs = version.session.run(names, feeds, options)
            ran = time.perf_counter_ns()
            if any(o.shape[:1] != (rows,) for o in outputs):
                raise ValueError("outputs are not row-aligned with the stacked inputs")
        except Exception:
            if options is not None and options.terminate:  # stopped: nobody wants the answers any more
                stopped = deadline_passed(version.name, version.version, DURING_RUN)
                return _Report([stopped] * len(batch), [])
            return self._execute_alone(batch, started, options)
        index = {n: i for i, n in enumerate(names)}
        answers: list[BatchedAnswer | ServingError] = []
        offset = 0
        for i, r in enumerate(batch):
            end = offset + r.rows
            arrays = [outputs[index[n]][offset:end] for n in r.names]
            offset = end
            if version.has_bytes_outputs:
                try:
                    arrays = version.outputs_from_ort(arrays, latin1[i])
                except Exception as exc:
                    answers.append(version.run_error(exc))
                    continue
            answers.append(BatchedAnswer(arrays, started - r.enqueued_ns, 0, 0, 0, rows))
        split = time.perf_counter_ns()
        input_ns, infer_ns, output_ns = stacked - started, ran - stacked, split - ran
        for a in answers:
            if isinstance(a, BatchedAnswer):
                a.input_ns, a.infer_ns, a.output_ns = input_ns, infer_ns, output_ns
        return _Report(answers, [(rows, input_ns, infer_ns, output_ns)])

    def _execute_alone(self, batch: list[_Request], started: int, options: ort.RunOptions | None) -> _Report:
        """After a failed batched run: each request on its own, so only the guilty ones fail."""
        version = self._version
        answers: list[BatchedAnswer | ServingError] = []
        runs = []
        for r in batch:
            t = time.perf_counter_ns()
            try:
                arrays, _, infer_ns = version._run(r.feeds, list(r.names), t, r.deadline, options)
            except ServingError as exc:
                answers.append(exc)
                continue
            except Exception as exc:
                answers.append(version.run_error(exc))
                continue
            answers.append(BatchedAnswer(arrays, started - r.enqueued_ns, 0, infer_ns, 0, r.rows))
            runs.append((r.rows, 0, infer_ns, 0))
        return _Report(answers, runs)
