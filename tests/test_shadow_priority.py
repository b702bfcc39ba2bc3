"""The shadow lane gives way to the served path: its runs happen on its own threads at nice 19 (never inline
on the event loop, even for a version that clients get inline), and it sheds copies, counted as dropped,
when its lane lags (queue full, or the oldest waiting copy older than ``max_wait_s``) or when the event
loop's thread is saturated. Behaviour only: no timing assertions.

In-process tests drive a ShadowDispatcher on an event loop with real ModelVersions (the demo model, whose
session is wrapped to see which thread runs it); one test looks at a real gateway's threads in /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.demo import write_demo_repository
from gateway.routing.shadow import ADMIT_FLOOR, SHADOW_NICE, LoopLoad, ShadowCounters, ShadowDispatcher
from gateway.settings import SettingsError, load_settings
from runtime.config import load_model_config
from runtime.model import ModelVersion
from tests.gateway_process import start_gateway
from tests.test_faults import metric, wait_for
from tests.traffic_models import write_slow_model

LINUX = sys.platform.startswith("linux")
X = np.random.default_rng(17).random((1, 64), dtype=np.float32)


@dataclass
class Seen:
    """Where the wrapped session ran: (native thread id, thread name, nice value) per run."""

    runs: list[tuple[int, str, int]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)


class WatchedSession:
    """Wraps an ONNX Runtime session: records the calling thread, and waits for `gate` before running."""

    def __init__(self, session: Any, seen: Seen) -> None:
        self._session = session
        self._seen = seen

    def run(self, names: Any, feeds: Any, options: Any = None) -> Any:
        tid = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, tid) if LINUX else 0
        self._seen.runs.append((tid, threading.current_thread().name, nice))
        self._seen.gate.wait(30)
        return self._session.run(names, feeds, options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shadow-priority")
    write_demo_repository(root)
    # Inline for the clients: any run shorter than a second counts as faster than a thread hand-off.
    (root / "models" / "demo" / "config.toml").write_text("inline_threshold_us = 1000000\n")
    return root / "models" / "demo"


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-clients")
    yield pool
    pool.shutdown(wait=True)


def versions(folder: Path, executor: ThreadPoolExecutor) -> tuple[ModelVersion, ModelVersion, Seen]:
    """The served version (v1) and a watched shadow version (v3) of the demo model."""
    config = load_model_config(folder)
    served = ModelVersion("demo", 1, folder, config, executor)
    shadow = ModelVersion("demo", 3, folder, config, executor)
    seen = Seen()
    seen.gate.set()
    shadow.session = WatchedSession(shadow.session, seen)
    return served, shadow, seen


def answer(mv: ModelVersion) -> list[tuple[str, np.ndarray]]:
    return list(zip(mv.output_names, mv.session.run(None, {"INPUT0": X}), strict=True))


def counts(c: ShadowCounters) -> dict[str, int]:
    return {
        "queued": c.queued,
        "dropped": c.dropped,
        "compared": c.compared,
        "failed": c.failed,
        "timed_out": c.timed_out,
    }


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the shadow lane"
        await asyncio.sleep(0.01)


def offer(
    lane: ShadowDispatcher,
    served: ModelVersion,
    shadow: ModelVersion,
    feeds: Mapping[str, np.ndarray],
    served_answer: Sequence[tuple[str, np.ndarray]],
) -> None:
    lane.offer("ep", served, shadow, feeds, served_answer)


def test_shadow_runs_happen_on_the_lanes_niced_threads_even_for_an_inline_version(
    models: Path, executor: ThreadPoolExecutor
) -> None:
    served, shadow, seen = versions(models, executor)
    assert served.inline and shadow.inline  # the clients would get both on the event loop thread

    async def scenario() -> tuple[int, dict[str, int]]:
        lane = ShadowDispatcher(queue_size=16, concurrency=2, timeout_s=30)
        lane.start()
        try:
            for i in range(5):
                offer(lane, served, shadow, {"INPUT0": X}, answer(served))
                await until(lambda: lane.counters["ep"].compared == i + 1)  # noqa: B023 (awaited here)
            return threading.get_native_id(), counts(lane.counters["ep"])
        finally:
            await lane.stop()

    loop_tid, counted = asyncio.run(scenario())
    assert counted == {"queued": 5, "dropped": 0, "compared": 5, "failed": 0, "timed_out": 0}
    assert len(seen.runs) == 5
    for tid, name, nice in seen.runs:
        assert tid != loop_tid, "a shadow run happened on the event loop thread"
        assert name.startswith("onnxgate-shadow")
        if LINUX:
            assert nice == SHADOW_NICE


@pytest.mark.skipif(not LINUX, reason="nice is per thread only on Linux")
def test_lane_threads_are_at_nice_19_and_the_rest_of_the_process_is_not(
    models: Path, executor: ThreadPoolExecutor
) -> None:
    served, shadow, seen = versions(models, executor)

    async def scenario() -> tuple[int, int]:
        lane = ShadowDispatcher(queue_size=16, concurrency=1, timeout_s=30)
        lane.start()
        try:
            offer(lane, served, shadow, {"INPUT0": X}, answer(served))
            await until(lambda: lane.counters["ep"].compared == 1)
            (tid, _, _) = seen.runs[0]
            return _nice_of(os.getpid(), tid), _nice_of(os.getpid(), threading.get_native_id())
        finally:
            await lane.stop()

    lane_nice, loop_nice = asyncio.run(scenario())
    assert lane_nice == SHADOW_NICE  # as the kernel reports it (field 19 of the thread's stat)
    assert loop_nice == 0  # the event loop's thread is untouched


def test_a_lagging_lane_drops_new_copies_and_counts_them(models: Path, executor: ThreadPoolExecutor) -> None:
    """One slot, held by a run that waits on a gate: the next copy queues; once it has waited longer than
    max_wait_s, new copies are dropped (counted), and every copy counted as queued still runs."""
    served, shadow, seen = versions(models, executor)
    seen.gate.clear()

    async def scenario() -> dict[str, int]:
        lane = ShadowDispatcher(queue_size=100, concurrency=1, timeout_s=30, max_wait_s=0.05, busy_limit=1.0)
        lane.start()
        served_answer = answer(served)
        try:
            offer(lane, served, shadow, {"INPUT0": X}, served_answer)  # runs, and waits on the gate
            await until(lambda: len(seen.runs) == 1)
            offer(lane, served, shadow, {"INPUT0": X}, served_answer)  # waits for the slot
            c = lane.counters["ep"]
            assert (c.queued, c.dropped) == (2, 0)
            await asyncio.sleep(0.2)  # the waiting copy is now older than max_wait_s
            for _ in range(3):
                offer(lane, served, shadow, {"INPUT0": X}, served_answer)
            assert (c.queued, c.dropped) == (2, 3)
            seen.gate.set()
            await until(lambda: c.compared == 2)
            offer(lane, served, shadow, {"INPUT0": X}, served_answer)  # caught up: taken again
            await until(lambda: c.compared == 3)
            return counts(c)
        finally:
            seen.gate.set()
            await lane.stop()

    counted = asyncio.run(scenario())
    assert counted == {"queued": 3, "dropped": 3, "compared": 3, "failed": 0, "timed_out": 0}


def test_a_full_lane_queue_drops_new_copies(models: Path, executor: ThreadPoolExecutor) -> None:
    served, shadow, seen = versions(models, executor)
    seen.gate.clear()

    async def scenario() -> dict[str, int]:
        lane = ShadowDispatcher(queue_size=2, concurrency=1, timeout_s=30, max_wait_s=60, busy_limit=1.0)
        lane.start()
        served_answer = answer(served)
        try:
            offer(lane, served, shadow, {"INPUT0": X}, served_answer)
            await until(lambda: len(seen.runs) == 1)  # the slot is taken: the queue is empty again
            for _ in range(5):
                offer(lane, served, shadow, {"INPUT0": X}, served_answer)
            seen.gate.set()
            await until(lambda: lane.counters["ep"].compared == lane.counters["ep"].queued)
            return counts(lane.counters["ep"])
        finally:
            seen.gate.set()
            await lane.stop()

    counted = asyncio.run(scenario())
    assert counted == {"queued": 3, "dropped": 3, "compared": 3, "failed": 0, "timed_out": 0}


def test_a_saturated_event_loop_sheds_copies_and_takes_them_again_once_it_has_room(
    models: Path, executor: ThreadPoolExecutor
) -> None:
    """The event loop's thread kept busy (a coroutine that computes and only briefly yields) while copies
    are offered: the lane's probe sees it and the lane takes fewer copies, the rest dropped and counted.
    With the loop idle again it takes every copy."""
    served, shadow, _ = versions(models, executor)

    async def scenario() -> tuple[float, dict[str, int], float, dict[str, int]]:
        lane = ShadowDispatcher(queue_size=10_000, concurrency=2, timeout_s=30, max_wait_s=60)
        lane.start()
        served_answer = answer(served)
        try:
            end = time.monotonic() + 1.0
            while time.monotonic() < end:  # saturated: the loop thread computes, one copy per 5 ms
                offer(lane, served, shadow, {"INPUT0": X}, served_answer)
                spin = time.monotonic() + 0.005
                while time.monotonic() < spin:
                    pass
                await asyncio.sleep(0)
            saturated_admit, saturated = lane.admit, counts(lane.counters["ep"])
            await until(lambda: lane.counters["ep"].compared == lane.counters["ep"].queued)
            for _ in range(200):  # room again: a copy now and then, the loop mostly idle
                offer(lane, served, shadow, {"INPUT0": X}, served_answer)
                await asyncio.sleep(0.005)
            await until(lambda: lane.counters["ep"].compared == lane.counters["ep"].queued)
            return saturated_admit, saturated, lane.admit, counts(lane.counters["ep"])
        finally:
            await lane.stop()

    saturated_admit, saturated, idle_admit, after = asyncio.run(scenario())
    assert saturated_admit < 1.0
    assert saturated["dropped"] > saturated["queued"] > 0  # most copies shed, some still taken
    assert idle_admit == 1.0
    idle_queued = after["queued"] - saturated["queued"]
    idle_dropped = after["dropped"] - saturated["dropped"]
    assert idle_queued > idle_dropped  # once it had room, the lane took (nearly) every copy again
    assert after["compared"] == after["queued"] and after["failed"] == after["timed_out"] == 0


def test_admission_halves_per_saturated_reading_down_to_a_floor_and_spreads_evenly(
    models: Path, executor: ThreadPoolExecutor
) -> None:
    served, shadow, _ = versions(models, executor)

    async def scenario() -> tuple[list[float], dict[str, int], float]:
        lane = ShadowDispatcher(
            queue_size=100_000, concurrency=1, timeout_s=30, max_wait_s=60, busy_limit=0.5
        )
        lane.start()
        try:
            shares = []
            for _ in range(20):
                lane.adjust(0.9)
                shares.append(lane.admit)
            served_answer = answer(served)
            lane.adjust(0.9)
            for _ in range(8192):  # no await: the probe cannot change the share meanwhile
                offer(lane, served, shadow, {"INPUT0": X}, served_answer)
            counted = counts(lane.counters["ep"])
            for _ in range(100):
                lane.adjust(0.1)
            return shares, counted, lane.admit
        finally:
            await lane.stop()

    shares, counted, recovered = asyncio.run(scenario())
    assert shares[:3] == [0.5, 0.25, 0.125]
    assert shares[-1] == ADMIT_FLOOR and min(shares) == ADMIT_FLOOR
    assert counted["queued"] + counted["dropped"] == 8192
    assert counted["queued"] == round(8192 * ADMIT_FLOOR)  # evenly spread, not random
    assert recovered == 1.0


def test_loop_load_counts_the_threads_own_cpu_time() -> None:
    load = LoopLoad()
    try:
        before = load.busy_ns()
        spin = time.monotonic() + 0.05
        while time.monotonic() < spin:
            pass
        assert load.busy_ns() - before >= 0.02e9  # at least part of the 50 ms it ran
    finally:
        load.close()


def test_shadow_lane_settings_are_read_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("shadow_max_wait_s = 0.2\nshadow_busy_limit = 0.9\n")
    s = load_settings(config, environ={})
    assert (s.shadow_max_wait_s, s.shadow_busy_limit) == (0.2, 0.9)
    s = load_settings(None, environ={"ONNXGATE_SHADOW_BUSY_LIMIT": "1"})
    assert s.shadow_busy_limit == 1.0
    for text, word in (
        ("shadow_max_wait_s = 0\n", "shadow_max_wait_s"),
        ("shadow_busy_limit = 0\n", "shadow_busy_limit"),
        ("shadow_busy_limit = 1.5\n", "shadow_busy_limit"),
    ):
        config.write_text(text)
        with pytest.raises(SettingsError, match=word):
            load_settings(config, environ={})


# ------------------------------------------------------------------------------------------ a real gateway


def _nice_of(pid: int, tid: int) -> int:
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])  # field 19 (nice); fields after the name start at 3


def _infer_http(port: int, model: str) -> None:
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": X.ravel().tolist()}]}
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200


@pytest.mark.skipif(not LINUX, reason="reads /proc, and nice is per thread only on Linux")
def test_a_gateways_shadow_lane_threads_run_at_nice_19(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write_demo_repository(root)
    write_slow_model(root / "models")
    config = root / "gateway.toml"
    config.write_text(
        'model_repository = "models"\n'
        "[endpoints.ep]\n"
        'champion = { model = "demo", version = 1 }\n'
        'shadow = { model = "slow", version = 1, sample_rate = 1.0 }\n'
    )
    gw = start_gateway(
        tmp_path / "gw",
        "--config",
        str(config),
        "--state-dir",
        str(tmp_path / "state"),
        env={"ONNXGATE_SHADOW_CONCURRENCY": "2"},
    )
    try:
        pid = gw.proc.pid
        before = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        for _ in range(20):
            _infer_http(gw.ports["http"], "ep")
        wait_for(lambda: metric(gw, "onnxgate_shadow_compared_total", endpoint="ep") >= 1, 30, "a comparison")
        tasks = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        niced = {t for t in tasks if _nice_of(pid, t) == SHADOW_NICE}
        assert 1 <= len(niced) <= 2  # the lane's threads (at most shadow_concurrency), started on demand
        assert niced <= tasks - before  # none of the threads there before the first copy was offered
        assert _nice_of(pid, pid) == 0  # the event loop's thread
        assert all(_nice_of(pid, t) == 0 for t in tasks - niced)
        queued = metric(gw, "onnxgate_shadow_queued_total", endpoint="ep")
        dropped = metric(gw, "onnxgate_shadow_dropped_total", endpoint="ep")
        assert queued + dropped == 20
    finally:
        assert gw.stop() == 0, gw.log()
