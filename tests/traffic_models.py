"""Models for traffic tests: a shadow far slower than the champion, and one that fails at run time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from gateway.demo import build_mlp, save_model


def write_slow_model(models: Path, name: str = "slow") -> None:
    """Same interface as `demo` (FP32 [-1,64] -> [-1,10]) but about 100x the arithmetic."""
    save_model(build_mlp([64, 2048, 2048, 10], seed=7), models / name / "1" / "model.onnx")


def write_failing_model(models: Path, name: str = "failing") -> None:
    """FP32 [-1,64] -> Reshape to [-1,7]: 64 values per row never divide by 7, so every run raises."""
    x = helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 7])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], np.array([-1, 7], dtype=np.int64))
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["INPUT0", "shape"], ["OUTPUT0"])], "failing", [x], [y], [shape]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, models / name / "1" / "model.onnx")
    # Its warm-up would fail too; it must load so that its failures happen where the test wants them.
    (models / name / "config.toml").write_text("[warmup]\nenabled = false\n")
