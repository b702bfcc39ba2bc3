"""The servers under test, each started in its own process on loopback and stopped after its runs.

Rules of this module:
- onnxgate runs as users run it (``python -m gateway serve``) with every port 0, read back from its
  --ports-file. The peers (MLServer, Triton) run from their own virtual environments under
  ``~/.cache/onnxgate-bench/venvs`` (created on demand), since their protobuf modules and ours cannot share
  an interpreter; they need fixed ports, so free ones are picked just before they start.
- Every peer serves the same ONNX file with ONNX Runtime on one intra-op thread, as onnxgate does.
- A peer that cannot be installed or started raises ``Unavailable`` with the reason: its scenario is then
  reported as skipped, never a crash of the harness.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ONNXGATE_BENCH_CACHE") or Path.home() / ".cache" / "onnxgate-bench")
MLSERVER_PACKAGES = ("mlserver==1.7.1", "uvloop==0.21.0", "onnxruntime", "numpy")
TRITON_PACKAGES = ("nvidia-pytriton==0.7.0", "onnxruntime", "numpy")


class Unavailable(RuntimeError):
    """A server that cannot run here; the message says why (shown as 'skipped: <reason>')."""


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Server:
    """A started server: its root pid (CPU is counted over it and all its descendants) and ports."""

    name = "server"

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, ports: dict[str, int]) -> None:
        self.proc = proc
        self.log_path = log_path
        self.ports = ports

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _popen(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)


def _wait_ready(server: Server, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise Unavailable(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            if http_get(url, 1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise Unavailable(f"{server.name} not ready after {timeout:.0f} s:\n{server.log_tail()}")


# ------------------------------------------------------------------------------------------------ onnxgate


class Onnxgate(Server):
    name = "onnxgate"

    @classmethod
    def start(cls, workdir: Path, config: Path, *args: str, timeout: float = 120.0) -> Onnxgate:
        tag = uuid.uuid4().hex[:8]
        ports_file = workdir / f"ports-{tag}.json"
        log_path = workdir / f"onnxgate-{tag}.log"
        cmd = [
            sys.executable, "-m", "gateway", "serve", "--config", str(config),
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--control-port", "0",
            "--state-dir", str(workdir / f"state-{tag}"), "--log-level", "WARNING",
            "--ports-file", str(ports_file), *args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        proc = _popen(cmd, log_path, env, ROOT)
        server = cls(proc, log_path, {})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ports_file.exists():
                server.ports = json.loads(ports_file.read_text())
                return server
            if proc.poll() is not None:
                raise Unavailable(f"onnxgate exited with {proc.returncode}:\n{server.log_tail()}")
            time.sleep(0.05)
        server.stop()
        raise Unavailable(f"onnxgate not ready after {timeout:.0f} s:\n{server.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """Samples of the /metrics page summed over their labels, by sample name."""
        _, body = http_get(f"http://127.0.0.1:{self.ports['metrics']}/metrics", 10.0)
        out: dict[str, float] = {}
        for line in body.decode("utf-8", "replace").splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                continue
        return out

    def batch_sizes(self, model: str) -> dict[int, int]:
        """Executions per batch size, from the statistics extension."""
        _, body = http_get(f"http://127.0.0.1:{self.ports['http']}/v2/models/{model}/stats", 10.0)
        sizes: dict[int, int] = {}
        for stats in json.loads(body).get("model_stats", []):
            for b in stats.get("batch_stats", []):
                sizes[int(b["batch_size"])] = sizes.get(int(b["batch_size"]), 0) + int(
                    b.get("compute_infer", {}).get("count", 0)
                )
        return sizes


class Floor(Server):
    """A trivial grpc.aio or aiohttp server (benchmarks.floor): the least a Python server costs here."""

    name = "floor"

    @classmethod
    def start(cls, workdir: Path, kind: str, timeout: float = 60.0) -> Floor:
        tag = uuid.uuid4().hex[:8]
        ports_file = workdir / f"floor-{tag}.json"
        log_path = workdir / f"floor-{kind}-{tag}.log"
        cmd = [sys.executable, "-m", "benchmarks.floor", kind, "--ports-file", str(ports_file)]
        server = cls(_popen(cmd, log_path, dict(os.environ), ROOT), log_path, {})
        server.name = f"{kind} floor"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ports_file.exists():
                server.ports = json.loads(ports_file.read_text())
                return server
            if server.proc.poll() is not None:
                raise Unavailable(f"the {kind} floor server exited:\n{server.log_tail()}")
            time.sleep(0.05)
        server.stop()
        raise Unavailable(f"the {kind} floor server did not start:\n{server.log_tail()}")


# ------------------------------------------------------------------------------------------------- venvs


def ensure_venv(name: str, packages: tuple[str, ...], log: Path) -> Path:
    """A virtual environment under the cache with exactly `packages` installed; its python."""
    root = CACHE / "venvs" / name
    python = root / "bin" / "python"
    marker = root / ".onnxgate-bench"
    wanted = "\n".join(packages)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        base = getattr(sys, "_base_executable", sys.executable)
        with open(log, "ab") as out:
            if not python.exists():
                subprocess.run(
                    [base, "-m", "venv", str(root)], check=True, stdout=out, stderr=out, timeout=300
                )
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *packages],
                check=True, stdout=out, stderr=out, timeout=1200,
            )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
        raise Unavailable(
            f"cannot install {' '.join(packages)} into {root}: {exc}; {' | '.join(tail)}"
        ) from None
    marker.write_text(wanted)
    return python


def _venv_info(python: Path) -> dict[str, str]:
    code = (
        "import json, sys, sysconfig; print(json.dumps({'purelib': sysconfig.get_paths()['purelib'], "
        "'libdir': sysconfig.get_config_var('LIBDIR'), 'ver': f'{sys.version_info[0]}.{sys.version_info[1]}'}))"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, timeout=60)
    return dict(json.loads(out.stdout))


# ------------------------------------------------------------------------------------------------ MLServer

MLSERVER_RUNTIME = '''\
"""ONNX Runtime as an MLServer custom runtime: one session, one intra-op thread, as onnxgate runs it."""
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        arrays = self._session.run(self._outputs, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(n, a) for n, a in zip(self._outputs, arrays)],
        )
'''


class MLServer(Server):
    name = "mlserver"

    @classmethod
    def start(cls, workdir: Path, model_file: Path, model: str = "demo", timeout: float = 180.0) -> MLServer:
        python = ensure_venv("mlserver", MLSERVER_PACKAGES, workdir / "mlserver-install.log")
        folder = workdir / "mlserver"
        shutil.rmtree(folder, ignore_errors=True)
        model_dir = folder / model
        model_dir.mkdir(parents=True)
        shutil.copyfile(model_file, model_dir / "model.onnx")
        (model_dir / "onnx_runtime.py").write_text(MLSERVER_RUNTIME)
        (model_dir / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": model,
                    "implementation": "onnx_runtime.OnnxRuntimeModel",
                    "parameters": {"uri": "./model.onnx", "version": "1"},
                }
            )
        )
        http, grpc_port, metrics = free_ports(3)
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "http_port": http,
                    "grpc_port": grpc_port,
                    "metrics_port": metrics,
                    "parallel_workers": 0,  # in-process inference: its fastest setting here
                    "debug": False,
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ONNXGATE_", "PYTHON"))}
        env["PYTHONPATH"] = str(model_dir)
        cmd = [str(python.parent / "mlserver"), "start", str(folder)]
        server = cls(_popen(cmd, workdir / "mlserver.log", env, folder), workdir / "mlserver.log", {})
        server.ports = {"http": http, "grpc": grpc_port, "metrics": metrics}
        _wait_ready(server, f"http://127.0.0.1:{http}/v2/models/{model}/ready", timeout)
        return server


# -------------------------------------------------------------------------------------------------- Triton

TRITON_CONFIG = """\
backend: "python"
max_batch_size: {max_batch}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {width} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {out} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
"""

TRITON_MODEL = '''\
"""Triton Python-backend model running the ONNX file with ONNX Runtime (one intra-op thread).

The dynamic batcher hands several requests at once: they are run as one batch and split again.
"""
import os
import sys

sys.path.insert(0, {purelib!r})  # the stub's interpreter does not know the virtual environment

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(os.path.abspath(__file__))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(here, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        (out,) = self.session.run(["OUTPUT0"], {{"INPUT0": batch}})
        responses, start = [], 0
        for a in arrays:
            n = a.shape[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", out[start:start + n])]))
            start += n
        return responses
'''


class Triton(Server):
    name = "triton"

    @classmethod
    def start(cls, workdir: Path, model_file: Path, model: str = "demo", timeout: float = 180.0) -> Triton:
        python = ensure_venv("triton", TRITON_PACKAGES, workdir / "triton-install.log")
        try:
            info = _venv_info(python)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise Unavailable(f"cannot inspect the Triton virtual environment: {exc}") from None
        package = Path(info["purelib"]) / "pytriton" / "tritonserver"
        binary = package / "bin" / "tritonserver"
        stub = package / "python_backend_stubs" / info["ver"] / "triton_python_backend_stub"
        libs = Path(info["purelib"]) / "nvidia_pytriton.libs"
        for needed in (binary, stub, package / "backends" / "python"):
            if not needed.exists():
                raise Unavailable(
                    f"nvidia-pytriton has no {needed.relative_to(package)} for Python {info['ver']}"
                )
        folder = workdir / "triton"
        shutil.rmtree(folder, ignore_errors=True)
        backends = folder / "backends"
        shutil.copytree(package / "backends" / "python", backends / "python")
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        version_dir = folder / "models" / model / "1"
        version_dir.mkdir(parents=True)
        shutil.copyfile(model_file, version_dir / "model.onnx")
        (version_dir / "model.py").write_text(TRITON_MODEL.format(purelib=info["purelib"]))
        (folder / "models" / model / "config.pbtxt").write_text(
            TRITON_CONFIG.format(max_batch=256, width=64, out=10)
        )
        http, grpc_port, metrics = free_ports(3)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ONNXGATE_", "PYTHON"))}
        # The embedded interpreter must be the one the virtual environment was made from.
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (info["libdir"], str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p
        )
        cmd = [
            str(binary), "--model-repository", str(folder / "models"), "--backend-directory", str(backends),
            "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
            "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics),
            "--allow-metrics", "false", "--allow-gpu-metrics", "false", "--log-verbose", "0",
        ]  # fmt: skip
        server = cls(_popen(cmd, workdir / "triton.log", env, folder), workdir / "triton.log", {})
        server.ports = {"http": http, "grpc": grpc_port, "metrics": metrics}
        _wait_ready(server, f"http://127.0.0.1:{http}/v2/models/{model}/ready", timeout)
        return server
