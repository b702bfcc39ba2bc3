"""The native gRPC transport (gateway.grpc.h2) at the HTTP/2 level, and grpc.aio as the fallback transport.

Real gateways on loopback; the HTTP/2 cases speak raw frames over a socket (header blocks encoded by the
``hpack`` package, an independent encoder), so they check what a misbehaving or unusual client gets, which
grpcio would never send. The HPACK decoder is checked against ``hpack``'s encoder with hypothesis.
"""

from __future__ import annotations

import gzip
import queue
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.grpc.h2 import frames as f
from gateway.grpc.h2.connection import MAX_FRAME, parse_timeout
from gateway.grpc.h2.headers import CompressionError, HeaderDecoder, HeaderListTooLarge
from tests.gateway_process import GatewayProcess, start_gateway

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
A = list(range(16))
B = [1] * 16


# ---------------------------------------------------------------------- HPACK decoder


header_names = st.sampled_from(
    [b"x-a", b"x-routing-key", b"user-agent", b"grpc-timeout", b"x-long-name-" * 3]
)
header_values = st.binary(min_size=0, max_size=40).map(lambda b: bytes(c % 94 + 33 for c in b))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(header_names, header_values), max_size=8), min_size=1, max_size=12))
def test_decoder_agrees_with_hpack_encoder(blocks: list[list[tuple[bytes, bytes]]]) -> None:
    """Blocks from one encoder (dynamic table, Huffman, evictions) decode to what was encoded, memo or not."""
    encoder = hpack.Encoder()
    encoder.header_table_size = 256  # small: evictions happen
    decoder = HeaderDecoder()
    for block_headers in blocks + blocks:  # the second round repeats blocks: memo hits
        block = encoder.encode([(b":path", b"/x"), *block_headers])
        assert decoder.decode(block) == [(b":path", b"/x"), *block_headers]


def test_decoder_refuses_malformed_blocks() -> None:
    decoder = HeaderDecoder()
    with pytest.raises(CompressionError):
        decoder.decode(b"\x80")  # index 0
    with pytest.raises(CompressionError):
        HeaderDecoder().decode(b"\xff\xff\xff\xff\xff\xff\x01")  # index past every table
    with pytest.raises(CompressionError):
        HeaderDecoder().decode(b"\x00\x05ab")  # string runs past the block
    with pytest.raises(CompressionError):
        HeaderDecoder(max_table_size=4096).decode(b"\x3f\xe1\xff\x03")  # size update over what we announced
    big = hpack.Encoder().encode([(b"x-big", b"v" * 2000)])
    with pytest.raises(HeaderListTooLarge):
        HeaderDecoder(max_list_size=1000).decode(big)


def test_grpc_timeout_values() -> None:
    assert parse_timeout(b"5S") == 5.0
    assert parse_timeout(b"250m") == 0.25
    assert parse_timeout(b"1H") == 3600.0
    assert parse_timeout(b"99999999n") == pytest.approx(0.099999999)
    assert parse_timeout(b"S") is None
    assert parse_timeout(b"123456789S") is None  # more than 8 digits
    assert parse_timeout(b"5x") is None


# ---------------------------------------------------------------------- a raw HTTP/2 client


class RawH2:
    """Frames over a plain socket: enough to send what grpcio never would and read every frame back."""

    def __init__(self, port: int, settings_values: tuple[tuple[int, int], ...] = ()) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.sock.sendall(f.PREFACE + f.settings(settings_values))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def headers(
        self, sid: int, path: str = INFER_PATH, end: bool = False, extra: tuple = (), **over: str
    ) -> None:
        fields = {
            ":method": "POST",
            ":scheme": "http",
            ":path": path,
            ":authority": "localhost",
            "content-type": "application/grpc",
            "te": "trailers",
            **over,
        }
        block = self.encoder.encode(list(fields.items()) + list(extra))
        self.send(f.frame(f.HEADERS, f.END_HEADERS | (f.END_STREAM if end else 0), sid, block))

    def message(self, sid: int, body: bytes, end: bool = True, compressed: bool = False) -> None:
        payload = bytes((1 if compressed else 0,)) + struct.pack(">I", len(body)) + body
        self.send(f.frame(f.DATA, f.END_STREAM if end else 0, sid, payload))

    def read_frame(self) -> tuple[int, int, int, bytes] | None:
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return None
            if not chunk:
                return None
            self.buf += chunk
        length = int.from_bytes(self.buf[:3], "big")
        kind, flags, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload, self.buf = self.buf[9 : 9 + length], self.buf[9 + length :]
        return kind, flags, sid, payload

    def until(self, kind: int, sid: int | None = None) -> tuple[int, int, bytes]:
        """Read frames (decoding every header block) until one of `kind` (on `sid`) arrives."""
        while (got := self.read_frame()) is not None:
            k, flags, s, payload = got
            if k == f.HEADERS:
                payload = b"\n".join(n + b": " + v for n, v in self.decoder.decode(payload, raw=True))
            if k == kind and (sid is None or s == sid):
                return flags, s, payload
        raise AssertionError(f"connection ended before a frame of type {kind}")

    def response(self, sid: int) -> tuple[dict[bytes, bytes], bytes]:
        """The stream's headers and trailers merged, and its DATA bytes, until END_STREAM."""
        fields: dict[bytes, bytes] = {}
        data = b""
        while (got := self.read_frame()) is not None:
            kind, flags, s, payload = got
            if kind == f.PING and not flags & f.ACK:
                self.send(f.frame(f.PING, f.ACK, 0, payload))
            if s != sid:
                continue
            if kind == f.HEADERS:
                fields.update(dict(self.decoder.decode(payload, raw=True)))
            elif kind == f.DATA:
                data += payload
                if payload:
                    self.send(f.window_update(0, len(payload)) + f.window_update(sid, len(payload)))
            elif kind == f.RST_STREAM:
                fields[b"rst"] = str(f.u32(payload)).encode()
                return fields, data
            if flags & f.END_STREAM:
                return fields, data
        raise AssertionError("connection ended mid-stream")

    def closed(self) -> bool:
        """True once the server closed the connection (after any frames it sent first)."""
        while self.read_frame() is not None:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def simple_request() -> bytes:
    req = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = req.inputs.add()
        tensor.name, tensor.datatype = name, "INT32"
        tensor.shape.extend([1, 16])
    req.raw_input_contents.extend([np.array(A, "<i4").tobytes(), np.array(B, "<i4").tobytes()])
    return req.SerializeToString()


@pytest.fixture
def raw(gateway: GatewayProcess) -> Iterator[RawH2]:
    client = RawH2(gateway.ports["grpc"])
    yield client
    client.close()


def test_settings_and_ping_are_acknowledged(raw: RawH2) -> None:
    flags, _, _ = raw.until(f.SETTINGS)
    assert not flags & f.ACK  # the server's own settings come first
    raw.until(f.SETTINGS)  # then its ACK of ours
    raw.send(f.frame(f.PING, 0, 0, b"12345678"))
    flags, _, payload = raw.until(f.PING)
    assert flags & f.ACK and payload == b"12345678"


def test_a_raw_call_is_answered_in_one_exchange(raw: RawH2) -> None:
    raw.headers(1)
    raw.message(1, simple_request())
    fields, data = raw.response(1)
    assert fields[b":status"] == b"200" and fields[b"grpc-status"] == b"0"
    answer = service_pb2.ModelInferResponse.FromString(data[5:])
    assert np.frombuffer(answer.raw_output_contents[0], "<i4").tolist() == [
        a + b for a, b in zip(A, B, strict=True)
    ]


def test_request_split_across_many_data_frames(raw: RawH2) -> None:
    body = simple_request()
    wire = b"\x00" + struct.pack(">I", len(body)) + body
    raw.headers(1)
    for i in range(0, len(wire), 7):
        raw.send(f.frame(f.DATA, 0, 1, wire[i : i + 7]))
    raw.send(f.frame(f.DATA, f.END_STREAM, 1, b""))
    fields, data = raw.response(1)
    assert fields[b"grpc-status"] == b"0" and len(data) > 5


@pytest.mark.parametrize(
    ("over", "path", "status", "grpc_status"),
    [
        ({"content-type": "text/plain"}, INFER_PATH, b"415", None),
        ({":method": "GET"}, INFER_PATH, b"405", None),
        ({}, "/inference.GRPCInferenceService/NoSuchMethod", b"200", b"12"),  # UNIMPLEMENTED
        ({"grpc-encoding": "snappy"}, INFER_PATH, b"200", b"12"),
    ],
)
def test_refused_calls_get_http_or_grpc_status(
    raw: RawH2, over: dict[str, str], path: str, status: bytes, grpc_status: bytes | None
) -> None:
    raw.headers(1, path=path, **over)
    raw.message(1, simple_request())
    fields, _ = raw.response(1)
    assert fields[b":status"] == status
    assert fields.get(b"grpc-status") == grpc_status
    raw.headers(3)  # the connection goes on
    raw.message(3, simple_request())
    assert raw.response(3)[0][b"grpc-status"] == b"0"


@pytest.mark.parametrize(
    ("body", "compressed", "grpc_status", "words"),
    [
        (b"\xff\xff\xff", False, b"13", b"parse"),  # INTERNAL: not a protobuf message
        (simple_request(), True, b"13", b"grpc-encoding"),  # compressed flag with no encoding
    ],
)
def test_bad_messages_end_only_their_stream(
    raw: RawH2, body: bytes, compressed: bool, grpc_status: bytes, words: bytes
) -> None:
    raw.headers(1)
    raw.message(1, body, compressed=compressed)
    fields, _ = raw.response(1)
    assert fields[b"grpc-status"] == grpc_status and words in fields[b"grpc-message"]
    raw.headers(3)
    raw.message(3, simple_request())
    assert raw.response(3)[0][b"grpc-status"] == b"0"


def test_gzip_request_is_accepted(raw: RawH2) -> None:
    raw.headers(1, extra=(("grpc-encoding", "gzip"),))
    raw.message(1, gzip.compress(simple_request()), compressed=True)
    fields, data = raw.response(1)
    assert fields[b"grpc-status"] == b"0" and len(data) > 5


def test_unary_call_without_message_and_with_two(raw: RawH2) -> None:
    raw.headers(1, end=True)
    assert raw.response(1)[0][b"grpc-status"] == b"12"
    raw.headers(3)
    raw.message(3, simple_request(), end=False)
    raw.message(3, simple_request(), end=True)
    assert raw.response(3)[0][b"grpc-status"] == b"12"


def test_message_over_the_limit_is_refused_before_it_is_buffered(raw: RawH2) -> None:
    raw.headers(1)
    raw.send(f.frame(f.DATA, 0, 1, b"\x00" + struct.pack(">I", 2**32 - 1) + b"xx"))
    fields, _ = raw.response(1)
    assert fields[b"grpc-status"] == b"8" and b"larger than max" in fields[b"grpc-message"]


def test_client_reset_then_more_calls(raw: RawH2) -> None:
    raw.headers(1)
    raw.send(f.rst_stream(1, f.CANCEL))
    raw.headers(3)
    raw.message(3, simple_request())
    assert raw.response(3)[0][b"grpc-status"] == b"0"


def test_deadline_in_the_past_ends_the_call(raw: RawH2) -> None:
    raw.headers(1, extra=(("grpc-timeout", "1n"),))
    time.sleep(0.05)
    raw.message(1, simple_request())
    fields, _ = raw.response(1)
    assert fields[b"grpc-status"] == b"4"  # DEADLINE_EXCEEDED


def test_answers_respect_a_tiny_client_window(gateway: GatewayProcess) -> None:
    """With a 16-byte stream window, DATA comes 16 bytes at a time, each after our WINDOW_UPDATE."""
    client = RawH2(gateway.ports["grpc"], ((f.SETTINGS_INITIAL_WINDOW_SIZE, 16),))
    try:
        client.headers(1)
        client.message(1, simple_request())
        got = b""
        while True:
            frame = client.read_frame()
            assert frame is not None
            kind, flags, sid, payload = frame
            if kind == f.DATA and sid == 1:
                assert len(payload) <= 16
                got += payload
                client.send(f.window_update(1, len(payload)))
            if kind == f.HEADERS and sid == 1 and flags & f.END_STREAM:
                break
        answer = service_pb2.ModelInferResponse.FromString(got[5:])
        assert np.frombuffer(answer.raw_output_contents[0], "<i4").tolist() == [
            a + b for a, b in zip(A, B, strict=True)
        ]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (f.frame(f.DATA, 0, 7, b"x"), f.PROTOCOL_ERROR),  # DATA on a stream never opened
        (f.frame(f.SETTINGS, 0, 0, b"12345"), f.PROTOCOL_ERROR),  # not a multiple of 6
        (f.frame(f.PING, 0, 0, b"123"), f.PROTOCOL_ERROR),
        (f.frame(f.HEADERS, f.END_HEADERS, 2, b"\x83"), f.PROTOCOL_ERROR),  # even stream id
        (f.frame(f.HEADERS, f.END_HEADERS, 1, b"\x80"), f.COMPRESSION_ERROR),
        (f.frame_head(f.DATA, 0, 1, MAX_FRAME + 1), f.FRAME_SIZE_ERROR),
        (f.window_update(0, 0), f.PROTOCOL_ERROR),
    ],
)
def test_protocol_errors_end_the_connection_with_goaway(
    gateway: GatewayProcess, data: bytes, code: int
) -> None:
    client = RawH2(gateway.ports["grpc"])
    try:
        client.send(data)
        _, _, payload = client.until(f.GOAWAY)
        assert f.u32(payload[4:8]) == code
        assert client.closed()
    finally:
        client.close()
    assert_grpc_serves(gateway)


def test_not_http2_is_closed(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.ports["grpc"]), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):  # the server's SETTINGS may come first; then it closes
            received += chunk
        assert received == b"" or received[3] == f.SETTINGS
    assert_grpc_serves(gateway)


# ---------------------------------------------------------------------- real clients


def assert_grpc_serves(gateway: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(np.array([A], np.int32))
    inputs[1].set_data_from_numpy(np.array([B], np.int32))
    result = client.infer("simple", inputs)
    assert result.as_numpy("OUTPUT0").tolist() == [[a + b for a, b in zip(A, B, strict=True)]]
    client.close()


def test_large_tensors_both_ways_through_flow_control(gateway: GatewayProcess) -> None:
    """8 MiB in and out: past every default window, in many frames, with gzip on the way in."""
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    rng = np.random.default_rng(1)
    data = np.array([[rng.bytes(2 << 20)] for _ in range(4)], dtype=np.object_)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    for compression in (None, "gzip"):
        result = client.infer("simple_identity", [tensor], compression_algorithm=compression)
        assert result.as_numpy("OUTPUT0").tolist() == data.tolist()
    client.close()


def test_many_concurrent_streams_on_one_channel(gateway: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    answers: queue.Queue[object] = queue.Queue()
    inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(np.array([A], np.int32))
    inputs[1].set_data_from_numpy(np.array([B], np.int32))
    for _ in range(300):
        client.async_infer("simple", inputs, lambda result, error: answers.put(error or result))
    got = [answers.get(timeout=60) for _ in range(300)]
    assert all(not isinstance(g, Exception) for g in got), [g for g in got if isinstance(g, Exception)][:1]
    client.close()


def test_health_check_and_watch(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_cancelled_calls_leave_nothing_in_flight(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest.FromString(simple_request())
        futures = [stub.ModelInfer.future(request, timeout=30) for _ in range(50)]
        for fut in futures:
            fut.cancel()
        stub.ModelInfer(request, timeout=30)  # the channel and the server go on


# ---------------------------------------------------------------------- the grpcio fallback


def demo_gateway(
    demo_config: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tag: str,
    extra_toml: str = "",
    env: dict[str, str] | None = None,
) -> GatewayProcess:
    """A gateway of its own on the demo repository, with `extra_toml` appended to its config."""
    config = demo_config
    if extra_toml:
        config = demo_config.with_name(f"gateway-{tag}.toml")
        config.write_text(demo_config.read_text() + "\n" + extra_toml)
    return start_gateway(
        tmp_path_factory.mktemp(tag),
        "--config",
        str(config),
        "--state-dir",
        str(tmp_path_factory.mktemp(f"{tag}-state")),
        env=env,
    )


@pytest.fixture(scope="module")
def grpcio_gateway(demo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = demo_gateway(demo_config, tmp_path_factory, "grpcio", env={"ONNXGATE_GRPC_TRANSPORT": "grpcio"})
    yield gw
    assert gw.stop() == 0, gw.log()


def test_grpcio_transport_serves_the_same_answers(
    gateway: GatewayProcess, grpcio_gateway: GatewayProcess
) -> None:
    request = service_pb2.ModelInferRequest.FromString(simple_request())
    bad = service_pb2.ModelInferRequest.FromString(simple_request())
    bad.model_name = "nope"
    answers = []
    for gw in (gateway, grpcio_gateway):
        with grpc.insecure_channel(gw.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answer = stub.ModelInfer(request, timeout=30)
            streamed = list(stub.ModelStreamInfer(iter([request, bad, request]), timeout=30))
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(bad, timeout=30)
            metadata = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="simple"), timeout=30)
        answers.append(
            (
                answer.raw_output_contents[0],
                [(s.error_message, s.infer_response.raw_output_contents[:1]) for s in streamed],
                err.value.code(),
                err.value.details(),
                metadata,
            )
        )
    assert answers[0] == answers[1]


def test_client_that_reads_late_gets_every_answer(gateway: GatewayProcess) -> None:
    """600 calls pipelined before the client reads anything: every one is answered once it reads."""
    client = RawH2(gateway.ports["grpc"])
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        body = simple_request()
        sids = list(range(1, 1201, 2))
        for sid in sids:
            client.headers(sid)
            client.message(sid, body)
        statuses = [client.response(sid)[0].get(b"grpc-status") for sid in sids]
        assert statuses == [b"0"] * len(sids)
    finally:
        client.close()


@pytest.fixture(scope="module")
def idle_gateway(demo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = demo_gateway(
        demo_config, tmp_path_factory, "idle-conn", "[limits]\nconnection_idle_timeout_s = 0.5\n"
    )
    yield gw
    assert gw.stop() == 0, gw.log()


def test_idle_connection_gets_goaway_and_busy_one_does_not(idle_gateway: GatewayProcess) -> None:
    idle = RawH2(idle_gateway.ports["grpc"])
    busy = RawH2(idle_gateway.ports["grpc"])
    try:
        busy.headers(1, path="/inference.GRPCInferenceService/ModelStreamInfer")  # a stream held open
        _, _, payload = idle.until(f.GOAWAY)
        assert f.u32(payload[4:8]) == f.NO_ERROR
        assert idle.closed()
        busy.message(1, simple_request(), end=True)
        fields, data = busy.response(1)
        assert fields[b"grpc-status"] == b"0" and len(data) > 5
    finally:
        idle.close()
        busy.close()


def test_stream_of_many_requests_is_answered_in_full_then_ended(raw: RawH2) -> None:
    """2,000 requests on one stream sent without waiting, then a half-close: 2,000 answers, OK trailers."""
    body = simple_request()
    raw.headers(1, path="/inference.GRPCInferenceService/ModelStreamInfer")
    for _ in range(2000):
        raw.message(1, body, end=False)
    raw.send(f.frame(f.DATA, f.END_STREAM, 1, b""))
    fields, data = raw.response(1)
    assert fields[b"grpc-status"] == b"0"
    count, pos = 0, 0
    while pos < len(data):
        size = int.from_bytes(data[pos + 1 : pos + 5], "big")
        item = service_pb2.ModelStreamInferResponse.FromString(data[pos + 5 : pos + 5 + size])
        assert not item.error_message
        count, pos = count + 1, pos + 5 + size
    assert count == 2000


def test_calls_beyond_the_in_progress_bound_are_refused(
    demo_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """grpc_max_pending_requests = 1: while a stream holds the one slot a unary call gets UNAVAILABLE;
    once the stream ends the next call is served."""
    gw = demo_gateway(
        demo_config, tmp_path_factory, "bounded", env={"ONNXGATE_GRPC_MAX_PENDING_REQUESTS": "1"}
    )
    client = RawH2(gw.ports["grpc"])
    try:
        client.headers(1, path="/inference.GRPCInferenceService/ModelStreamInfer")
        client.headers(3)
        client.message(3, simple_request())
        assert client.response(3)[0][b"grpc-status"] == b"14"  # UNAVAILABLE
        client.send(f.frame(f.DATA, f.END_STREAM, 1, b""))
        assert client.response(1)[0][b"grpc-status"] == b"0"
        client.headers(5)
        client.message(5, simple_request())
        assert client.response(5)[0][b"grpc-status"] == b"0"
    finally:
        client.close()
        assert gw.stop() == 0, gw.log()


def test_rapid_reset_is_cut_off(gateway: GatewayProcess) -> None:
    """Streams opened only to be reset, past the allowance: GOAWAY ENHANCE_YOUR_CALM; others unaffected."""
    client = RawH2(gateway.ports["grpc"])
    try:
        frames = b"".join(
            f.frame(f.HEADERS, f.END_HEADERS, sid, client.encoder.encode([(":method", "POST"), (":path", INFER_PATH),
                    (":scheme", "http"), ("content-type", "application/grpc")])) + f.rst_stream(sid, f.CANCEL)
            for sid in range(1, 2 * 1100, 2)
        )  # fmt: skip
        client.send(frames)
        _, _, payload = client.until(f.GOAWAY)
        assert f.u32(payload[4:8]) == f.ENHANCE_YOUR_CALM
    finally:
        client.close()
    assert_grpc_serves(gateway)
