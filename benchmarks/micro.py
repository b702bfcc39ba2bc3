"""Micro-benchmarks of the gateway's own hot-path functions, in process, with timeit.

What a request pays for routing and recording (target: < 5 us together) is measured on the real objects:
a ModelRepository loaded from the demo repository, the Router over the demo endpoint (challenger 20%,
shadow 100%), the Recorder's series, and a started ShadowDispatcher. Codec costs are measured for one 1x64
FP32 row each way and for BYTES tensors of 1,000 elements.

Each case is best-of-N (the minimum is the least disturbed by the other work on a shared machine). A case
whose function changed signature is reported with its error instead of stopping the run.
"""

from __future__ import annotations

import asyncio
import random
import timeit
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROUTING_CASES = ("Router.choose", "RequestSeries.observe", "ShadowDispatcher.offer (queued)")


def _time(fn: Callable[[], Any], repeat: int, target_s: float) -> float:
    """Microseconds per call: the best of `repeat` rounds of about `target_s` each."""
    timer = timeit.Timer(fn)
    number, elapsed = 1, 0.0
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= target_s / 5 or number >= 1 << 22:
            break
        number *= 4
    number = max(1, int(number * target_s / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat, number)) / number * 1e6


async def _measure(root: Path, repeat: int, target_s: float) -> dict[str, Any]:
    from gateway.demo import write_demo_repository
    from gateway.observability.records import Recorder
    from gateway.routing.router import Router
    from gateway.routing.shadow import ShadowDispatcher
    from gateway.routing.table import EndpointSpec, Target
    from gateway.types import InferInput, InferRequest, InferResponse
    from runtime.repository import ModelRepository

    write_demo_repository(root)
    executor = ThreadPoolExecutor(max_workers=2)
    repository = ModelRepository(root / "models", executor)
    await repository.load_all()
    spec = EndpointSpec("demo", Target("demo", 1), Target("demo", 2), 0.2, Target("demo", 3), 1.0)
    router = Router(repository, {"demo": spec})
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    request = InferRequest("demo", [InferInput("INPUT0", "FP32", (1, 64), x)])
    mv, role, route = router.choose(request)
    shadow = route.shadow
    assert shadow is not None
    answer = [("OUTPUT0", np.zeros((1, 10), np.float32))]
    feeds = {"INPUT0": x}
    recorder = Recorder()
    key = (route.endpoint, mv.name, mv.version_str, role)

    big = 10_000_000  # a queue that never fills during the measurement: the "queued" path
    queued = ShadowDispatcher(big, 2, 5.0, max_wait_s=float("inf"), busy_limit=1.0)  # never lagging or busy
    queued.start()
    full = ShadowDispatcher(1, 1, 5.0)
    full.start()
    full.offer("demo", mv, shadow, feeds, answer)  # the pump has not run: the queue stays full
    draw = random.random

    def request_path() -> None:
        m, r, rt = router.choose(request)
        recorder.get((rt.endpoint, m.name, m.version_str, r)).observe("grpc", "OK", 812, 3, 40)
        if rt.shadow is not None and draw() < rt.sample_rate:
            queued.offer(rt.endpoint, m, rt.shadow, feeds, answer)

    cases: dict[str, Callable[[], Any]] = {
        "Router.choose": lambda: router.choose(request),
        "RequestSeries.observe": lambda: recorder.get(key).observe("grpc", "OK", 812, 3, 40),
        "ShadowDispatcher.offer (queued)": lambda: queued.offer("demo", mv, shadow, feeds, answer),
        "ShadowDispatcher.offer (queue full: dropped)": lambda: full.offer("demo", mv, shadow, feeds, answer),
        "request path: choose + record + shadow draw/offer": request_path,
    }
    cases.update(_codec_cases(x, InferResponse, InferInput, InferRequest))
    results: dict[str, Any] = {}
    for name, fn in cases.items():
        try:
            fn()
            results[name] = round(_time(fn, repeat, target_s), 3)
        except Exception as exc:  # a changed signature: report, go on
            results[name] = f"error: {type(exc).__name__}: {exc}"[:200]
    await queued.stop()
    await full.stop()
    executor.shutdown(wait=False)
    return results


def _codec_cases(
    x: np.ndarray, InferResponse: Any, InferInput: Any, InferRequest: Any
) -> dict[str, Callable[[], Any]]:
    from gateway import tensors
    from gateway.grpc import codec as grpc_codec
    from gateway.grpc.generated import grpc_service_pb2 as pb
    from gateway.http import codec as http_codec
    from gateway.settings import Limits
    from gateway.types import InferOutput

    limits = Limits()
    msg = pb.ModelInferRequest(model_name="demo")
    msg.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    msg.raw_input_contents.append(x.tobytes())
    out = np.random.default_rng(4).standard_normal((1, 10)).astype(np.float32)
    response = InferResponse("demo", "1", "", [InferOutput("OUTPUT0", "FP32", (1, 10), out)])
    json_body = (
        b'{"inputs":[{"name":"INPUT0","shape":[1,64],"datatype":"FP32","data":['
        + b",".join(repr(float(v)).encode() for v in x.reshape(-1))
        + b"]}]}"
    )
    header = b'{"inputs":[{"name":"INPUT0","shape":[1,64],"datatype":"FP32","parameters":{"binary_data_size":256}}]}'
    binary_body = header + x.tobytes()
    strings = np.array([f"element-{i:05d}".encode() for i in range(1000)], dtype=object)
    raw_strings = tensors.serialize_bytes(strings)
    return {
        "gRPC decode_infer_request 1x64 FP32": lambda: grpc_codec.decode_infer_request(msg, None, limits),
        "gRPC encode_infer_response 1x10 FP32": lambda: grpc_codec.encode_infer_response(response),
        "HTTP decode_infer_request JSON 1x64": lambda: http_codec.decode_infer_request(
            json_body, None, "application/json", "demo", "", limits
        ),
        "HTTP decode_infer_request binary 1x64": lambda: http_codec.decode_infer_request(
            binary_body, len(header), None, "demo", "", limits
        ),
        "HTTP encode_infer_response JSON 1x10": lambda: http_codec.encode_infer_response(
            response, False, False
        ),
        "HTTP encode_infer_response binary 1x10": lambda: http_codec.encode_infer_response(
            response, True, False
        ),
        "BYTES serialize 1,000 elements": lambda: tensors.serialize_bytes(strings),
        "BYTES deserialize 1,000 elements": lambda: tensors.deserialize_bytes(raw_strings, 1000, "t"),
    }


def run_micro(root: Path, quick: bool = False) -> dict[str, Any]:
    """{case: microseconds per call (or an error string)} plus the routing+recording total."""
    root.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(_measure(root, 3 if quick else 5, 0.05 if quick else 0.2))
    parts = [results.get(k) for k in ROUTING_CASES]
    total = (
        sum(p for p in parts if isinstance(p, float)) if all(isinstance(p, float) for p in parts) else None
    )
    return {"us_per_call": results, "routing_recording_us": round(total, 3) if total is not None else None}
