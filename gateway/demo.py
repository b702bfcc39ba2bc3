"""A small, deterministic model repository so the gateway can be demoed and tested without downloads.

Every model is built in code from fixed seeds, so two runs write byte-identical files and a test can
compare them; the names and tensor layouts mirror Triton's example models (``simple``, ``simple_string``
and friends) so the official clients' examples run against the gateway unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import tomli_w
from onnx import TensorProto, helper, numpy_helper

# Opset 17 and IR 8 are old enough for every onnxruntime the project supports and new enough for Gemm/Cast.
OPSET = 17
IR_VERSION = 8
# A symbolic first dimension is what makes the batch dynamic (-1) to the runtime and to clients.
BATCH = "batch"
MAX_BATCH_SIZE = 256

DEMO_SIZES = (64, 256, 256, 10)
# How far each demo version drifts from v1: v2 stays close (a plausible retrain), v3 drifts further so a
# shadow comparison finds real disagreements.
DEMO_PERTURBATION = {1: 0.0, 2: 0.05, 3: 0.3}

# Written literally rather than via tomli_w so the operator sees the same inline-table form as the docs.
GATEWAY_TOML = """\
model_repository = "models"
state_dir = "state"

[endpoints.demo]
champion = { model = "demo", version = 1 }
challenger = { model = "demo", version = 2, weight = 0.2 }
shadow = { model = "demo", version = 3, sample_rate = 1.0 }
"""

Layers = list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]


def _io(name: str, elem_type: int, width: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, [BATCH, width])


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxgate-demo"
    )
    # make_model stamps the newest IR the onnx package knows, which an older onnxruntime may refuse.
    model.ir_version = IR_VERSION
    return model


def _he_layers(sizes: Sequence[int], seed: int) -> Layers:
    """He-scaled weights keep activations O(1) through the Relus, so logits and their argmax vary."""
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in), rng.standard_normal(fan_out) * 0.1)
        for fan_in, fan_out in itertools.pairwise(sizes)
    ]


def _mlp_from_layers(layers: Layers, dtype: npt.DTypeLike, name: str) -> onnx.ModelProto:
    np_dtype = np.dtype(dtype)
    elem_type = helper.np_dtype_to_tensor_dtype(np_dtype)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = "INPUT0"
    for i, (weight, bias) in enumerate(layers):
        last = i == len(layers) - 1
        w_name, b_name = f"W{i}", f"B{i}"
        initializers.append(numpy_helper.from_array(weight.astype(np_dtype), w_name))
        initializers.append(numpy_helper.from_array(bias.astype(np_dtype), b_name))
        gemm_out = "OUTPUT0" if last else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [current, w_name, b_name], [gemm_out], name=f"gemm{i}"))
        if not last:
            current = f"relu{i}"
            nodes.append(helper.make_node("Relu", [gemm_out], [current], name=current))
    graph = helper.make_graph(
        nodes,
        name,
        [_io("INPUT0", elem_type, layers[0][0].shape[0])],
        [_io("OUTPUT0", elem_type, layers[-1][0].shape[1])],
        initializer=initializers,
    )
    return _model(graph)


def build_mlp(sizes: Sequence[int], seed: int, dtype: npt.DTypeLike = np.float32) -> onnx.ModelProto:
    """A Gemm/Relu MLP with dynamic batch: realistic enough compute for benchmarks, and fully reproducible."""
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {list(sizes)}")
    return _mlp_from_layers(_he_layers(sizes, seed), dtype, f"mlp_{seed}")


def _demo_mlp(version: int) -> onnx.ModelProto:
    """Versions share v1's weights plus seeded noise, so they differ the way successive retrains do."""
    base = _he_layers(DEMO_SIZES, 1001)
    scale = DEMO_PERTURBATION[version]
    if scale == 0.0:
        return build_mlp(DEMO_SIZES, 1000 + version)
    noise = _he_layers(DEMO_SIZES, 1000 + version)
    layers = [(w + scale * nw, b + scale * nb) for (w, b), (nw, nb) in zip(base, noise, strict=True)]
    return _mlp_from_layers(layers, np.float32, f"demo_v{version}")


def _add_sub(elem_type: int, name: str, compute_type: int | None = None) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, like Triton's ``simple`` family.

    ``compute_type`` routes the arithmetic through a Cast: strings of decimal digits are not numeric, and
    int8 Add/Sub kernels are not registered in every onnxruntime build, while int32 ones always are. The
    Cast back to int8 wraps, so overflow behaves like native int8 arithmetic.
    """
    nodes: list[onnx.NodeProto] = []
    a, b = "INPUT0", "INPUT1"
    if compute_type is not None:
        nodes += [helper.make_node("Cast", [x], [f"{x}_n"], to=compute_type) for x in (a, b)]
        a, b = f"{a}_n", f"{b}_n"
    for out, op in (("OUTPUT0", "Add"), ("OUTPUT1", "Sub")):
        result = out if compute_type is None else f"{out}_n"
        nodes.append(helper.make_node(op, [a, b], [result]))
        if compute_type is not None:
            nodes.append(helper.make_node("Cast", [result], [out], to=elem_type))
    graph = helper.make_graph(
        nodes,
        name,
        [_io("INPUT0", elem_type, 16), _io("INPUT1", elem_type, 16)],
        [_io("OUTPUT0", elem_type, 16), _io("OUTPUT1", elem_type, 16)],
    )
    return _model(graph)


def _identity(elem_type: int, width: int, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        name,
        [_io("INPUT0", elem_type, width)],
        [_io("OUTPUT0", elem_type, width)],
    )
    return _model(graph)


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Check before writing, so a malformed graph fails here rather than at the gateway's load time."""
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def _write_config(model_dir: Path, config: dict[str, object]) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")


def write_demo_repository(root: Path) -> Path:
    """Write ``root/models`` and ``root/gateway.toml``; safe to rerun, it overwrites with identical bytes."""
    models = root / "models"
    repository: dict[str, dict[int, onnx.ModelProto]] = {
        "demo": {v: _demo_mlp(v) for v in DEMO_PERTURBATION},
        "simple": {1: _add_sub(TensorProto.INT32, "simple")},
        "simple_int8": {1: _add_sub(TensorProto.INT8, "simple_int8", compute_type=TensorProto.INT32)},
        "simple_string": {1: _add_sub(TensorProto.STRING, "simple_string", compute_type=TensorProto.INT32)},
        "simple_identity": {1: _identity(TensorProto.STRING, 1, "simple_identity")},
        "identity_fp32": {1: _identity(TensorProto.FLOAT, 16, "identity_fp32")},
    }
    for name, versions in repository.items():
        for version, model in versions.items():
            save_model(model, models / name / str(version) / "model.onnx")
        config: dict[str, object] = {"max_batch_size": MAX_BATCH_SIZE}
        if len(versions) > 1:
            # Serve every version: the demo endpoint routes to v1, v2 and v3 at once.
            config["version_policy"] = {"policy": "all"}
        _write_config(models / name, config)
    config_path = root / "gateway.toml"
    config_path.write_text(GATEWAY_TOML, encoding="utf-8")
    return config_path
