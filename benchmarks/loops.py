"""uvloop against asyncio's own loop for the gateway, side by side: ``python -m benchmarks.loops``.

Why: the issue asks for uvloop only where it measurably helps. Each round starts the demo gateway twice
(``event_loop = "asyncio"`` and the default, uvloop), drives gRPC unary and HTTP binary at c=16 through
the harness's load generator, and prints throughput and server CPU per inference; rounds alternate the
order so that a drift of the shared machine does not favour one loop.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import wire
from benchmarks.loadgen import LoadSpec, run_load

ROOT = Path(__file__).resolve().parent.parent


def _start(workdir: Path, loop: str) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    import json

    ports = workdir / f"ports-{loop}.json"
    ports.unlink(missing_ok=True)  # a file from an earlier round would give the old ports
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXGATE_")}
    env["ONNXGATE_EVENT_LOOP"] = loop
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(workdir / "gateway.toml"),
           "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--control-port", "0",
           "--state-dir", str(workdir / f"state-{loop}"), "--ports-file", str(ports)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ports.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"gateway with event_loop={loop} did not start")
        time.sleep(0.05)
    return proc, json.loads(ports.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    from gateway.demo import write_demo_repository

    payload = wire.Payload.rows("demo")
    print("| round | event loop | protocol | inferences/s | server CPU us/inf | p99 ms |")
    print("|---|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = write_demo_repository(workdir)
        (workdir / "gateway.toml").write_text(config.read_text().split("[endpoints")[0])
        for round_ in range(args.rounds):
            order = ("asyncio", "uvloop") if round_ % 2 == 0 else ("uvloop", "asyncio")
            for loop in order:
                proc, ports = _start(workdir, loop)
                try:
                    for protocol in ("grpc", "http_binary"):
                        port = ports["grpc"] if protocol == "grpc" else ports["http"]
                        request = (
                            wire.grpc_request(payload)
                            if protocol == "grpc"
                            else wire.http_request(payload, True, "127.0.0.1", port)
                        )
                        spec = LoadSpec(protocol, port, request, concurrency=16, duration_s=args.duration,
                                        warmup_s=1.0, clients=2)  # fmt: skip
                        r = run_load(spec, [proc.pid])
                        p99 = r.latency.get("p99_ms", float("nan"))
                        print(f"| {round_ + 1} | {loop} | {protocol} | {r.throughput:,.0f} | "
                              f"{r.server_cpu_us_per_inf or float('nan'):.0f} | {p99:.3f} |", flush=True)  # fmt: skip
                finally:
                    proc.terminate()
                    proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
