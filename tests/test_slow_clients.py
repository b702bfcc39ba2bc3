"""Slow and silent clients against a real gateway: they time out, and they never hold up anyone else.

- An HTTP body trickled one byte every half second is cut off (408, connection closed) once the body clock
  of gateway.http.endpoints runs out, while other clients keep being answered.
- Connections that never send a byte, or stop halfway through their headers, hold no worker: with a
  hundred of them open, requests are answered as fast as ever.
- gRPC ModelStreamInfer streams that are opened and never sent on do not block other clients either, and
  end cleanly when their client closes them; a stream idle for the configured time is ended with
  DEADLINE_EXCEEDED (with `[limits] stream_idle_timeout_s`; the default is minutes, so that test needs the
  setting, and tests/own_proto/test_fuzz_grpc.py checks the same with the servicer in-process).
"""

from __future__ import annotations

import dataclasses
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.http.endpoints import BODY_GRACE_S
from gateway.settings import Limits
from tests.gateway_process import GatewayProcess, start_gateway

A = list(range(16))
GOOD = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": A},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": A},
        ]
    }
).encode()
TRICKLE_EVERY_S = 0.5
# How long a good request may take while slow clients are connected (loopback, a tiny model).
PROMPT_S = 1.0


def address(url: str) -> tuple[str, int]:
    host, port = url.rsplit(":", 1)
    return host, int(port)


def good_http(gw: GatewayProcess) -> float:
    """Send a good inference request on a fresh connection; returns how long the answer took."""
    started = time.monotonic()
    with socket.create_connection(address(gw.http_url), timeout=10) as sock:
        head = (
            "POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(GOOD)}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + GOOD)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["outputs"][0]["data"] == [2 * a for a in A]
    return time.monotonic() - started


def grpc_request() -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        req.raw_input_contents.append(np.asarray(A, dtype="<i4").tobytes())
    return req


def good_grpc(gw: GatewayProcess) -> float:
    started = time.monotonic()
    with grpc.insecure_channel(gw.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request(), timeout=10)
    assert np.frombuffer(response.raw_output_contents[0], "<i4").tolist() == [2 * a for a in A]
    return time.monotonic() - started


def assert_others_are_served(gw: GatewayProcess) -> None:
    for _ in range(3):
        assert good_http(gw) < PROMPT_S
        assert good_grpc(gw) < PROMPT_S


def test_trickled_http_body_is_cut_off_and_blocks_nobody(gateway: GatewayProcess) -> None:
    sock = socket.create_connection(address(gateway.http_url), timeout=10)
    try:
        sock.sendall(
            b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(GOOD)}\r\n\r\n".encode()
        )
        started = time.monotonic()
        answer = b""
        sent = 0
        closed = False
        while time.monotonic() - started < BODY_GRACE_S + 10:
            readable, _, _ = select.select([sock], [], [], TRICKLE_EVERY_S)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    closed = True
                    break
                answer += chunk
                continue
            try:
                sock.sendall(GOOD[sent : sent + 1])  # one byte per half second
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if sent % 4 == 0:  # while it trickles, everyone else is answered promptly
                assert good_http(gateway) < PROMPT_S
                assert good_grpc(gateway) < PROMPT_S
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    assert closed, f"the connection was still open after {elapsed:.1f} s and {sent} bytes"
    assert sent < len(GOOD), "the whole body went through: nothing was cut off"
    assert elapsed < BODY_GRACE_S + 3, f"cut off only after {elapsed:.1f} s"
    if answer:  # the answer normally arrives before the close; a reset may overtake it
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"request body" in answer
    assert_others_are_served(gateway)


def test_a_body_that_arrives_at_a_reasonable_pace_is_not_cut_off(gateway: GatewayProcess) -> None:
    """Slow but steady (the whole body in about a second, in pieces) is a client, not an attack."""
    with socket.create_connection(address(gateway.http_url), timeout=10) as sock:
        sock.sendall(
            b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(GOOD)}\r\nConnection: close\r\n\r\n".encode()
        )
        step = len(GOOD) // 5 + 1
        for i in range(0, len(GOOD), step):
            sock.sendall(GOOD[i : i + step])
            time.sleep(0.2)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_idle_and_half_open_connections_hold_no_worker(gateway: GatewayProcess) -> None:
    sockets: list[socket.socket] = []
    try:
        for _ in range(50):  # connected, never a byte
            sockets.append(socket.create_connection(address(gateway.http_url), timeout=10))
            sockets.append(socket.create_connection(address(gateway.grpc_url), timeout=10))
        for _ in range(25):  # stopped halfway through the request line and headers
            s = socket.create_connection(address(gateway.http_url), timeout=10)
            s.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
            sockets.append(s)
            s = socket.create_connection(address(gateway.http_url), timeout=10)
            s.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nContent-Length: 100000\r\n\r\n{")
            sockets.append(s)
        assert_others_are_served(gateway)
    finally:
        for s in sockets:
            s.close()
    assert gateway.alive()
    assert_others_are_served(gateway)


def silent_requests(release: threading.Event) -> Iterator[service_pb2.ModelInferRequest]:
    """A stream's requests: none at all until `release` is set, then the end of the stream."""
    release.wait(60)
    yield from ()


def test_silent_grpc_streams_block_nobody(gateway: GatewayProcess) -> None:
    channel = grpc.insecure_channel(gateway.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    release = threading.Event()
    streams = [stub.ModelStreamInfer(silent_requests(release), timeout=60) for _ in range(20)]
    done: list[int] = []
    errors: list[BaseException] = []

    def drain(stream: grpc.Future, index: int) -> None:
        try:
            assert list(stream) == []
            done.append(index)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    readers = [threading.Thread(target=drain, args=(s, i), daemon=True) for i, s in enumerate(streams)]
    try:
        for t in readers:
            t.start()
        time.sleep(0.3)  # the streams are open on the server and waiting
        assert_others_are_served(gateway)
        # A stream that does send on the same channel is served next to the silent ones.
        answers = list(stub.ModelStreamInfer(iter([grpc_request(), grpc_request()]), timeout=10))
        assert [a.error_message for a in answers] == ["", ""]
    finally:
        release.set()
        for t in readers:
            t.join(10)
        channel.close()
    assert not errors, errors
    assert sorted(done) == list(range(len(streams))), (
        "every silent stream ends cleanly when its client ends it"
    )
    assert_others_are_served(gateway)


@pytest.fixture(autouse=True)
def _gateway_survives(gateway: GatewayProcess) -> Iterator[None]:
    yield
    assert gateway.alive(), gateway.log()[-3000:]


@pytest.fixture(scope="module")
def idle_gateway(demo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    if "stream_idle_timeout_s" not in {f.name for f in dataclasses.fields(Limits)}:
        pytest.skip("needs Limits.stream_idle_timeout_s in gateway.settings")
    config = demo_config.with_name("gateway-idle-streams.toml")
    config.write_text(demo_config.read_text() + "\n[limits]\nstream_idle_timeout_s = 1\n")
    gw = start_gateway(
        tmp_path_factory.mktemp("gw-idle"),
        "--config",
        str(config),
        "--state-dir",
        str(tmp_path_factory.mktemp("s")),
    )
    yield gw
    assert gw.stop() == 0, gw.log()


def test_an_idle_grpc_stream_is_ended(idle_gateway: GatewayProcess) -> None:
    release = threading.Event()
    with grpc.insecure_channel(idle_gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ModelStreamInfer(silent_requests(release), timeout=30))
        release.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
    assert "no request" in (info.value.details() or "")
    assert time.monotonic() - started < 5
    assert_others_are_served(idle_gateway)
