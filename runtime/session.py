"""ONNX Runtime sessions and execution providers.

Why a module of its own: choosing a provider is where GPU deployments go wrong silently. ONNX Runtime
quietly falls back to the CPU when a provider is missing or fails to initialise; we refuse instead, naming
the provider asked for and those available, unless the model's config allows ``fallback = "cpu"``.

It is also where a model file is vetted before ONNX Runtime opens it: a tensor whose external data lives
outside the model file's own folder (an absolute path, ``..``, a link that resolves elsewhere) is refused,
so a model file cannot make the gateway read arbitrary files.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

import onnxruntime as ort

from runtime.config import ModelConfig
from runtime.errors import ModelLoadError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("onnxgate.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ProviderList = list[str | tuple[str, dict[str, Any]]]


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def choose_providers(config: ModelConfig, available: list[str] | None = None) -> ProviderList:
    """The provider list for a model, or ModelLoadError when the device cannot be honoured."""
    available = available_providers() if available is None else available
    device_id = config.cuda_device_id
    if device_id is None:
        return [CPU]
    wanted: list[tuple[str, dict[str, Any]]] = []
    if config.tensorrt:
        wanted.append((TENSORRT, {"device_id": device_id}))
    wanted.append((CUDA, {"device_id": device_id}))
    missing = [name for name, _ in wanted if name not in available]
    if not missing:
        return [*wanted, CPU]
    if config.fallback == "cpu":
        log.warning(
            "model %s asked for %s (device %s) but this onnxruntime has only %s; running on the CPU "
            'because the config allows fallback = "cpu"',
            config.name,
            ", ".join(missing),
            config.device,
            ", ".join(available),
        )
        return [CPU]
    raise ModelLoadError(
        f"device '{config.device}' needs {', '.join(missing)}, which this onnxruntime does not provide "
        f"(available providers: {', '.join(available)}); install onnxruntime-gpu, or set "
        f'fallback = "cpu" in the model\'s config.toml to run it on the CPU'
    )


_LOCATION_KEY = b"location"  # the external_data key that names a tensor's data file


def _may_use_external_data(path: Path) -> bool:
    """False when the file cannot reference external data: the key 'location' appears nowhere in its bytes.

    A cheap scan (mmap, no parse) spares the full protobuf parse for the usual self-contained model.
    """
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(_LOCATION_KEY) != -1


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)
    for info in model.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)


def external_location_problem(location: str, folder: Path) -> str | None:
    """Why `location` (a tensor's external data file) is not inside `folder`, or None when it is."""
    if not location or "\x00" in location:
        return "an empty or invalid file name"
    posix = PurePosixPath(location.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(location).drive or PureWindowsPath(location).is_absolute():
        return "an absolute path"
    if ".." in posix.parts:
        return "a path that climbs out with '..'"
    base = folder.resolve()
    if not (folder / posix).resolve().is_relative_to(base):
        return "a link that resolves outside the folder"
    return None


def check_external_data(path: Path) -> None:
    """ModelLoadError when a tensor of the model at `path` keeps its data outside the file's own folder."""
    if not _may_use_external_data(path):
        return
    import onnx  # late: only models that may reference external data pay for importing and parsing

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelLoadError(f"model file {path} is not a valid ONNX model: {type(exc).__name__}") from None
    folder = path.parent
    for tensor in _model_tensors(model):
        for entry in tensor.external_data:
            if entry.key != "location":
                continue
            why = external_location_problem(entry.value, folder)
            if why is not None:
                raise ModelLoadError(
                    f"model file {path}: tensor {tensor.name!r} keeps its data in {entry.value!r}, "
                    f"{why}; external data files must be inside the model's version folder {folder}"
                )


def create_session(path: Path, config: ModelConfig) -> ort.InferenceSession:
    """Open `path` with the providers the config asks for; errors become ModelLoadError with the reason."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    check_external_data(path)
    providers = choose_providers(config)
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are not ours to print per model
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises a zoo of types (Fail, InvalidGraph, RuntimeException...)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"model file {path} could not be loaded by onnxruntime: {message}") from None
    wanted = {p if isinstance(p, str) else p[0] for p in providers} - {CPU}
    active = set(session.get_providers())
    if wanted and not wanted <= active:
        raise ModelLoadError(
            f"device '{config.device}' asked for {', '.join(sorted(wanted))} but onnxruntime could only "
            f"start {', '.join(session.get_providers())} (is the GPU there and the CUDA runtime installed?)"
        )
    return session
