"""Shadow traffic: mirrored requests whose answers are compared, never returned.

Rules of this module:
- The client's path pays one random draw (in the service) and, here, a few comparisons and a deque
  append; it never awaits shadow work.
- The shadow is shed first, and never slows the served path on a saturated machine. A copy is dropped
  (counted as dropped) when it is offered and:
  - the served version or the shadow version is ``busy`` (its admission queue at least half full,
    ``ModelVersion.busy``); clients are refused only when that queue is full, so the shadow stops adding
    work well before any client is refused. Measured (tests/test_overload.py): eight closed-loop clients
    on a champion bounded at 10 whose runs take ~3 ms, 480 requests: 364 to 407 copies dropped, none
    refused. A version that runs inline never looks busy, hence the next two rules;
  - the event loop is saturated: a probe (every ``PROBE_INTERVAL_S`` while copies are offered) reads the
    share of wall time the loop's thread ran or waited for a CPU (``/proc`` schedstat; the thread's CPU
    time where that is missing). Above ``busy_limit`` the share of copies the lane takes halves per probe,
    down to ``ADMIT_FLOOR``; at or below it the share grows back by ``ADMIT_STEP`` per probe, up to every
    copy. Copies are taken evenly (a credit counter, no random draw). This is the rule that protects the
    served path: the loop and the lane share one GIL, and a copy handed to a lane thread costs the loop
    GIL hand-offs (to start the run, to return from ONNX Runtime) worth far more than the copy's own
    Python work, whatever the thread's CPU priority. Measured on 2 cores (benchmarks scenario 4, gRPC
    c=16, three runs each): without these rules a shadow of every request cost 32-37% of the served
    throughput and one 14x slower than the champion added 72-83% to p99; with them the lane takes ~1 copy
    in 4096 there, served throughput is 0.90-1.04x and p99 +1% to +19% of the no-shadow run (about the
    run-to-run noise of that shared machine). Under lighter load it takes what keeps the loop under the
    limit, and every copy while the loop is mostly idle;
  - the lane lags: the queue is full, or its oldest copy has waited longer than ``max_wait_s``. Then the
    newest copy is the one dropped, so every copy counted as queued still runs (``queued + dropped`` is
    every copy offered, and ``queued`` ends as ``compared + failed + timed_out``).
- Shadow runs always happen on the lane's own executor threads, never inline on the event loop (a version
  runs inline only for the clients' pool: ``ModelVersion.infer`` with an ``executor`` never does), and
  those threads run at the lowest CPU priority: on Linux nice is per thread, and each lane thread sets
  its own to 19 when it starts (``lower_thread_priority``; elsewhere this is skipped). ONNX Runtime runs a
  session with one intra-op thread (runtime/config.py's default) on the calling thread, so the shadow's
  compute inherits the nice value. A model configured with more (``[threads] intra_op``) also runs on its
  session's own pool, whose threads ONNX Runtime made at load time at normal priority, shared with the
  model's served runs (ONNX Runtime has no per-run thread count): leave a shadow model at
  ``intra_op = 1``. Under CPU saturation the niced threads barely run, the queue backs up and the lagging
  rule drops the excess; with spare CPU they keep up.
- Shadow runs use a concurrency budget, so a slow or hung shadow can occupy only its own lane. Each run
  has a deadline ``timeout_s`` after it starts: at the deadline ONNX Runtime is told to stop it
  (``RunOptions.terminate``), so a hung shadow frees its thread; it is counted as timed out and a late
  answer is ignored. Its slot is freed only when its thread really finishes, so even a run that cannot be
  stopped can never pile up threads.
- ``stop`` stops every running shadow run the same way, so shutdown never waits on a hung shadow.
- Shadow failures and timeouts are counted, never surfaced.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from collections import deque
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
SHADOW_NICE = 19  # the lane's threads: the lowest CPU priority
MAX_WAIT_S = 0.05  # default: a lane whose oldest waiting copy is older than this drops new copies
BUSY_LIMIT = 0.75  # default: above this share of the loop thread's time the lane takes fewer copies
PROBE_INTERVAL_S = 0.025  # how often the loop's load is read while copies are offered
IDLE_PROBES = 40  # probes in a row without an offer after which probing stops until the next offer
ADMIT_FLOOR = 1 / 4096  # the least share of copies taken, so comparisons trickle in even when saturated
ADMIT_STEP = 1 / 16  # share regained per probe with the loop below the limit (all of it within ~0.4 s)


def lower_thread_priority() -> None:
    """Put the calling thread at nice 19 (the lane executor's initializer). Linux only: there nice is
    per thread (``setpriority`` on the thread id); elsewhere, or where it is refused, nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)


class LoopLoad:
    """Nanoseconds the calling thread (the event loop's) has spent running or waiting for a CPU.

    Read from ``/proc/self/task/<tid>/schedstat`` (run time and run-queue wait, one ``pread``, ~1 us):
    a thread that wants a CPU it cannot get is as saturated as one that runs. Without it (not Linux), the
    thread's CPU time.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        try:
            self._fd = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
            self._read()
        except (OSError, ValueError, IndexError):
            self.close()

    def _read(self) -> int:
        assert self._fd is not None
        fields = os.pread(self._fd, 128, 0).split()
        return int(fields[0]) + int(fields[1])

    def busy_ns(self) -> int:
        if self._fd is not None:
            try:
                return self._read()
            except (OSError, ValueError, IndexError):
                self.close()
        return time.thread_time_ns()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


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
    dropped: int = 0  # shed when offered: a version busy, the loop saturated, the lane lagging
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
    offered: float = 0.0  # time.monotonic() when it was queued
    started: float = 0.0
    abandoned: bool = False


Observer = Callable[[PairKey, Sequence[OutputDiff]], None]


class ShadowDispatcher:
    def __init__(
        self,
        queue_size: int,
        concurrency: int,
        timeout_s: float,
        max_wait_s: float = MAX_WAIT_S,
        busy_limit: float = BUSY_LIMIT,
    ) -> None:
        self.counters: dict[str, ShadowCounters] = {}  # per endpoint
        self.pairs: dict[PairKey, PairComparison] = {}
        self.observers: list[Observer] = []
        self._queue_size = queue_size
        self._waiting: deque[_Job] = deque()
        self._wakeup: asyncio.Future[None] | None = None  # the pump waits on it while nothing is queued
        self._started = False
        self._slots: asyncio.Semaphore | None = None
        self._concurrency = concurrency
        self._timeout = timeout_s
        self._max_wait = max_wait_s
        self._busy_limit = busy_limit
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="onnxgate-shadow", initializer=lower_thread_priority
        )
        self._pump: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.sink: SampleSink | None = None  # shadow answers of sampled requests are written here
        self.sensitive: frozenset[str] = frozenset()
        # Saturation control (event loop thread only): the share of offered copies the lane takes.
        self.admit = 1.0
        self._credit = 0.0
        self._offers = 0  # copies offered since the last probe
        self._idle_probes = 0
        self._probe: asyncio.TimerHandle | None = None
        self._load: LoopLoad | None = None
        self._probe_t0 = 0
        self._probe_busy0 = 0

    def start(self) -> None:
        self._started = True
        self._slots = asyncio.Semaphore(self._concurrency)
        self._load = LoopLoad()  # here: start() runs on the event loop's thread
        self._pump = asyncio.create_task(self._pump_jobs(), name="onnxgate-shadow-pump")

    async def stop(self) -> None:
        """Stop taking work and stop the runs in progress (their RunOptions are terminated)."""
        self._started = False
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        running = tuple(self._running)
        for task in running:
            task.cancel()
        if running:  # their runs stop at ONNX Runtime's next node; one that cannot stop is left behind
            await asyncio.wait(running, timeout=min(self._timeout, STOP_WAIT_S))
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._load is not None:
            self._load.close()

    def offer(
        self,
        endpoint: str,
        served: ModelVersion,
        shadow: ModelVersion,
        feeds: Mapping[str, np.ndarray],
        answer: Sequence[tuple[str, np.ndarray]],
        sample: tuple[str, str | None] | None = None,
    ) -> None:
        """Queue a copy of a served request for the shadow; never blocks, drops (and counts) when shed."""
        if not self._started:
            return
        counters = self.counters.get(endpoint)
        if counters is None:
            counters = self.counters[endpoint] = ShadowCounters()
        self._offers += 1
        if self._probe is None:
            self._start_probing()
        if served.busy or shadow.busy:  # the clients need the capacity: the shadow gives way first
            counters.dropped += 1
            return
        if self.admit < 1.0:  # the loop is saturated: take only this share of the copies, evenly spread
            credit = self._credit + self.admit
            if credit < 1.0:
                self._credit = credit
                counters.dropped += 1
                return
            self._credit = credit - 1.0
        waiting = self._waiting
        now = time.monotonic()
        if waiting and (len(waiting) >= self._queue_size or now - waiting[0].offered > self._max_wait):
            counters.dropped += 1  # the lane lags (no CPU for its threads, or a slow shadow): the excess goes
            return
        waiting.append(_Job(endpoint, served, shadow, feeds, answer, counters, sample, now))
        counters.queued += 1
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    # ---------------------------------------------------------------- saturation control

    def _start_probing(self) -> None:
        assert self._load is not None
        self._probe_t0 = time.monotonic_ns()
        self._probe_busy0 = self._load.busy_ns()
        self._idle_probes = 0
        self._probe = asyncio.get_running_loop().call_later(PROBE_INTERVAL_S, self._read_load)

    def _read_load(self) -> None:
        """Every PROBE_INTERVAL_S while copies are offered: adjust `admit` to the loop thread's load."""
        assert self._load is not None
        now, busy = time.monotonic_ns(), self._load.busy_ns()
        elapsed = now - self._probe_t0
        if elapsed > 0:
            self.adjust(min(1.0, (busy - self._probe_busy0) / elapsed))
        self._probe_t0, self._probe_busy0 = now, busy
        if self._offers == 0:
            self._idle_probes += 1
            if self._idle_probes >= IDLE_PROBES:  # nothing offered for a while: stop until the next offer
                self._probe = None
                return
        else:
            self._idle_probes = 0
        self._offers = 0
        self._probe = asyncio.get_running_loop().call_later(PROBE_INTERVAL_S, self._read_load)

    def adjust(self, load: float) -> None:
        """One probe's reading: `load` is the share of the window the loop thread ran or waited for a CPU."""
        if load > self._busy_limit:
            self.admit = max(ADMIT_FLOOR, self.admit * 0.5)
        elif self.admit < 1.0:
            self.admit = min(1.0, self.admit + ADMIT_STEP)
            if self.admit == 1.0:
                self._credit = 0.0

    # ---------------------------------------------------------------- the lane

    async def _pump_jobs(self) -> None:
        assert self._slots is not None
        waiting, slots = self._waiting, self._slots
        loop = asyncio.get_running_loop()
        while True:
            if not waiting:
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            await slots.acquire()  # the copy stays queued (and ages) until a slot is free
            job = waiting.popleft()
            job.started = time.monotonic()
            task = asyncio.create_task(self._run(job))
            self._running.add(task)
            task.add_done_callback(self._finished)
            loop.call_later(self._timeout, self._check_timeout, job, task)

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
