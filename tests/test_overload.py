"""Overload and deadlines: a full queue refuses at once (UNAVAILABLE / 503 with a retry-after hint) and is
counted; the shadow gives way before any client is refused; work past its deadline never starts and a run
that outlives its deadline is stopped.

The deadline tests run in-process on real ModelVersions (the loop, the executor and ONNX Runtime are real);
the end-to-end ones need the front ends to set InferRequest.deadline (gRPC: the call's deadline; HTTP: the
`timeout` parameter in microseconds, as Triton takes it).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2_grpc as pb_grpc

from gateway.demo import build_mlp, save_model, write_demo_repository
from runtime.config import load_model_config
from runtime.errors import DeadlineExceeded
from runtime.model import ModelVersion, QueueFull
from tests.fault_models import write_hung_model
from tests.gateway_process import GatewayProcess, start_gateway
from tests.test_faults import grpc_inputs, infer_request, metric, wait_for
from tests.traffic_models import write_slow_model

X = np.random.default_rng(17).random((1, 64), dtype=np.float32)


# ------------------------------------------------------------------------------------------ in-process


@pytest.fixture
def pool() -> Any:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-overload")
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def version(
    root: Path, name: str, executor: ThreadPoolExecutor, config: str = "", hung: bool = False
) -> ModelVersion:
    """A ModelVersion of a small MLP (FP32 [-1, 64] -> [-1, 10]) or of the hung Loop model."""
    if hung:
        write_hung_model(root, name, config)
    else:
        save_model(build_mlp([64, 32, 10], seed=3), root / name / "1" / "model.onnx")
        (root / name / "config.toml").write_text(config)
    return ModelVersion(name, 1, root / name, load_model_config(root / name), executor)


NOT_INLINE = "inline_threshold_us = 0\n"
BATCHED = "[dynamic_batching]\nmax_queue_delay_us = 0\n"
BATCHED_WAITING = "[dynamic_batching]\nmax_queue_delay_us = 10000000\n"  # only a deadline ends this wait


@pytest.mark.parametrize("config", ["", NOT_INLINE, BATCHED], ids=["inline", "executor", "batched"])
def test_a_passed_deadline_is_refused_and_never_runs(
    tmp_path: Path, pool: ThreadPoolExecutor, config: str
) -> None:
    mv = version(tmp_path, "m", pool, config)
    if mv.batching is None:
        assert mv.inline == (config == "")

    async def scenario() -> None:
        with pytest.raises(DeadlineExceeded, match="before it was admitted"):
            await mv.infer({"INPUT0": X}, None, deadline=time.monotonic() - 0.001)
        ok = await mv.infer({"INPUT0": X}, None, deadline=time.monotonic() + 60)
        assert ok.outputs[0][1].shape == (1, 10)

    asyncio.run(scenario())
    assert mv.stats.execution_count == 1 and mv.stats.success_count == 1 and mv.stats.fail_count == 1
    assert mv.pending == 0


@pytest.mark.parametrize(
    "config", [NOT_INLINE, BATCHED, BATCHED_WAITING], ids=["executor", "batch-on-thread", "batcher-queue"]
)
def test_a_deadline_that_passes_in_the_queue_is_answered_then_and_the_work_never_runs(
    tmp_path: Path, pool: ThreadPoolExecutor, config: str
) -> None:
    """The only thread is busy (or the batcher waits 10 s): the answer comes at the deadline, not later."""
    mv = version(tmp_path, "m", pool, config)
    gate = threading.Event()
    pool.submit(gate.wait)

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"never ran|during its run"):
            await mv.infer({"INPUT0": X}, None, deadline=started + 0.2)
        if mv.batching is not None:
            assert mv._batcher(None).waiting == 0
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    gate.set()
    pool.submit(time.sleep, 0.05).result()  # anything the request left queued would have run by now
    assert waited < 5
    assert mv.stats.execution_count == 0 and mv.stats.fail_count == 1 and mv.pending == 0


def test_the_worker_thread_checks_the_deadline_right_before_the_run(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """Even if the loop could not fire the deadline timer in time, the thread refuses to start the run."""
    mv = version(tmp_path, "m", pool, NOT_INLINE)
    with pytest.raises(DeadlineExceeded, match="never ran"):
        mv._run({"INPUT0": X}, ["OUTPUT0"], 0, deadline=time.monotonic() - 0.001)
    assert mv._run({"INPUT0": X}, ["OUTPUT0"], 0, deadline=time.monotonic() + 60)[0][0].shape == (1, 10)


@pytest.mark.parametrize("config", ["", BATCHED], ids=["alone", "batched"])
def test_a_run_that_outlives_its_deadline_is_stopped_and_frees_its_thread(
    tmp_path: Path, pool: ThreadPoolExecutor, config: str
) -> None:
    mv = version(tmp_path, "hang", pool, config, hung=True)

    async def scenario() -> None:
        deadline = time.monotonic() + 0.3
        calls = [mv.infer({"INPUT0": X}, None, deadline=deadline) for _ in range(2 if mv.batching else 1)]
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            assert isinstance(outcome, DeadlineExceeded), outcome

    asyncio.run(scenario())
    # The single thread is free again: the hung run was stopped, not abandoned.
    assert pool.submit(lambda: "free").result(timeout=10) == "free"
    assert mv.stats.execution_count == 0 and mv.pending == 0


def test_a_cancelled_call_with_a_deadline_stops_its_run(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    mv = version(tmp_path, "hang", pool, hung=True)

    async def scenario() -> None:
        task = asyncio.ensure_future(mv.infer({"INPUT0": X}, None, deadline=time.monotonic() + 3600))
        await asyncio.sleep(0.2)  # running on the thread now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert pool.submit(lambda: "free").result(timeout=10) == "free"
    assert mv.pending == 0


def test_a_full_queue_refuses_at_once_with_a_retry_hint(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    mv = version(tmp_path, "m", pool, NOT_INLINE + "max_queue_size = 2\n")
    gate = threading.Event()
    pool.submit(gate.wait)

    async def scenario() -> None:
        queued = [asyncio.ensure_future(mv.infer({"INPUT0": X}, None)) for _ in range(2)]
        await asyncio.sleep(0)
        assert mv.busy
        with pytest.raises(QueueFull) as refused:
            await mv.infer({"INPUT0": X}, None)
        assert refused.value.retry_after_s > 0 and refused.value.code.value == "UNAVAILABLE"
        gate.set()
        await asyncio.gather(*queued)

    asyncio.run(scenario())
    assert mv.stats.success_count == 2 and mv.pending == 0 and not mv.busy


# ------------------------------------------------------------------------------------------ gateways


def slow_repo(root: Path, config: str, endpoints: str = "") -> Path:
    write_demo_repository(root)
    write_slow_model(root / "models")
    (root / "models" / "slow" / "config.toml").write_text(config)
    gateway_toml = root / "gateway.toml"
    gateway_toml.write_text('model_repository = "models"\n' + endpoints)
    return gateway_toml


def serve(tmp_path: Path, config: Path, *args: str, env: dict[str, str] | None = None) -> GatewayProcess:
    return start_gateway(
        tmp_path / "gw", "--config", str(config), "--state-dir", str(tmp_path / "state"), *args, env=env
    )


def expected_slow(root: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(root / "models" / "slow" / "1" / "model.onnx"))
    return session.run(None, {"INPUT0": x})[0]


def grpc_burst(gw: GatewayProcess, n: int) -> list[tuple[str, Any, dict[str, str]]]:
    """`n` ModelInfer calls at once on one channel: (status name, response or message, trailing metadata)."""

    async def burst() -> list[tuple[str, Any, dict[str, str]]]:
        async with grpc.aio.insecure_channel(gw.grpc_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            calls = [stub.ModelInfer(infer_request("slow", X), timeout=60) for _ in range(n)]
            out = []
            for call in calls:
                try:
                    out.append(("OK", await call, {}))
                except grpc.aio.AioRpcError as err:
                    trailers = {k: v for k, v in (err.trailing_metadata() or ())}
                    out.append((err.code().name, err.details(), trailers))
            return out

    return asyncio.run(burst())


def http_burst(gw: GatewayProcess, n: int) -> list[tuple[int, Any, dict[str, str]]]:
    """`n` JSON requests from `n` threads at once: (status, body, headers)."""
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64], "data": X.ravel().tolist()}]}
    ).encode()
    results: list[tuple[int, Any, dict[str, str]]] = []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def one() -> None:
        req = urllib.request.Request(
            f"http://{gw.http_url}/v2/models/slow/infer", body, {"Content-Type": "application/json"}
        )
        start.wait()
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                got = (resp.status, json.loads(resp.read()), dict(resp.headers))
        except urllib.error.HTTPError as err:
            got = (err.code, json.loads(err.read()), dict(err.headers))
        with lock:
            results.append(got)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_a_burst_on_a_tiny_queue_is_partly_refused_with_retry_after_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    config = slow_repo(root, "max_queue_size = 2\n")
    gw = serve(tmp_path, config, "--inference-threads", "1")
    want = expected_slow(root, X)
    try:
        over_grpc = grpc_burst(gw, 40)
        codes = Counter(code for code, _, _ in over_grpc)
        assert set(codes) == {"OK", "UNAVAILABLE"} and codes["UNAVAILABLE"] > 0 and codes["OK"] >= 2, codes
        for code, answer, trailers in over_grpc:
            if code == "OK":
                got = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).reshape(1, 10)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            else:
                assert trailers.get("retry-after") == "1", trailers
                assert "queued" in answer and "retry later" in answer, answer

        over_http = http_burst(gw, 40)
        statuses = Counter(status for status, _, _ in over_http)
        assert set(statuses) == {200, 503} and statuses[503] > 0 and statuses[200] >= 2, statuses
        for status, body, headers in over_http:
            if status == 200:
                got = np.array(body["outputs"][0]["data"], dtype=np.float32).reshape(1, 10)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            else:
                assert headers.get("Retry-After") == "1", headers
                assert "retry later" in body["error"], body

        refused = {
            "grpc": metric(gw, "onnxgate_requests_total", model="slow", protocol="grpc", code="UNAVAILABLE"),
            "http": metric(gw, "onnxgate_requests_total", model="slow", protocol="http", code="UNAVAILABLE"),
        }
        assert refused == {"grpc": codes["UNAVAILABLE"], "http": statuses[503]}
        answered = metric(gw, "onnxgate_requests_total", model="slow", code="OK")
        assert answered == codes["OK"] + statuses[200]
    finally:
        assert gw.stop() == 0, gw.log()


SHADOWED = """
[endpoints.ep]
champion = { model = "slow", version = 1 }
shadow = { model = "demo", version = 1, sample_rate = 1.0 }
"""


def test_the_shadow_gives_way_before_any_client_is_refused(tmp_path: Path) -> None:
    """Eight clients in a closed loop can never fill the champion's queue (bound 10), but keep it at least
    half full (its runs take milliseconds): the shadow lane (fast, with room in its own queue) drops copies
    then, and no client is refused."""
    config = slow_repo(tmp_path / "repo", "max_queue_size = 10\ninline_threshold_us = 0\n", SHADOWED)
    gw = serve(tmp_path, config, "--inference-threads", "2")
    errors: list[str] = []
    clients, per_client = 8, 60
    rows = np.random.default_rng(3).random((16, 64), dtype=np.float32)

    def client_loop() -> None:
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        for _ in range(per_client):
            try:
                client.infer("ep", grpc_inputs(rows), client_timeout=60)
            except grpcclient.InferenceServerException as exc:
                errors.append(f"{exc.status()}: {exc.message()}")
        client.close()

    try:
        threads = [threading.Thread(target=client_loop) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        total = clients * per_client
        assert errors == []
        assert metric(gw, "onnxgate_requests_total", endpoint="ep", code="OK") == total
        dropped = metric(gw, "onnxgate_shadow_dropped_total", endpoint="ep")
        queued = metric(gw, "onnxgate_shadow_queued_total", endpoint="ep")
        assert queued + dropped == total
        assert dropped > total // 10, f"the shadow gave way only {dropped:.0f} times of {total}"
        wait_for(
            lambda: metric(gw, "onnxgate_shadow_compared_total", endpoint="ep") == queued, 30, "lane idle"
        )
        assert queued > 0, "the shadow ran nothing at all"
    finally:
        assert gw.stop() == 0, gw.log()


# ------------------------------------------------------------------------------------------ end to end


def hung_repo(root: Path) -> Path:
    config = slow_repo(root, "")
    write_hung_model(root / "models")
    return config


def test_a_grpc_deadline_stops_the_run_and_frees_its_thread(tmp_path: Path) -> None:
    """Needs the gRPC front end to pass the call's deadline down (InferRequest.deadline)."""
    gw = serve(tmp_path, hung_repo(tmp_path / "repo"), "--inference-threads", "1")
    try:
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        with pytest.raises(grpcclient.InferenceServerException) as info:
            client.infer("hang", grpc_inputs(X), client_timeout=0.5)
        assert "DEADLINE_EXCEEDED" in str(info.value.status())
        # The only inference thread must be free again: the hung run was stopped at the deadline.
        try:
            answer = client.infer("slow", grpc_inputs(X), client_timeout=10).as_numpy("OUTPUT0")
        except grpcclient.InferenceServerException:
            pytest.fail(
                "the hung run still holds the only inference thread: the gRPC front end does not pass the "
                "call's deadline down (InferRequest.deadline)"
            )
        assert answer is not None and answer.shape == (1, 10)
        client.close()
        ended = metric(gw, "onnxgate_requests_total", model="hang", code="DEADLINE_EXCEEDED")
        ended += metric(gw, "onnxgate_requests_total", model="hang", code="CANCELLED")  # gRPC's own timer won
        assert ended == 1
    finally:
        assert gw.stop() == 0, gw.log()


def test_an_http_timeout_parameter_is_a_deadline(tmp_path: Path) -> None:
    """Triton's `timeout` request parameter (microseconds). Needs the HTTP front end to set the deadline."""
    gw = serve(tmp_path, hung_repo(tmp_path / "repo"), "--inference-threads", "1")
    body = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64], "data": X.ravel().tolist()}],
        "parameters": {"timeout": 300_000},
    }
    try:
        req = urllib.request.Request(
            f"http://{gw.http_url}/v2/models/hang/infer",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as info:
            try:
                urllib.request.urlopen(req, timeout=10)
            except TimeoutError:
                pytest.fail(
                    "no answer at the deadline: the HTTP front end does not turn `timeout` into a deadline"
                )
        assert info.value.code == 504, info.value.read()
        assert time.monotonic() - started < 5
        assert "deadline exceeded" in json.loads(info.value.read())["error"]
        assert metric(gw, "onnxgate_requests_total", model="hang", code="DEADLINE_EXCEEDED") == 1
    finally:
        assert gw.stop() == 0, gw.log()
