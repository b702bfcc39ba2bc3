"""Models for overload and fault tests, built with onnx.helper: one that never ends and one that takes long.

Both have the demo's input (FP32 [-1, 64]) and pass it through a Loop whose body does nothing, so their run
time is only the trip count (about half a microsecond per iteration): 10**12 iterations is days, i.e. a
model that hangs, and ONNX Runtime checks RunOptions.terminate between the iterations, so a run of either
can be stopped. Their warm-up is disabled: a warm-up run would never end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from gateway.demo import IR_VERSION, OPSET, save_model

HANG_ITERATIONS = 10**12
# About 1 to 4 s depending on the machine: long enough to watch a draining gateway, well inside its grace.
LONG_ITERATIONS = 4 * 10**6


def write_loop_model(models: Path, name: str, iterations: int, config: str = "") -> None:
    """`name` version 1: OUTPUT0 = INPUT0 after `iterations` empty Loop iterations (warm-up disabled)."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["x_in"], ["x_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "C", "INPUT0"], ["OUTPUT0"], body=body)],
        name,
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 64])],
        [
            numpy_helper.from_array(np.array(iterations, np.int64), "M"),
            numpy_helper.from_array(np.array(True), "C"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    save_model(model, models / name / "1" / "model.onnx")
    # `config` holds top-level keys: it must come before the [warmup] table.
    (models / name / "config.toml").write_text(config + "\n[warmup]\nenabled = false\n")


def write_hung_model(models: Path, name: str = "hang", config: str = "") -> None:
    write_loop_model(models, name, HANG_ITERATIONS, config)


def write_long_model(models: Path, name: str = "long", config: str = "") -> None:
    write_loop_model(models, name, LONG_ITERATIONS, config)
