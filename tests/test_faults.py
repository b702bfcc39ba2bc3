"""Faults against real gateway processes: a hung shadow, a worker that dies, SIGTERM under load and with a
hung shadow, readiness while draining and while an endpoint cannot be served, clients that go away.

Covered elsewhere (not repeated here): a corrupt or missing model file at start and at reload, and a failed
reload that keeps the running version serving (test_repository.py); a model that raises at inference
(test_traffic.py: the failing shadow and the direct call that gets INTERNAL); a truncated routing state
(test_traffic.py); a model that asks for a GPU that is not there (test_repository.py, test_metadata.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from gateway.demo import write_demo_repository
from tests.fault_models import write_hung_model, write_long_model
from tests.gateway_process import GatewayProcess, start_gateway
from tests.traffic_models import write_slow_model

X = np.random.default_rng(5).random((1, 64), dtype=np.float32)
NO_RETRIES = [("grpc.enable_retries", 0)]


def grpc_inputs(x: np.ndarray = X) -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def infer_request(model: str, x: np.ndarray = X) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    tensor = req.inputs.add()
    tensor.name, tensor.datatype = "INPUT0", "FP32"
    tensor.shape.extend(x.shape)
    req.raw_input_contents.append(x.tobytes())
    return req


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    text = urllib.request.urlopen(gw.metrics_url, timeout=10).read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def http_status(gw: GatewayProcess, path: str) -> int | str:
    """The HTTP status of GET `path`, or "refused" when no connection could be made."""
    try:
        with urllib.request.urlopen(f"http://{gw.http_url}{path}", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ConnectionRefusedError | ConnectionResetError):
            return "refused"
        raise


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def repo_with(root: Path, endpoints: str = "", models: tuple[str, ...] = ()) -> Path:
    """The demo repository plus the named test models, and a gateway.toml with `endpoints`."""
    write_demo_repository(root)
    for name in models:
        if name == "slow":
            write_slow_model(root / "models")
        elif name == "hang":
            write_hung_model(root / "models")
        elif name == "long":
            write_long_model(root / "models")
    config = root / "gateway.toml"
    config.write_text('model_repository = "models"\n' + endpoints)
    return config


def serve(tmp_path: Path, config: Path, *args: str, env: dict[str, str] | None = None) -> GatewayProcess:
    return start_gateway(
        tmp_path / "gw", "--config", str(config), "--state-dir", str(tmp_path / "state"), *args, env=env
    )


# ------------------------------------------------------------------------------------------ hung shadow

HUNG_SHADOW = """
[endpoints.ep]
champion = { model = "demo", version = 1 }
shadow = { model = "hang", version = 1, sample_rate = 1.0 }
"""


def test_a_hung_shadow_is_stopped_at_its_timeout_and_clients_never_wait(tmp_path: Path) -> None:
    config = repo_with(tmp_path / "repo", HUNG_SHADOW, ("hang",))
    env = {"ONNXGATE_SHADOW_TIMEOUT_S": "0.3", "ONNXGATE_SHADOW_CONCURRENCY": "1"}
    gw = serve(tmp_path, config, env=env)
    try:
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        started = time.monotonic()
        for _ in range(20):
            out = client.infer("ep", grpc_inputs(), client_timeout=10).as_numpy("OUTPUT0")
            assert out is not None and out.shape == (1, 10)
        assert time.monotonic() - started < 5, "clients waited on the shadow"
        # One lane slot: a second run can only start once the first one's thread is free again, so more
        # than one timed-out run proves the hung runs were stopped, not merely abandoned.
        wait_for(lambda: metric(gw, "onnxgate_shadow_timed_out_total", endpoint="ep") >= 3, 20, "3 timeouts")
        assert metric(gw, "onnxgate_shadow_compared_total", endpoint="ep") == 0
        assert client.infer("ep", grpc_inputs(), client_timeout=10).as_numpy("OUTPUT0") is not None
        client.close()
    finally:
        stopping = time.monotonic()
        code = gw.stop(timeout=30)
    assert code == 0, gw.log()
    assert time.monotonic() - stopping < 5, "a hung shadow held up the shutdown"
    assert "Traceback" not in gw.log()


def test_sigterm_with_a_hung_shadow_running_exits_0_quickly(tmp_path: Path) -> None:
    """A shadow timeout far beyond the test: only stop() terminating the run lets the process exit."""
    config = repo_with(tmp_path / "repo", HUNG_SHADOW, ("hang",))
    gw = serve(tmp_path, config, env={"ONNXGATE_SHADOW_TIMEOUT_S": "3600"})
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    assert client.infer("ep", grpc_inputs(), client_timeout=10).as_numpy("OUTPUT0") is not None
    client.close()
    time.sleep(0.3)  # the shadow copy is running (and would run for days)
    stopping = time.monotonic()
    assert gw.stop(timeout=30) == 0, gw.log()
    assert time.monotonic() - stopping < 5


# ------------------------------------------------------------------------------------------ workers


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    pids = []
    for task in os.listdir(f"/proc/{supervisor}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{supervisor}/task/{task}/children") as f:
            for pid in f.read().split():
                with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as c:
                    if b"spawn_main" in c.read():
                        pids.append(int(pid))
    return sorted(pids)


def fresh_connection_failures(gw: GatewayProcess, n: int) -> list[str]:
    """`n` requests, each on a new channel (so SO_REUSEPORT spreads them over the workers): the failures."""
    failures = []
    for _ in range(n):
        client = grpcclient.InferenceServerClient(gw.grpc_url, channel_args=NO_RETRIES)
        try:
            client.infer("demo", grpc_inputs(), client_timeout=10)
        except grpcclient.InferenceServerException as exc:
            failures.append(f"{exc.status()}: {exc.message()}")
        finally:
            client.close()
    return failures


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_others_keep_serving(tmp_path: Path) -> None:
    config = repo_with(tmp_path / "repo")
    gw = serve(tmp_path, config, "--workers", "2")
    try:
        wait_for(lambda: len(worker_pids(gw.proc.pid)) == 2, 60, "two workers")
        victim, survivor = worker_pids(gw.proc.pid)
        os.kill(victim, signal.SIGKILL)
        # While the slot is empty the other worker answers every new connection. (Connections the kernel
        # queued on the victim's socket in the ~10 ms it took to die are reset: nobody can answer those.)
        wait_for(lambda: victim not in worker_pids(gw.proc.pid), 10, "the killed worker to be gone")
        time.sleep(0.2)
        assert fresh_connection_failures(gw, 20) == []
        wait_for(lambda: len(worker_pids(gw.proc.pid)) == 2, 120, "the replacement worker")
        replacement = next(p for p in worker_pids(gw.proc.pid) if p != survivor)
        assert replacement != victim and survivor in worker_pids(gw.proc.pid)
        wait_for(lambda: not fresh_connection_failures(gw, 30), 60, "every worker to serve")
        assert http_status(gw, "/v2/health/ready") == 200
        assert "exited with -9" in gw.log()
    finally:
        assert gw.stop() == 0, gw.log()


# ------------------------------------------------------------------------------------------ SIGTERM


def _refused(exc: grpcclient.InferenceServerException) -> bool:
    """UNAVAILABLE because the call never reached a server that accepted it (closed port, GOAWAY)."""
    text = (exc.message() or "").lower()
    return str(exc.status()) == "StatusCode.UNAVAILABLE" and any(
        s in text for s in ("connect", "refused", "goaway", "not accepting", "shutdown", "shutting down")
    )


DRAINED = re.compile(r"drained: (\d+) requests in flight at the signal; outcomes during the drain: (.*); "
                     r"(\d+) still in flight after the grace period")  # fmt: skip


@pytest.mark.slow
def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(tmp_path: Path) -> None:
    """Six clients (retries off) send without pause; SIGTERM: every call is answered or refused at the door.

    A call can also end CANCELLED without the gateway ever seeing it: grpc core cancels the calls it has
    received but the application has not yet taken when the server stops (its pending queue). The gateway's
    own account (its "drained" log line) must show that no request it had started was cancelled.
    """
    config = repo_with(tmp_path / "repo", models=("slow",))
    gw = serve(tmp_path, config, "--inference-threads", "2")
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    dropped: list[str] = []
    lock = threading.Lock()

    def load() -> None:
        client = grpcclient.InferenceServerClient(gw.grpc_url, channel_args=NO_RETRIES)
        while not stop.is_set():
            try:
                out = client.infer("slow", grpc_inputs(), client_timeout=30).as_numpy("OUTPUT0")
                kind = "ok" if out is not None and out.shape == (1, 10) else "bad answer"
            except grpcclient.InferenceServerException as exc:
                if _refused(exc):
                    kind = "refused"
                elif str(exc.status()) == "StatusCode.CANCELLED":
                    kind = "cancelled before the gateway took it"
                else:
                    kind = "dropped"
                    with lock:
                        dropped.append(f"{exc.status()}: {exc.message()}")
            with lock:
                outcomes[kind] += 1
            if kind == "refused":
                time.sleep(0.01)  # the port is closed: don't spin
        client.close()

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: outcomes["ok"] >= 200, 60, "load to build up")
        sent = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(30)
        exited_after = time.monotonic() - sent
        time.sleep(0.3)  # clients meet the closed port
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        gw.stop()
    assert code == 0, gw.log()
    assert exited_after < 10, f"took {exited_after:.1f} s: more than the grace period"
    assert dropped == [], dropped
    assert outcomes["bad answer"] == 0
    assert outcomes["ok"] >= 200 and outcomes["refused"] > 0, outcomes
    drained = DRAINED.search(gw.log())
    assert drained is not None, gw.log()
    assert "CANCELLED" not in drained.group(2) and drained.group(3) == "0", drained.group(0)
    assert outcomes["cancelled before the gateway took it"] <= 6, outcomes  # at most one per client


def test_readiness_turns_false_as_soon_as_draining_begins(tmp_path: Path) -> None:
    """A long request is in flight at SIGTERM: readiness goes (503 or the port closed) while it is still
    running, the request is answered, and the process exits 0."""
    config = repo_with(tmp_path / "repo", models=("long",))
    gw = serve(tmp_path, config)
    assert http_status(gw, "/v2/health/ready") == 200
    answer: list[object] = []

    def long_request() -> None:
        client = grpcclient.InferenceServerClient(gw.grpc_url, channel_args=NO_RETRIES)
        try:
            answer.append(client.infer("long", grpc_inputs(), client_timeout=60).as_numpy("OUTPUT0"))
        except Exception as exc:  # recorded for the assertion below
            answer.append(exc)
        client.close()

    thread = threading.Thread(target=long_request)
    thread.start()
    wait_for(lambda: metric(gw, "onnxgate_inflight_requests") == 1, 10, "the long request in flight")
    gw.proc.send_signal(signal.SIGTERM)
    seen = []
    while thread.is_alive():
        seen.append(http_status(gw, "/v2/health/ready"))
        if seen[-1] != 200:
            break
        time.sleep(0.01)
    still_running = thread.is_alive()
    thread.join(60)
    assert gw.proc.wait(30) == 0, gw.log()
    assert seen and seen[-1] in (503, "refused"), seen
    assert still_running, "readiness stayed true until the in-flight request was done"
    assert isinstance(answer[0], np.ndarray), answer
    np.testing.assert_array_equal(answer[0], X)


# ------------------------------------------------------------------------------------------ readiness


def test_not_ready_while_a_configured_endpoint_has_no_loadable_champion(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    config = repo_with(root, '[endpoints.ep]\nchampion = { model = "broken", version = 1 }\n')
    (root / "models" / "broken" / "1").mkdir(parents=True)
    (root / "models" / "broken" / "1" / "model.onnx").write_bytes(b"corrupt: not an ONNX file")
    gw = serve(tmp_path, config)
    try:
        assert http_status(gw, "/v2/health/ready") == 503
        assert http_status(gw, "/v2/health/live") == 200
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        assert not client.is_server_ready()
        assert client.infer("simple_identity", _bytes_inputs()).as_numpy("OUTPUT0")[0][0] == b"ok"
        assert client.infer("demo", grpc_inputs()).as_numpy("OUTPUT0").shape == (1, 10)
        with pytest.raises(grpcclient.InferenceServerException, match=r"UNAVAILABLE|no ready version"):
            client.infer("ep", grpc_inputs())
        client.close()
    finally:
        assert gw.stop() == 0, gw.log()


def _bytes_inputs() -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("INPUT0", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"ok"]], dtype=object))
    return [inp]


# ------------------------------------------------------------------------------------------ cancellation


def _cancel_grpc_calls(gw: GatewayProcess, n: int) -> None:
    """`n` calls on one channel; once all are in flight, the client cancels them."""

    async def run() -> None:
        async with grpc.aio.insecure_channel(gw.grpc_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            calls = [asyncio.ensure_future(stub.ModelInfer(infer_request("long"))) for _ in range(n)]
            deadline = time.monotonic() + 20
            while metric(gw, "onnxgate_inflight_requests") < n and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert metric(gw, "onnxgate_inflight_requests") == n
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    asyncio.run(run())


def _close_http_connections(gw: GatewayProcess, n: int) -> None:
    """`n` requests, each on its own connection; once all are in flight, the client closes them."""
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64], "data": X.ravel().tolist()}]}
    ).encode()
    head = (
        f"POST /v2/models/long/infer HTTP/1.1\r\nHost: {gw.http_url}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    host, port = gw.http_url.split(":")
    connections = []
    for _ in range(n):
        conn = socket.create_connection((host, int(port)), timeout=10)
        conn.sendall(head + body)
        connections.append(conn)
    wait_for(lambda: metric(gw, "onnxgate_inflight_requests") == n, 20, f"{n} requests in flight")
    for conn in connections:
        conn.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cancelled_in_flight_requests_leave_the_gateway_within_a_second(
    tmp_path: Path, protocol: str
) -> None:
    """100 calls queued behind one inference thread are given up by their client (gRPC cancel, HTTP
    connection closed): the in-flight gauge is back to 0 within a second and the queue they left does not
    delay the next request. (HTTP needs the inference listener's aiohttp runner to cancel the handlers of
    closed connections: handler_cancellation=True.)"""
    config = repo_with(tmp_path / "repo", models=("long",))
    gw = serve(tmp_path, config, "--inference-threads", "1")
    try:
        (_cancel_grpc_calls if protocol == "grpc" else _close_http_connections)(gw, 100)
        cancelled = time.monotonic()
        wait_for(lambda: metric(gw, "onnxgate_inflight_requests") == 0, 1.0, "in-flight back to 0")
        assert time.monotonic() - cancelled < 1.0
        assert metric(gw, "onnxgate_requests_total", model="long", protocol=protocol, code="CANCELLED") == 100
        # The one run that had started finishes (a run without a deadline cannot be stopped); the 99 queued
        # ones left the queue, so a new request waits for one run at most, not a hundred.
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        client.infer("long", grpc_inputs(), client_timeout=60)
        stats = client.get_inference_statistics("long", as_json=True)["model_stats"][0]
        assert int(stats["execution_count"]) <= 3, "the cancelled calls' queued runs were not dropped"
        client.close()
    finally:
        assert gw.stop() == 0, gw.log()
