"""Overload behaviour of the demo endpoint over gRPC: ``python -m benchmarks.overload``.

What it measures (the issue's overload scenario):
1. capacity: open-loop steps of rising rate (2 s each, +15 %); the last rate at which nothing was refused
   and the p99 stayed under 20 ms (in one of two tries) is the capacity;
2. 80 % of capacity for ~10 s: the p99 of the answers (the reference);
3. 200 % of capacity for ~10 s: the p99 of the admitted requests (answered OK), the rate they were answered
   at, and the p99 latency of the refusals (every answer that is not OK, by status code);
4. then 50 % of capacity for 3 s: the recovery time, i.e. how long after the drop requests were still
   refused or answered slower than twice the reference p99.
The first second of each measured phase is left out (the load settles).

Rules of this script:
- Standalone: it starts its own gateway on a fresh demo repository (loopback, ephemeral ports) unless
  ``--grpc HOST:PORT`` names a running one, and needs nothing from the rest of benchmarks/.
- Open loop: requests leave on a fixed schedule and latency is counted from the *intended* send time, so a
  server that falls behind is charged for the queueing it causes (no coordinated omission).
- Raw grpc.aio with onnxgate's own generated stubs; the request is serialised once and sent as bytes
  (identity serialiser), so the client spends its CPU on sending, not on protobuf. It never imports
  tritonclient (whose generated modules clash with ours in one interpreter).
- Several client processes, started once and kept for every phase, share the schedule (each sends every
  n-th request), so one client's event loop is less of a bottleneck. On a small machine they still share
  the cores with the gateway: the capacity found is that of the machine with this client on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METHOD = "/inference.GRPCInferenceService/ModelInfer"
Sample = tuple[int, int, str]  # intended send time (ns since the run's start), latency (us), status code
STEP_S = 2.0
SETTLE_S = 1.0
CAPACITY_P99_MS = 20.0
RECOVERY_PHASE_S = 3.0


@dataclass(frozen=True, slots=True)
class Segment:
    seconds: float
    rate: float  # requests per second over all client processes


def build_request(model: str, version: str = "") -> bytes:
    from gateway.grpc.generated import grpc_service_pb2 as pb

    x = np.random.default_rng(7).random((1, 64), dtype=np.float32)
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = req.inputs.add()
    tensor.name, tensor.datatype = "INPUT0", "FP32"
    tensor.shape.extend(x.shape)
    req.raw_input_contents.append(x.tobytes())
    return bytes(req.SerializeToString())


# ------------------------------------------------------------------------------------------ client processes


async def _send_schedule(
    target: str, request: bytes, segments: list[Segment], index: int, clients: int, start_ns: int
) -> list[Sample]:
    import grpc

    channels = [grpc.aio.insecure_channel(target) for _ in range(2)]
    calls = [c.unary_unary(METHOD, request_serializer=None, response_deserializer=None) for c in channels]
    samples: list[Sample] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(k: int, intended: int) -> None:
        try:
            await calls[k % len(calls)](request, timeout=30.0)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        samples.append((intended - start_ns, (time.monotonic_ns() - intended) // 1000, code))

    # Request k of the whole run leaves at its own instant; this process sends every `clients`-th one.
    times: list[int] = []
    t = 0.0
    for seg in segments:
        n = int(seg.seconds * seg.rate)
        times.extend(int((t + k / seg.rate) * 1e9) for k in range(n))
        t += seg.seconds
    loop = asyncio.get_running_loop()
    for k, offset in enumerate(times[index::clients]):
        intended = start_ns + offset
        delay = (intended - time.monotonic_ns()) / 1e9
        if delay > 0.0005:
            await asyncio.sleep(delay)
        task = loop.create_task(one(k, intended))
        pending.add(task)
        task.add_done_callback(pending.discard)
    while pending:
        await asyncio.wait(tuple(pending))
    for c in channels:
        await c.close()
    return samples


def _client_main(target: str, request: bytes, index: int, clients: int, conn: Connection) -> None:
    """A client process: for each (segments, start_ns) it receives, send its share; answer the samples."""
    conn.send("ready")
    while (job := conn.recv()) is not None:
        segments, start_ns = job
        conn.send(asyncio.run(_send_schedule(target, request, segments, index, clients, start_ns)))


class Clients:
    """Client processes kept for the whole benchmark, so no phase pays for their start-up."""

    def __init__(self, target: str, request: bytes, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for i in range(n):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_client_main, args=(target, request, i, n, theirs), daemon=True)
            p.start()
            self.procs.append(p)
            self.conns.append(mine)
        for c in self.conns:
            assert c.recv() == "ready"

    def run(self, segments: list[Segment]) -> list[Sample]:
        """Send the schedule; every answer's (intended time, latency, code), by intended time."""
        start_ns = time.monotonic_ns() + int(0.2e9)
        for c in self.conns:
            c.send((segments, start_ns))
        samples: list[Sample] = []
        for c in self.conns:
            samples.extend(c.recv())
        samples.sort()
        return samples

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(10)


# ------------------------------------------------------------------------------------------ figures


def p99_ms(latencies_us: list[int]) -> float:
    return float(np.percentile(np.array(latencies_us), 99)) / 1000.0 if latencies_us else float("nan")


def window(samples: list[Sample], start_s: float, end_s: float) -> list[Sample]:
    lo, hi = int(start_s * 1e9), int(end_s * 1e9)
    return [s for s in samples if lo <= s[0] < hi]


def summary(samples: list[Sample], seconds: float) -> dict[str, Any]:
    ok = [lat for _, lat, code in samples if code == "OK"]
    refused = [lat for _, lat, code in samples if code != "OK"]
    codes: dict[str, int] = {}
    for _, _, code in samples:
        codes[code] = codes.get(code, 0) + 1
    return {
        "codes": codes,
        "ok": len(ok),
        "refused": len(refused),
        "ok_rate": len(ok) / seconds,
        "p99_ms": p99_ms(ok),
        "refusal_p99_ms": p99_ms(refused),
    }


def recovery_s(samples: list[Sample], drop_at_s: float, end_s: float, limit_ms: float) -> float:
    """Seconds after the drop during which requests were still refused or slower than `limit_ms`."""
    late = 0.0
    for t, lat, code in window(samples, drop_at_s, end_s):
        if code != "OK" or lat / 1000.0 > limit_ms:
            late = max(late, t / 1e9 - drop_at_s)
    return late


def find_capacity(clients: Clients) -> float:
    """The last rate of a rising open-loop series that kept up; a step that fails is tried once more, so
    one hiccup of a shared machine does not end the search."""
    rate, best = 200.0, 0.0
    while rate < 100_000:
        for _ in range(2):
            s = summary(window(clients.run([Segment(STEP_S, rate)]), 0.5, STEP_S), STEP_S - 0.5)
            print(f"  {rate:8.0f}/s: p99 {s['p99_ms']:8.2f} ms, not OK {s['refused']}", flush=True)
            if not s["refused"] and s["p99_ms"] < CAPACITY_P99_MS:
                break
        else:
            return best
        best = rate
        rate *= 1.15
    return best


# ------------------------------------------------------------------------------------------ gateway


def start_gateway(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    from gateway.demo import write_demo_repository

    config = write_demo_repository(workdir / "repo")
    ports = workdir / "ports.json"
    cmd = [
        sys.executable, "-m", "gateway", "serve", "--config", str(config), "--state-dir", str(workdir / "state"),
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--control-port", "0",
        "--ports-file", str(ports), "--log-level", "WARNING",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXGATE_")}
    with open(workdir / "gateway.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while not ports.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((workdir / "gateway.log").read_text())
        time.sleep(0.05)
    return proc, f"127.0.0.1:{json.loads(ports.read_text())['grpc']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overload", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--grpc", help="HOST:PORT of a running gateway (default: start one)")
    parser.add_argument("--model", default="demo", help="model or endpoint name (default: demo)")
    parser.add_argument("--model-version", default="", help="pin a version (default: the endpoint routes)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the 80 %% and 200 %% phases")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--capacity", type=float, help="skip the search and use this rate (requests/s)")
    args = parser.parse_args(argv)

    request = build_request(args.model, args.model_version)
    proc = None
    clients = None
    with tempfile.TemporaryDirectory(prefix="onnxgate-overload-") as tmp:
        try:
            if args.grpc:
                target = args.grpc
            else:
                proc, target = start_gateway(Path(tmp))
            clients = Clients(target, request, args.clients)
            clients.run([Segment(1.0, 300.0)])  # warm-up: connections, the gateway's first calls
            if args.capacity:
                capacity = args.capacity
            else:
                print("capacity search (open loop):", flush=True)
                capacity = find_capacity(clients)
            if capacity <= 0:
                print("the gateway did not keep up with the lowest rate")
                return 1
            secs = args.seconds
            normal = summary(
                window(clients.run([Segment(secs, 0.8 * capacity)]), SETTLE_S, secs), secs - SETTLE_S
            )
            samples = clients.run([Segment(secs, 2.0 * capacity), Segment(RECOVERY_PHASE_S, 0.5 * capacity)])
            over = summary(window(samples, SETTLE_S, secs), secs - SETTLE_S)
            recovery = recovery_s(samples, secs, secs + RECOVERY_PHASE_S, 2 * normal["p99_ms"])
        finally:
            if clients is not None:
                clients.close()
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    print(
        f"capacity                    {capacity:8.0f} requests/s ({args.model}, gRPC, {args.clients} client processes)"
    )
    print(f"80 %  load: p99             {normal['p99_ms']:8.2f} ms   {normal['codes']}")
    print(f"200 % load: admitted p99    {over['p99_ms']:8.2f} ms   {over['codes']}")
    print(f"200 % load: admitted rate   {over['ok_rate']:8.0f} requests/s")
    print(f"200 % load: refusal p99     {over['refusal_p99_ms']:8.2f} ms")
    print(f"recovery after the drop     {recovery:8.2f} s   (until answers are OK within 2 x the 80 % p99)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
