"""Start and stop a real onnxgate process on loopback ports for tests.

The gateway runs in its own process, as users run it: its generated protobuf modules and tritonclient's
cannot share one interpreter anyway, and a subprocess lets tests send real signals (SIGTERM, SIGKILL).
Ports are always 0 (ephemeral) and read back from the --ports-file the gateway writes once it is ready.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_gateway(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> GatewayProcess:
    """Run `onnxgate serve ARGS` with every port ephemeral; returns once it reports its bound ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    ports_file = workdir / f"ports-{tag}.json"
    log_path = workdir / f"gateway-{tag}.log"
    cmd = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--control-port",
        "0",
        "--ports-file",
        str(ports_file),
        *args,
    ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXGATE_")}
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env)
    gw = GatewayProcess(proc, workdir, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ports_file.exists():
            gw.ports = json.loads(ports_file.read_text())
            return gw
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode} before it was ready:\n{gw.log()}")
        time.sleep(0.05)
    gw.stop(signal.SIGKILL)
    raise RuntimeError(f"gateway not ready after {timeout}s:\n{gw.log()}")
