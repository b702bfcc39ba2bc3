"""Requests built once, answers read cheaply: the load generator's view of the wire.

Rules of this module:
- Requests are serialised once, in the parent, with the generated protobuf classes or orjson; the client
  processes only send bytes. A stream request's id is appended as a trailing protobuf field (a later
  occurrence of a scalar field wins), so no message is serialised per call.
- Answers are never fully parsed on the hot path: ``scan_field`` walks the top-level protobuf fields up to
  the one wanted, and the HTTP helpers find ``"model_version"`` in the JSON header by search.
- Nothing here imports grpc or a generated module at import time: client processes import this module,
  and the harness process must stay free to import what it likes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
HEADER_LENGTH = "Inference-Header-Content-Length"
PROTOCOLS = ("grpc", "grpc_stream", "http_binary", "http_json")
_ID_FIELD = 0x1A  # ModelInferRequest.id: field 3, length-delimited


@dataclass(frozen=True, slots=True)
class Payload:
    """One inference request: a single FP32 tensor (one 1x64 row for the demo MLP)."""

    model: str
    data: bytes  # little-endian FP32, C order
    shape: tuple[int, ...] = (1, 64)
    input_name: str = "INPUT0"
    output_name: str = "OUTPUT0"
    datatype: str = "FP32"
    model_version: str = ""
    grpc_raw: bool = True  # raw_input_contents (False: typed fp32_contents, for servers without raw)

    @classmethod
    def rows(cls, model: str, width: int = 64, rows: int = 1, seed: int = 7, **kw: object) -> Payload:
        rng = np.random.default_rng(seed)
        data = rng.standard_normal((rows, width)).astype("<f4").tobytes()
        return cls(model=model, data=data, shape=(rows, width), **kw)  # type: ignore[arg-type]

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype="<f4").reshape(self.shape)


def grpc_request(payload: Payload) -> bytes:
    """A serialised ModelInferRequest (the generated module is imported here, in the caller's process)."""
    from gateway.grpc.generated import grpc_service_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(
        name=payload.input_name, datatype=payload.datatype, shape=list(payload.shape)
    )
    msg = pb.ModelInferRequest(model_name=payload.model, model_version=payload.model_version)
    msg.outputs.add(name=payload.output_name)
    if payload.grpc_raw:
        msg.inputs.append(tensor)
        msg.raw_input_contents.append(payload.data)
    else:
        tensor.contents.fp32_contents.extend(payload.array().reshape(-1).tolist())
        msg.inputs.append(tensor)
    return msg.SerializeToString()


def with_id(request: bytes, ident: bytes) -> bytes:
    """`request` with its id field set to `ident` (< 128 bytes), by appending the field."""
    return b"".join((request, bytes((_ID_FIELD, len(ident))), ident))


def http_body(payload: Payload, binary: bool) -> tuple[bytes, int | None]:
    """The /infer body and, for the binary extension, the length of its JSON header."""
    import orjson

    tensor: dict[str, object] = {
        "name": payload.input_name,
        "shape": list(payload.shape),
        "datatype": payload.datatype,
    }
    if binary:
        tensor["parameters"] = {"binary_data_size": len(payload.data)}
        doc = {
            "inputs": [tensor],
            "outputs": [{"name": payload.output_name, "parameters": {"binary_data": True}}],
        }
        header = orjson.dumps(doc)
        return header + payload.data, len(header)
    tensor["data"] = [float(x) for x in payload.array().reshape(-1)]
    doc = {"inputs": [tensor], "outputs": [{"name": payload.output_name}]}
    return orjson.dumps(doc), None


def http_request(payload: Payload, binary: bool, host: str, port: int) -> bytes:
    """A complete HTTP/1.1 keep-alive request, ready to write to a socket as is."""
    body, header_length = http_body(payload, binary)
    version = f"/versions/{payload.model_version}" if payload.model_version else ""
    lines = [
        f"POST /v2/models/{payload.model}{version}/infer HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {'application/octet-stream' if binary else 'application/json'}",
        f"Content-Length: {len(body)}",
    ]
    if header_length is not None:
        lines.append(f"{HEADER_LENGTH}: {header_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def scan_field(buf: bytes, want: int) -> bytes | None:
    """The bytes of top-level length-delimited field `want`; b"" when absent; None when unreadable.

    Servers write fields in number order, so the walk stops as soon as it passes `want`.
    """
    i, n = 0, len(buf)
    try:
        while i < n:
            key, i = _varint(buf, i)
            field, wire = key >> 3, key & 7
            if wire == 2:
                length, i = _varint(buf, i)
                if field == want:
                    return buf[i : i + length]
                i += length
            elif wire == 0:
                _, i = _varint(buf, i)
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                return None
            if field > want:
                return b""
    except IndexError:
        return None
    return b""


def stream_answer(buf: bytes) -> tuple[bytes, bytes, bytes]:
    """(error_message, model_version, id) of a serialised ModelStreamInferResponse."""
    error = scan_field(buf, 1) or b""
    inner = scan_field(buf, 2) or b""
    return error, scan_field(inner, 2) or b"", scan_field(inner, 3) or b""


_VERSION_KEY = b'"model_version"'


def json_version(body: bytes) -> bytes:
    """The model_version string of an /infer answer (JSON, or the JSON header of a binary answer)."""
    i = body.find(_VERSION_KEY)
    if i < 0:
        return b""
    i = body.find(b'"', i + len(_VERSION_KEY) + 1)  # past the colon and any spaces
    if i < 0:
        return b""
    j = body.find(b'"', i + 1)
    return body[i + 1 : j] if j > 0 else b""
