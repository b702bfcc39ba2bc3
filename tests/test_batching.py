"""Dynamic batching in-process: real ONNX Runtime sessions, real ModelVersions, one event loop per test.

Every batched answer is compared with the same request run unbatched (a version of the same file without
[dynamic_batching]), and the statistics say how the requests were grouped: execution_count and the
per-batch-size counts show which requests shared a run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from gateway.demo import IR_VERSION, OPSET, build_mlp, save_model, write_demo_repository
from runtime.config import load_model_config
from runtime.errors import InternalError, InvalidArgument, ModelLoadError
from runtime.model import Execution, ModelVersion, QueueFull

MLP_SIZES = (8, 32, 4)
LONG_DELAY_US = 10_000_000  # long enough that only size (or cancellation) can end a wait in these tests


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-batching")
    yield pool
    pool.shutdown(wait=True)


def _config(max_batch_size: int, batching: dict[str, Any] | None) -> str:
    text = f"max_batch_size = {max_batch_size}\n"
    if batching is not None:
        text += "[dynamic_batching]\n"
        for key, value in batching.items():
            text += f"{key} = {value}\n"
    return text


def _version(
    root: Path,
    name: str,
    model: onnx.ModelProto | Path,
    executor: ThreadPoolExecutor,
    max_batch_size: int = 16,
    batching: dict[str, Any] | None = None,
) -> ModelVersion:
    """A ModelVersion of `model` under root/name; `batching` is the [dynamic_batching] table (None: none)."""
    folder = root / name
    target = folder / "1" / "model.onnx"
    if isinstance(model, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(model.read_bytes())
    else:
        save_model(model, target)
    (folder / "config.toml").write_text(_config(max_batch_size, batching))
    return ModelVersion(name, 1, folder, load_model_config(folder), executor)


def _model(nodes: list[onnx.NodeProto], inputs: list[Any], outputs: list[Any], **kw: Any) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, **kw)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def _gather_model() -> onnx.ModelProto:
    """OUTPUT0[i] = DATA[INDEX[i]]: ONNX Runtime raises at run time for an index outside 0..3."""
    data = numpy_helper.from_array(np.array([10.0, 20.0, 30.0, 40.0], np.float32), "DATA")
    return _model(
        [helper.make_node("Gather", ["DATA", "INDEX"], ["OUTPUT0"], axis=0)],
        [helper.make_tensor_value_info("INDEX", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 1])],
        initializer=[data],
    )


def _ragged_model() -> onnx.ModelProto:
    """Identity on [batch, n] with n dynamic: requests of different n must never share a run."""
    return _model(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", "n"])],
    )


def _rows(rng: np.random.Generator, counts: Sequence[int], width: int = MLP_SIZES[0]) -> list[np.ndarray]:
    return [rng.standard_normal((n, width)).astype(np.float32) for n in counts]


async def _gather(calls: Sequence[Any]) -> list[Any]:
    """Run the calls concurrently; each result is an Execution or the exception it raised."""
    return list(await asyncio.gather(*calls, return_exceptions=True))


def _batch_counts(mv: ModelVersion) -> dict[int, int]:
    return {size: b.count for size, b in mv.stats.batches.items()}


def _assert_same(got: Execution, want: Execution) -> None:
    assert [n for n, _ in got.outputs] == [n for n, _ in want.outputs]
    for (_, a), (_, b) in zip(got.outputs, want.outputs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------ answers


def test_concurrent_requests_match_unbatched_runs(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    model = build_mlp(MLP_SIZES, 11)
    batched = _version(tmp_path, "b", model, executor, 16, {"max_queue_delay_us": 20_000})
    plain = _version(tmp_path, "p", model, executor, 16)
    rng = np.random.default_rng(1)
    counts = [int(n) for n in rng.integers(1, 4, 64)]
    xs = _rows(rng, counts)

    async def scenario() -> tuple[list[Any], list[Any]]:
        got = await _gather([batched.infer({"INPUT0": x}, None) for x in xs])
        want = await _gather([plain.infer({"INPUT0": x}, None) for x in xs])
        return got, want

    got, want = asyncio.run(scenario())
    for g, w, n in zip(got, want, counts, strict=True):
        _assert_same(g, w)
        assert n <= g.batch_size <= 16
    s = batched.stats
    assert s.success_count == 64 and s.fail_count == 0
    assert s.inference_count == sum(counts)
    assert s.execution_count < 64
    assert sum(b.count for b in s.batches.values()) == s.execution_count
    assert sum(size * b.count for size, b in s.batches.items()) == sum(counts)
    assert all(size <= 16 for size in s.batches)
    assert batched.pending == 0


def test_requested_outputs_are_honoured_per_request(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    write_demo_repository(tmp_path / "demo")
    simple = tmp_path / "demo" / "models" / "simple" / "1" / "model.onnx"
    batched = _version(tmp_path, "b", simple, executor, 32, {"max_queue_delay_us": 20_000})
    plain = _version(tmp_path, "p", simple, executor, 32)
    asks: list[list[str] | None] = [
        ["OUTPUT1"],
        ["OUTPUT1", "OUTPUT0"],
        None,
        ["OUTPUT0"],
        ["OUTPUT0", "OUTPUT0"],
    ]
    rng = np.random.default_rng(2)
    feeds = [
        {
            "INPUT0": rng.integers(-99, 99, (1, 16), np.int32),
            "INPUT1": rng.integers(-99, 99, (1, 16), np.int32),
        }
        for _ in range(20)
    ]

    async def scenario() -> tuple[list[Any], list[Any]]:
        got = await _gather([batched.infer(f, asks[i % len(asks)]) for i, f in enumerate(feeds)])
        want = await _gather([plain.infer(f, asks[i % len(asks)]) for i, f in enumerate(feeds)])
        return got, want

    got, want = asyncio.run(scenario())
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        ask = asks[i % len(asks)]
        assert [n for n, _ in g.outputs] == (ask or ["OUTPUT0", "OUTPUT1"])
        _assert_same(g, w)
    assert batched.stats.execution_count < len(feeds)


def test_bytes_keep_their_exact_value_in_mixed_batches(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    """A request with bytes that are not UTF-8 must not change how its batch-mates' strings are read."""
    write_demo_repository(tmp_path / "demo")
    identity = tmp_path / "demo" / "models" / "simple_identity" / "1" / "model.onnx"
    batched = _version(tmp_path, "b", identity, executor, 8, {"max_queue_delay_us": 20_000})
    values = [b"plain", b"\xff\xfe\x80", "h\u00e9llo".encode(), b"a\x00b"]
    xs = [np.array([[v]], dtype=object) for v in values]

    async def scenario() -> list[Any]:
        return await _gather([batched.infer({"INPUT0": x}, None) for x in xs])

    for x, execution in zip(xs, asyncio.run(scenario()), strict=True):
        np.testing.assert_array_equal(execution.outputs[0][1], x)
        assert execution.batch_size == len(xs)
    assert batched.stats.execution_count == 1


# ------------------------------------------------------------------------------------------ failures


def test_invalid_request_fails_alone(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    model = build_mlp(MLP_SIZES, 12)
    batched = _version(tmp_path, "b", model, executor, 16, {"max_queue_delay_us": 20_000})
    rng = np.random.default_rng(3)
    xs = _rows(rng, [1] * 12)
    xs.insert(5, rng.standard_normal((1, 7)).astype(np.float32))  # wrong width

    async def scenario() -> list[Any]:
        return await _gather([batched.infer({"INPUT0": x}, None) for x in xs])

    results = asyncio.run(scenario())
    assert isinstance(results[5], InvalidArgument)
    good = [r for i, r in enumerate(results) if i != 5]
    assert all(isinstance(r, Execution) for r in good)
    assert {r.batch_size for r in good} == {12}  # the bad one never joined the batch
    assert batched.stats.fail_count == 1 and batched.stats.success_count == 12


def test_run_time_failure_fails_alone(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    gather = _version(tmp_path, "g", _gather_model(), executor, 16, {"max_queue_delay_us": 20_000})
    indices = [0, 1, 2, 3, 99, 2, 1, 0]

    async def scenario() -> list[Any]:
        return await _gather([gather.infer({"INDEX": np.array([[i]], np.int64)}, None) for i in indices])

    results = asyncio.run(scenario())
    for i, r in zip(indices, results, strict=True):
        if i == 99:
            assert isinstance(r, InternalError)
            assert "failed to run" in r.message
        else:
            assert isinstance(r, Execution), r
            np.testing.assert_array_equal(r.outputs[0][1], [[10.0 * (i + 1)]])
    s = gather.stats
    assert s.fail_count == 1 and s.success_count == len(indices) - 1
    assert s.inference_count == len(indices) - 1
    assert gather.pending == 0


# ------------------------------------------------------------------------------------------ grouping


def test_different_non_batch_shapes_never_stack(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    ragged = _version(tmp_path, "r", _ragged_model(), executor, 16, {"max_queue_delay_us": 20_000})
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((1, 3 if i % 2 else 5)).astype(np.float32) for i in range(8)]

    async def scenario() -> list[Any]:
        return await _gather([ragged.infer({"INPUT0": x}, None) for x in xs])

    for x, r in zip(xs, asyncio.run(scenario()), strict=True):
        np.testing.assert_array_equal(r.outputs[0][1], x)
        assert r.batch_size == 4
    assert _batch_counts(ragged) == {4: 2}  # one run per width, not a failed mixed run rerun alone


def test_request_bigger_than_the_room_left_waits(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    batched = _version(tmp_path, "b", build_mlp(MLP_SIZES, 13), executor, 4, {"max_queue_delay_us": 20_000})
    xs = _rows(np.random.default_rng(5), [3, 3, 1])

    async def scenario() -> list[Any]:
        return await _gather([batched.infer({"INPUT0": x}, None) for x in xs])

    results = asyncio.run(scenario())
    assert [r.batch_size for r in results] == [3, 4, 4]  # FIFO: the second 3 waits, the 1 joins it
    assert _batch_counts(batched) == {3: 1, 4: 1}


def test_each_executor_batches_on_its_own(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    """The shadow lane passes its own executor: its traffic forms batches apart from the clients'."""
    batched = _version(tmp_path, "b", build_mlp(MLP_SIZES, 14), executor, 32, {"max_queue_delay_us": 20_000})
    xs = _rows(np.random.default_rng(6), [1] * 10)
    with ThreadPoolExecutor(max_workers=1) as shadow_pool:

        async def scenario() -> list[Any]:
            return await _gather(
                [
                    batched.infer({"INPUT0": x}, None, executor=shadow_pool if i % 2 else None)
                    for i, x in enumerate(xs)
                ]
            )

        results = asyncio.run(scenario())
    assert [r.batch_size for r in results] == [5] * 10
    assert _batch_counts(batched) == {5: 2}


# ------------------------------------------------------------------------------------------ timing, queue


def test_lone_request_is_answered_after_the_delay(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    batched = _version(tmp_path, "b", build_mlp(MLP_SIZES, 15), executor, 16, {"max_queue_delay_us": 2000})
    x = _rows(np.random.default_rng(7), [2])[0]

    async def scenario() -> Execution:
        return await asyncio.wait_for(batched.infer({"INPUT0": x}, None), timeout=30)

    result = asyncio.run(scenario())
    assert result.batch_size == 2 and result.outputs[0][1].shape == (2, MLP_SIZES[-1])
    assert batched.stats.execution_count == 1


def test_preferred_batch_size_leaves_without_waiting(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    batching = {"max_queue_delay_us": LONG_DELAY_US, "preferred_batch_sizes": [4]}
    batched = _version(tmp_path, "b", build_mlp(MLP_SIZES, 16), executor, 16, batching)
    xs = _rows(np.random.default_rng(8), [1, 2, 1])

    async def scenario() -> list[Any]:
        return await asyncio.wait_for(_gather([batched.infer({"INPUT0": x}, None) for x in xs]), timeout=30)

    assert [r.batch_size for r in asyncio.run(scenario())] == [4, 4, 4]


def test_queue_bound_refuses_and_cancelled_requests_leave(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    batching = {"max_queue_delay_us": LONG_DELAY_US, "max_queue_size": 2}
    batched = _version(tmp_path, "b", build_mlp(MLP_SIZES, 17), executor, 16, batching)
    x = _rows(np.random.default_rng(9), [1])[0]

    async def scenario() -> None:
        waiting = [asyncio.create_task(batched.infer({"INPUT0": x}, None)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull) as refused:
            await batched.infer({"INPUT0": x}, None)
        assert refused.value.retry_after_s > 0
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        batcher = batched._batcher(None)
        assert batcher.waiting == 0 and batcher.running == 0
        assert batched.pending == 0

    asyncio.run(scenario())
    assert batched.stats.execution_count == 0  # the cancelled requests never ran


def test_request_cancelled_in_a_running_batch_is_dropped(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    batched = _version(tmp_path, "b", build_mlp(MLP_SIZES, 21), executor, 16, {"max_queue_delay_us": 0})
    xs = _rows(np.random.default_rng(11), [1] * 4)
    gate = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(gate.wait)  # the batch queues behind this until the gate opens

        async def scenario() -> list[Any]:
            tasks = [asyncio.create_task(batched.infer({"INPUT0": x}, None, executor=pool)) for x in xs]
            batcher = batched._batcher(pool)
            while batcher.running == 0:
                await asyncio.sleep(0.001)
            tasks[1].cancel()
            gate.set()
            return await _gather(tasks)

        results = asyncio.run(scenario())
    assert isinstance(results[1], asyncio.CancelledError)
    assert [r.batch_size for i, r in enumerate(results) if i != 1] == [4, 4, 4]
    assert batched.stats.success_count == 3 and batched.stats.fail_count == 1
    assert batched.stats.execution_count == 1 and batched.pending == 0


# ------------------------------------------------------------------------------------------ config


def test_versions_without_dynamic_batching_run_alone(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    plain = _version(tmp_path, "p", build_mlp(MLP_SIZES, 18), executor, 16)
    unbatchable = _version(tmp_path, "u", build_mlp(MLP_SIZES, 18), executor, 0, {"max_queue_delay_us": 100})
    assert plain.batching is None and unbatchable.batching is None
    xs = _rows(np.random.default_rng(10), [1] * 6)

    async def scenario() -> list[Any]:
        return await _gather([plain.infer({"INPUT0": x}, None) for x in xs])

    assert [r.batch_size for r in asyncio.run(scenario())] == [1] * 6
    assert plain.stats.execution_count == 6 and not plain._batchers


def test_batching_config_is_read_and_checked(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    batching = {"max_queue_delay_us": 300, "preferred_batch_sizes": [8, 4], "max_concurrent_batches": 3}
    mv = _version(tmp_path, "b", build_mlp(MLP_SIZES, 19), executor, 16, batching)
    assert mv.batching is not None
    assert mv.batching.preferred_batch_sizes == (4, 8)
    assert mv.batching.max_concurrent_batches == 3
    with pytest.raises(ModelLoadError, match="exceed max_batch_size"):
        _version(tmp_path, "c", build_mlp(MLP_SIZES, 19), executor, 4, {"preferred_batch_sizes": [8]})


# ------------------------------------------------------------------------------------------ property


@pytest.fixture(scope="module")
def property_versions(
    tmp_path_factory: pytest.TempPathFactory, executor: ThreadPoolExecutor
) -> tuple[ModelVersion, ModelVersion]:
    root = tmp_path_factory.mktemp("batching-property")
    model = build_mlp(MLP_SIZES, 20)
    batching = {"max_queue_delay_us": 1000, "max_concurrent_batches": 1}
    return _version(root, "b", model, executor, 8, batching), _version(root, "p", model, executor, 8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    counts=st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=24), seed=st.integers(0, 99)
)
def test_any_row_counts_give_unbatched_answers(
    property_versions: tuple[ModelVersion, ModelVersion], counts: list[int], seed: int
) -> None:
    batched, plain = property_versions
    xs = _rows(np.random.default_rng(seed), counts)
    before_rows, before_runs = batched.stats.inference_count, batched.stats.execution_count
    before_batches = _batch_counts(batched)

    async def scenario() -> tuple[list[Any], list[Any]]:
        got = await _gather([batched.infer({"INPUT0": x}, None) for x in xs])
        want = await _gather([plain.infer({"INPUT0": x}, None) for x in xs])
        return got, want

    got, want = asyncio.run(scenario())
    for g, w, n in zip(got, want, counts, strict=True):
        _assert_same(g, w)
        assert n <= g.batch_size <= 8
    assert batched.stats.inference_count - before_rows == sum(counts)
    runs = batched.stats.execution_count - before_runs
    assert runs <= len(counts)
    new = {k: v - before_batches.get(k, 0) for k, v in _batch_counts(batched).items()}
    assert sum(k * v for k, v in new.items()) == sum(counts)
    assert sum(new.values()) == runs
