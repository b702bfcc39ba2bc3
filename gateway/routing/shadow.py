"""Shadow traffic: mirrored requests whose answers are compared, never returned.

Rules of this module:
- The client's path pays one random draw and one ``put_nowait``; it never awaits shadow work. When the
  queue is full the copy is dropped and counted.
- The shadow is shed first. A copy is dropped (counted as dropped) when it is offered if the served
  version or the shadow version is ``busy``: its admission queue at least half full (``ModelVersion.busy``).
  Clients are refused only when that queue is full, so under rising load the shadow stops adding work well
  before any client is refused, and the capacity it used goes to the clients. Measured
  (tests/test_overload.py): eight closed-loop clients on a champion bounded at 10 whose runs take ~3 ms,
  480 requests: 364 to 407 copies dropped, no client refused. The signal is the version's own queue, so a
  version that runs inline (faster than a thread hand-off) never looks busy: there the lane sheds only
  when its own queue is full.
- Shadow runs use their own executor and a concurrency budget, so a slow or hung shadow can occupy only
  its own lane. Each run has a deadline ``timeout_s`` after it starts: at the deadline ONNX Runtime is told
  to stop it (``RunOptions.terminate``), so a hung shadow frees its thread; it is counted as timed out and a
  late answer is ignored. Its slot is freed only when its thread really finishes, so even a run that cannot
  be stopped can never pile up threads.
- ``stop`` stops every running shadow run the same way, so shutdown never waits on a hung shadow.
- Shadow failures and timeouts are counted, never surfaced.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.observability.sampling import SampleRecord, SampleSink
from gateway.routing.roles import Role
from runtime.errors import DeadlineExceeded
from runtime.model import ModelVersion

log = logging.getLogger("onnxgate.shadow")

# endpoint, served model, served version, shadow model, shadow version
PairKey = tuple[str, str, str, str, str]
# Upper bounds for the per-answer difference histograms (absolute units of the output).
DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 5.0, 10.0)
STOP_WAIT_S = 2.0  # at shutdown, how long stopped shadow runs get to hand their threads back


@dataclass(slots=True)
class OutputComparison:
    """Running comparison of one output tensor between served and shadow answers."""

    compared: int = 0  # answers compared
    mismatched: int = 0  # shapes or datatypes differ: no numeric comparison possible
    max_abs_diff: float = 0.0  # the largest element difference seen
    sum_mean_abs_diff: float = 0.0  # sum over answers of the mean element difference
    argmax_rows: int = 0  # rows compared on the class axis
    argmax_agree: int = 0  # rows whose argmax is the same
    sum_max_abs_diff: float = 0.0
    # per-answer max / mean difference, counted in DIFF_BUCKETS (last slot: above the top bound)
    max_abs_buckets: list[int] = field(default_factory=lambda: [0] * (len(DIFF_BUCKETS) + 1))
    mean_abs_buckets: list[int] = field(default_factory=lambda: [0] * (len(DIFF_BUCKETS) + 1))

    @property
    def mean_abs_diff(self) -> float:
        n = self.compared - self.mismatched
        return self.sum_mean_abs_diff / n if n else 0.0

    @property
    def argmax_agreement(self) -> float | None:
        return self.argmax_agree / self.argmax_rows if self.argmax_rows else None


@dataclass(slots=True)
class PairComparison:
    outputs: dict[str, OutputComparison] = field(default_factory=dict)
    compared: int = 0


@dataclass(frozen=True, slots=True)
class OutputDiff:
    """One answer's difference on one output (what observers such as metrics receive)."""

    name: str
    comparable: bool
    max_abs: float
    mean_abs: float
    argmax_rows: int
    argmax_agree: int


def compare_output(name: str, served: np.ndarray, shadow: np.ndarray) -> OutputDiff:
    if served.shape != shadow.shape or (served.dtype.kind == "O") != (shadow.dtype.kind == "O"):
        return OutputDiff(name, False, 0.0, 0.0, 0, 0)
    if served.dtype.kind == "O":
        equal = float(np.mean(served == shadow)) if served.size else 1.0
        return OutputDiff(name, True, 1.0 - equal if equal < 1 else 0.0, 1.0 - equal, 0, 0)
    if served.size == 0:
        return OutputDiff(name, True, 0.0, 0.0, 0, 0)
    diff = np.abs(served.astype(np.float64) - shadow.astype(np.float64))
    rows = agree = 0
    if served.ndim >= 2 and served.shape[-1] > 1:  # a class axis: compare the predicted class per row
        same = served.argmax(axis=-1) == shadow.argmax(axis=-1)
        rows, agree = int(same.size), int(np.count_nonzero(same))
    return OutputDiff(name, True, float(diff.max()), float(diff.mean()), rows, agree)


@dataclass(slots=True)
class ShadowCounters:
    queued: int = 0
    dropped: int = 0  # queue full, or shed because the served or the shadow version was busy
    failed: int = 0  # the shadow raised (bad inputs for it, a runtime error)
    timed_out: int = 0
    compared: int = 0


@dataclass(slots=True)
class _Job:
    endpoint: str
    served: ModelVersion
    shadow: ModelVersion
    feeds: Mapping[str, np.ndarray]
    answer: Sequence[tuple[str, np.ndarray]]
    counters: ShadowCounters
    sample: tuple[str, str | None] | None = None  # (request id, routing key) when the request was sampled
    started: float = 0.0
    abandoned: bool = False


Observer = Callable[[PairKey, Sequence[OutputDiff]], None]


class ShadowDispatcher:
    def __init__(self, queue_size: int, concurrency: int, timeout_s: float) -> None:
        self.counters: dict[str, ShadowCounters] = {}  # per endpoint
        self.pairs: dict[PairKey, PairComparison] = {}
        self.observers: list[Observer] = []
        self._queue_size = queue_size
        self._queue: asyncio.Queue[_Job] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._concurrency = concurrency
        self._timeout = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="onnxgate-shadow")
        self._pump: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.sink: SampleSink | None = None  # shadow answers of sampled requests are written here
        self.sensitive: frozenset[str] = frozenset()

    def start(self) -> None:
        self._queue = asyncio.Queue(self._queue_size)
        self._slots = asyncio.Semaphore(self._concurrency)
        self._pump = asyncio.create_task(self._pump_jobs(), name="onnxgate-shadow-pump")

    async def stop(self) -> None:
        """Stop taking work and stop the runs in progress (their RunOptions are terminated)."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        running = tuple(self._running)
        for task in running:
            task.cancel()
        if running:  # their runs stop at ONNX Runtime's next node; one that cannot stop is left behind
            await asyncio.wait(running, timeout=min(self._timeout, STOP_WAIT_S))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def offer(
        self,
        endpoint: str,
        served: ModelVersion,
        shadow: ModelVersion,
        feeds: Mapping[str, np.ndarray],
        answer: Sequence[tuple[str, np.ndarray]],
        sample: tuple[str, str | None] | None = None,
    ) -> None:
        """Queue a copy of a served request for the shadow; never blocks, drops when full."""
        queue = self._queue
        if queue is None:
            return
        counters = self.counters.get(endpoint)
        if counters is None:
            counters = self.counters[endpoint] = ShadowCounters()
        if served.busy or shadow.busy:  # the clients need the capacity: the shadow gives way first
            counters.dropped += 1
            return
        try:
            queue.put_nowait(_Job(endpoint, served, shadow, feeds, answer, counters, sample))
        except asyncio.QueueFull:
            counters.dropped += 1
            return
        counters.queued += 1

    async def _pump_jobs(self) -> None:
        assert self._queue is not None and self._slots is not None
        queue, slots = self._queue, self._slots
        while True:
            job = await queue.get()
            await slots.acquire()
            job.started = time.monotonic()
            task = asyncio.create_task(self._run(job))
            self._running.add(task)
            task.add_done_callback(self._finished)
            asyncio.get_running_loop().call_later(self._timeout, self._check_timeout, job, task)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        assert self._slots is not None
        self._slots.release()

    def _check_timeout(self, job: _Job, task: asyncio.Task[None]) -> None:
        """Count a run still going at its deadline (one whose terminate flag has not stopped it yet)."""
        if not task.done() and not job.abandoned:
            job.abandoned = True
            job.counters.timed_out += 1

    async def _run(self, job: _Job) -> None:
        names = [n for n, _ in job.answer]
        deadline = job.started + self._timeout
        try:
            result = await job.shadow.infer(job.feeds, names, executor=self._executor, deadline=deadline)
        except asyncio.CancelledError:
            raise
        except DeadlineExceeded:
            if not job.abandoned:
                job.abandoned = True
                job.counters.timed_out += 1
            return
        except Exception:
            if not job.abandoned:
                job.counters.failed += 1
            return
        if job.abandoned:
            return
        if job.sample is not None and self.sink is not None:
            self._sample(job, result.outputs)
        shadow_out = dict(result.outputs)
        diffs = [compare_output(n, a, shadow_out[n]) for n, a in job.answer if n in shadow_out]
        self._record(job, diffs)

    def _sample(self, job: _Job, outputs: Sequence[tuple[str, np.ndarray]]) -> None:
        assert job.sample is not None and self.sink is not None
        shadow = job.shadow
        in_specs, out_specs = shadow.input_specs, shadow.output_specs
        record = SampleRecord(
            time=time.time(),
            request_id=job.sample[0],
            endpoint=job.endpoint,
            model=shadow.name,
            version=shadow.version_str,
            role=Role.SHADOW,
            routing_key=job.sample[1],
            inputs=[
                (n, in_specs[n].datatype.name, a.shape, a) for n, a in job.feeds.items() if n in in_specs
            ],
            outputs=[(n, out_specs[n].datatype.name, a.shape, a) for n, a in outputs],
            latency_us=int((time.monotonic() - job.started) * 1e6),
            status="OK",
        )
        self.sink.offer(record, self.sensitive)

    def _record(self, job: _Job, diffs: Sequence[OutputDiff]) -> None:
        key: PairKey = (
            job.endpoint,
            job.served.name,
            job.served.version_str,
            job.shadow.name,
            job.shadow.version_str,
        )
        pair = self.pairs.get(key)
        if pair is None:
            pair = self.pairs[key] = PairComparison()
        pair.compared += 1
        job.counters.compared += 1
        for d in diffs:
            acc = pair.outputs.get(d.name)
            if acc is None:
                acc = pair.outputs[d.name] = OutputComparison()
            acc.compared += 1
            if not d.comparable:
                acc.mismatched += 1
                continue
            acc.max_abs_diff = max(acc.max_abs_diff, d.max_abs)
            acc.sum_mean_abs_diff += d.mean_abs
            acc.sum_max_abs_diff += d.max_abs
            acc.max_abs_buckets[bisect.bisect_left(DIFF_BUCKETS, d.max_abs)] += 1
            acc.mean_abs_buckets[bisect.bisect_left(DIFF_BUCKETS, d.mean_abs)] += 1
            acc.argmax_rows += d.argmax_rows
            acc.argmax_agree += d.argmax_agree
        for observer in self.observers:
            observer(key, diffs)

    def snapshot(self) -> dict[str, Any]:
        """Plain data for metrics and the stats API (summed across workers by the supervisor)."""
        return {
            "counters": {e: dataclasses.asdict(c) for e, c in self.counters.items()},
            "pairs": {
                k: {
                    "compared": p.compared,
                    "outputs": {n: dataclasses.asdict(o) for n, o in p.outputs.items()},
                }
                for k, p in self.pairs.items()
            },
        }


def merge_shadow_snapshots(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"counters": {}, "pairs": {}}
    for snap in snapshots:
        for endpoint, c in snap["counters"].items():
            have = out["counters"].setdefault(endpoint, dict.fromkeys(c, 0))
            for k, v in c.items():
                have[k] += v
        for key, pair in snap["pairs"].items():
            have_pair = out["pairs"].setdefault(key, {"compared": 0, "outputs": {}})
            have_pair["compared"] += pair["compared"]
            for name, o in pair["outputs"].items():
                h = have_pair["outputs"].get(name)
                if h is None:
                    have_pair["outputs"][name] = {
                        k: (list(v) if isinstance(v, list) else v) for k, v in o.items()
                    }
                    continue
                for k, v in o.items():
                    if k == "max_abs_diff":
                        h[k] = max(h[k], v)
                    elif isinstance(v, list):
                        h[k] = [a + b for a, b in zip(h[k], v, strict=True)]
                    else:
                        h[k] += v
    return out
