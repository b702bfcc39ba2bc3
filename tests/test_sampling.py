"""Payload sampling on real files: records round-trip through the sink, the files and both exports; served
and shadow answers are kept together; rotation and retention hold their limits; redacted data never reaches
disk or memory; a stalled or failing disk drops and counts records instead of slowing requests."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.observability import sample_files
from gateway.observability.sampling import SampleRecord, SampleSink, SamplingPolicy, SinkSettings, Tensor
from gateway.routing.table import key_fraction
from gateway.samples_cli import add_samples_parser, run_samples
from runtime.datatypes import BY_NAME, from_numpy

ALL_TYPES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([0, 7, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([[1, 2], [3, 4294967295]], dtype=np.uint32),
    "UINT64": np.array([18446744073709551615, 0], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-32768, 32767], dtype=np.int16),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "INT64": np.array([[-(2**63)], [2**63 - 1]], dtype=np.int64),
    "FP16": np.array([0.5, -2.0, 65504.0, np.inf, np.nan], dtype=np.float16),
    "FP32": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "FP64": np.array([np.pi, -0.0, 1e-300, np.nan]),
    "BYTES": np.array([b"plain", b"nul\x00inside", b"\xff\xfenot-utf8", b""], dtype=object).reshape(2, 2),
}


def tensors(arrays: dict[str, np.ndarray], prefix: str) -> list[Tensor]:
    return [(f"{prefix}{dt}", dt, tuple(a.shape), a) for dt, a in arrays.items()]


def record(request_id: str, role: str = "champion", **changes: object) -> SampleRecord:
    r = SampleRecord(
        time=time.time(),
        request_id=request_id,
        endpoint="fraud",
        model="fraud_model",
        version="1",
        role=role,
        routing_key=None,
        inputs=[("x", "FP32", (1, 4), np.arange(4, dtype=np.float32).reshape(1, 4))],
        outputs=[("y", "FP32", (1,), np.array([0.25], dtype=np.float32))],
        latency_us=1234,
        status="OK",
    )
    for key, value in changes.items():
        setattr(r, key, value)
    return r


MakeSink = Callable[..., SampleSink]


@pytest.fixture
def make_sink(tmp_path: Path) -> Iterator[MakeSink]:
    sinks: list[SampleSink] = []

    def make(directory: Path | None = None, **kw: object) -> SampleSink:
        sink = SampleSink(SinkSettings(directory or tmp_path / "samples", **kw))  # type: ignore[arg-type]
        sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close(timeout=5)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object and list(got.ravel()) == list(want.ravel())
    else:
        assert got.dtype == want.dtype.newbyteorder("<")
        assert got.tobytes() == want.tobytes()  # bit for bit: NaN, -0.0 and inf included


# ------------------------------------------------------------------------------------------ round trip


def test_every_datatype_round_trips_through_files_and_both_exports(
    make_sink: MakeSink, tmp_path: Path
) -> None:
    sink = make_sink()
    sent, answered = tensors(ALL_TYPES, "in_"), tensors(ALL_TYPES, "out_")
    sink.offer(
        record("r1", inputs=sent, outputs=answered, routing_key="user-7", status="INTERNAL", error="boom")
    )
    sink.offer(record("r1", role="shadow", inputs=sent, outputs=answered))
    assert sink.flush()
    assert sink.written == 2

    stored = list(sample_files.iter_records(tmp_path / "samples"))
    assert [(r["request_id"], r["role"]) for r in stored] == [("r1", "champion"), ("r1", "shadow")]
    assert stored[0]["routing_key"] == "user-7" and stored[0]["status"] == "INTERNAL"
    assert stored[0]["error"] == "boom" and stored[0]["latency_us"] == 1234
    arrays = sample_files.to_arrays(stored[0])
    for dt, want in ALL_TYPES.items():
        assert_same(arrays["inputs"][f"in_{dt}"], want)
        assert_same(arrays["outputs"][f"out_{dt}"], want)

    jsonl = tmp_path / "out.jsonl"
    assert sample_files.export_jsonl(tmp_path / "samples", jsonl) == 2
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for line in lines:
        got = {t["name"]: sample_files.array_from_json(t) for t in line["inputs"] + line["outputs"]}
        for dt, want in ALL_TYPES.items():
            assert_same(got[f"in_{dt}"], want)
            assert_same(got[f"out_{dt}"], want)

    npz = tmp_path / "out.npz"
    assert sample_files.export_npz(tmp_path / "samples", npz) == 2
    d = np.load(npz, allow_pickle=True)
    assert list(d["request_id"]) == ["r1", "r1"] and list(d["role"]) == ["champion", "shadow"]
    assert list(d["pair_served"]) == [0] and list(d["pair_shadow"]) == [1]
    for dt, want in ALL_TYPES.items():
        assert d[f"output__out_{dt}"].shape == (2, *want.shape)
        for i in range(2):
            assert_same(np.asarray(d[f"input__in_{dt}"][i]), want)
            assert_same(np.asarray(d[f"output__out_{dt}"][d["pair_shadow"][0]]), want)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(set(ALL_TYPES) - {"BYTES"})).flatmap(
        lambda dt: hnp.arrays(BY_NAME[dt].numpy, hnp.array_shapes(min_dims=0, max_side=5))
    )
)
def test_encode_decode_is_bit_exact(array: np.ndarray) -> None:
    stored = sample_files.encode_tensor("t", from_numpy(array.dtype).name, array.shape, array)
    assert_same(sample_files.decode_tensor(stored), array)
    # JSON has one NaN: its sign and payload bits are lost, every other value survives exactly.
    from_json = sample_files.array_from_json(json.loads(json.dumps(sample_files.tensor_json(stored))))
    assert from_json.dtype == array.dtype.newbyteorder("<")
    np.testing.assert_array_equal(from_json, array)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=20), min_size=1, max_size=6))
def test_bytes_elements_round_trip(items: list[bytes]) -> None:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    stored = sample_files.encode_tensor("t", "BYTES", array.shape, array)
    assert_same(sample_files.decode_tensor(stored), array)
    assert_same(sample_files.array_from_json(json.loads(json.dumps(sample_files.tensor_json(stored)))), array)


# ------------------------------------------------------------------------------------------ decisions


def test_served_and_shadow_answers_are_kept_or_dropped_together(make_sink: MakeSink, tmp_path: Path) -> None:
    policy, other_process = SamplingPolicy(rate=0.3), SamplingPolicy(rate=0.3)
    ids = [f"req-{i}" for i in range(20_000)]
    kept = [rid for rid in ids if policy.decide(rid)]
    assert all(other_process.decide(rid) for rid in kept)  # stable: any worker decides alike
    assert abs(len(kept) / len(ids) - 0.3) < 0.02
    # Independent of routing: the same string used as a routing key splits sampled ids like all ids.
    low = [rid for rid in ids if key_fraction(rid) < 0.3]
    assert abs(sum(policy.decide(rid) for rid in low) / len(low) - 0.3) < 0.03

    sink = make_sink()
    for rid in ids[:3000]:
        if policy.decide(rid):  # the served answer
            sink.offer(record(rid))
        if policy.decide(rid):  # its shadow, decided separately later
            sink.offer(record(rid, role="shadow", version="2"))
    assert sink.flush()
    roles: dict[str, set[str]] = {}
    for r in sample_files.iter_records(tmp_path / "samples"):
        roles.setdefault(r["request_id"], set()).add(r["role"])
    assert roles and all(v == {"champion", "shadow"} for v in roles.values())
    assert len(roles) == sum(policy.decide(rid) for rid in ids[:3000])


def test_policy_edges() -> None:
    assert not SamplingPolicy(rate=0.0).decide("a") and SamplingPolicy(rate=1.0).decide("a")
    assert SamplingPolicy(rate=0.0).keep("a", failed=True)
    assert not SamplingPolicy(rate=0.0, errors=False).keep("a", failed=True)
    draws = [SamplingPolicy(rate=0.5).decide("") for _ in range(2000)]  # no id: a random draw
    assert 0.4 < sum(draws) / len(draws) < 0.6
    with pytest.raises(ValueError):
        SamplingPolicy(rate=1.5)


# ------------------------------------------------------------------------------------------ rotation, retention


def big_record(i: int, size: int = 200) -> SampleRecord:
    return record(f"req-{i:05d}", inputs=[("x", "UINT8", (size,), np.full(size, i % 256, dtype=np.uint8))])


def test_rotation_by_size_keeps_each_file_within_one_record_of_the_limit(
    make_sink: MakeSink, tmp_path: Path
) -> None:
    sink = make_sink(max_file_bytes=4096)
    for i in range(300):
        sink.offer(big_record(i))
    assert sink.flush()
    files = sample_files.list_files(tmp_path / "samples")
    one_record = max(len(msgpack.packb(r)) for r in sample_files.iter_file(files[0].path))
    assert len(files) >= 10
    assert all(f.size <= 4096 + one_record for f in files)
    ids = [r["request_id"] for r in sample_files.iter_records(tmp_path / "samples")]
    assert ids == [f"req-{i:05d}" for i in range(300)]


def test_rotation_by_age(make_sink: MakeSink, tmp_path: Path) -> None:
    sink = make_sink(max_file_age_s=0.2)
    for i in range(4):
        sink.offer(big_record(i))
        assert sink.flush()
        time.sleep(0.35)
    files = sample_files.list_files(tmp_path / "samples")
    assert len(files) >= 3
    assert sum(1 for _ in sample_files.iter_records(tmp_path / "samples")) == 4


def test_retention_by_bytes_keeps_the_newest_records(make_sink: MakeSink, tmp_path: Path) -> None:
    limit, file_bytes = 12_000, 3000
    sink = make_sink(max_file_bytes=file_bytes, retention_bytes=limit)
    for i in range(400):
        sink.offer(big_record(i))
        if i % 50 == 0:
            assert sink.flush()
            assert (
                sum(f.size for f in sample_files.list_files(tmp_path / "samples")) <= limit + file_bytes + 400
            )
    assert sink.close()  # the last rotation applies retention to every file
    files = sample_files.list_files(tmp_path / "samples")
    assert 0 < sum(f.size for f in files) <= limit
    ids = [int(r["request_id"][4:]) for r in sample_files.iter_records(tmp_path / "samples")]
    assert ids == list(range(400 - len(ids), 400))  # what is left is the newest, without gaps


def test_retention_by_age_deletes_old_files(make_sink: MakeSink, tmp_path: Path) -> None:
    sink = make_sink(max_file_age_s=0.1, retention_age_s=0.5)
    for i in range(5):
        sink.offer(big_record(i))
    assert sink.flush()
    time.sleep(1.3)  # the old files expire; the writer's periodic retention removes them
    sink.offer(big_record(99))
    assert sink.flush()
    ids = [r["request_id"] for r in sample_files.iter_records(tmp_path / "samples")]
    assert ids == ["req-00099"]


def test_other_prefixes_and_foreign_files_are_left_alone(make_sink: MakeSink, tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    other = make_sink(folder, file_prefix="samples-w1")
    other.offer(big_record(1))
    assert other.flush()
    (folder / "notes.txt").write_text("keep me")
    sink = make_sink(folder, file_prefix="samples-w0", max_file_bytes=500, retention_bytes=600)
    for i in range(20):
        sink.offer(big_record(i))
    assert sink.close()
    assert (folder / "notes.txt").exists()
    assert len(sample_files.list_files(folder, "samples-w1")) == 1
    assert sum(f.size for f in sample_files.list_files(folder, "samples-w0")) <= 600


# ------------------------------------------------------------------------------------------ redaction


def test_redacted_inputs_never_reach_disk_or_memory(make_sink: MakeSink, tmp_path: Path) -> None:
    marker = b"SSN-7c1e9a-DO-NOT-STORE"
    sink = make_sink()
    for i, role in enumerate(["champion", "shadow"] * 5):
        inputs: list[Tensor] = [
            ("ssn", "BYTES", (1,), np.array([marker], dtype=object)),
            ("card", "UINT8", (len(marker),), np.frombuffer(marker, dtype=np.uint8)),
            ("amount", "FP32", (1,), np.array([12.5], dtype=np.float32)),
        ]
        sink.offer(record(f"r{i // 2}", role=role, inputs=inputs), frozenset({"ssn", "card"}))
    assert sink.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "samples").iterdir())
    assert raw and marker not in raw
    stored = list(sample_files.iter_records(tmp_path / "samples"))
    assert len(stored) == 10
    arrays = sample_files.to_arrays(stored[0])
    assert sorted(arrays["redacted"]) == ["card", "ssn"] and list(arrays["inputs"]) == ["amount"]
    recent = sink.recent("fraud")
    assert len(recent) == 10 and marker.decode() not in json.dumps(recent)
    assert {"name": "ssn", "redacted": True} in recent[0]["inputs"]
    assert recent[0]["inputs"][2] == {"name": "amount", "datatype": "FP32", "shape": [1], "data": [12.5]}
    assert [r["role"] for r in sink.recent("fraud", role="shadow", limit=3)] == ["shadow"] * 3
    assert sink.recent("fraud", version="9") == [] and sink.recent("other") == []


# ------------------------------------------------------------------------------------------ stalls and failures


def test_stalled_writer_drops_records_and_never_blocks(make_sink: MakeSink, tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    # FIFOs without a reader where the writer's first file will be: opening one blocks the writer thread.
    now = int(time.time())
    fifos = [folder / sample_files.file_name("samples", t, 0) for t in range(now - 2, now + 120)]
    for path in fifos:
        os.mkfifo(path)
    sink = make_sink(folder, queue_size=1000)
    offered, slowest = 50_000, 0.0
    for i in range(offered):
        started = time.perf_counter()
        sink.offer(big_record(i, 16))
        slowest = max(slowest, time.perf_counter() - started)
    print(f"slowest offer() with a stalled writer: {slowest * 1e6:.0f} us")
    assert sink.dropped > 0
    assert sink.written + sink.dropped + sink.failed_writes + sink.queued == offered
    assert not sink.flush(timeout=0.2)  # the writer is stuck in open()

    for path in fifos:  # a reader comes and goes: the writer's open returns, its writes to the pipe fail
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    assert sink.flush(timeout=10)
    assert sink.queued == 0
    assert sink.written + sink.dropped + sink.failed_writes == offered


def test_write_errors_are_counted_and_the_writer_survives(make_sink: MakeSink, tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    sink = make_sink(folder, max_file_bytes=1)  # every record opens a new file
    sink.offer(big_record(0))
    assert sink.flush() and sink.written == 1
    shutil.rmtree(folder)
    folder.write_text("not a folder any more")  # open() now fails: ENOTDIR / EEXIST
    for i in range(1, 6):
        sink.offer(big_record(i))
    assert sink.flush()
    assert sink.failed_writes == 5 and sink.written == 1
    folder.unlink()
    sink.offer(big_record(6))
    assert sink.flush()  # the same writer thread carries on into a recreated folder
    assert sink.written == 2
    assert [r["request_id"] for r in sample_files.iter_records(folder)] == ["req-00006"]


def test_full_disk_drops_records_and_leaves_readable_files(make_sink: MakeSink, tmp_path: Path) -> None:
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.skip("mounting a tiny tmpfs needs privileges this runner lacks")
    try:
        sink = make_sink(mount)
        for i in range(60):
            sink.offer(big_record(i, 16_384))
            if i % 10 == 9:
                assert sink.flush()
        assert sink.failed_writes > 0 and sink.written > 0
        assert sink.written + sink.failed_writes == 60
        assert sum(1 for _ in sample_files.iter_records(mount)) == sink.written  # cut back to whole records
        for f in sample_files.list_files(mount):
            f.path.unlink()
        sink.offer(big_record(100, 16_384))
        assert sink.flush() and sink.written + sink.failed_writes == 61
        assert sink.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ------------------------------------------------------------------------------------------ CLI


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="onnxgate")
    add_samples_parser(parser.add_subparsers(dest="command", required=True))
    return run_samples(parser.parse_args(argv))


def test_cli_ls_tail_export(make_sink: MakeSink, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "samples"
    sink = make_sink(folder, max_file_bytes=2000)
    for i in range(20):
        sink.offer(big_record(i))
        sink.offer(big_record(i) if i % 2 else record(f"req-{i:05d}", role="shadow"))
    assert sink.close()
    files = sample_files.list_files(folder)

    assert cli("samples", "ls", str(folder)) == 0
    out = capsys.readouterr().out
    assert all(f.path.name in out for f in files) and f"{len(files)} files" in out

    assert cli("samples", "tail", str(folder), "-n", "3") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["request_id"] for line in lines] == ["req-00018", "req-00019", "req-00019"]
    assert lines[0]["inputs"] == [["x", "FP32", [1, 4]]] and "data" not in json.dumps(lines)

    npz = tmp_path / "s.npz"
    assert cli("samples", "export", str(folder), "--format", "npz", "--output", str(npz)) == 0
    d = np.load(npz, allow_pickle=True)
    assert len(d["request_id"]) == 40 and len(d["pair_served"]) == 10
    served, shadow = d["output__y"][d["pair_served"]], d["output__y"][d["pair_shadow"]]
    assert served.shape == shadow.shape == (10, 1)
    assert list(d["request_id"][d["pair_served"]]) == list(d["request_id"][d["pair_shadow"]])

    jsonl = tmp_path / "s.jsonl"
    assert cli("samples", "export", str(folder), "--format", "jsonl", "-o", str(jsonl)) == 0
    assert len(jsonl.read_text().splitlines()) == 40
    assert cli("samples", "ls", str(tmp_path / "missing")) == 2


def test_cli_reads_a_file_being_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    packed = [msgpack.packb(_doc(i), use_bin_type=True) for i in range(3)]
    (folder / sample_files.file_name("samples", time.time(), 0)).write_bytes(b"".join(packed)[:-5])
    assert [r["request_id"] for r in sample_files.iter_records(folder)] == ["a0", "a1"]  # truncated tail
    assert cli("samples", "tail", str(folder), "-n", "5") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def _doc(i: int) -> dict[str, object]:
    return {
        "v": 1, "time": time.time(), "request_id": f"a{i}", "endpoint": "e", "model": "m", "version": "1",
        "role": "champion", "routing_key": None, "latency_us": 5, "status": "OK", "error": None,
        "inputs": [], "outputs": [],
    }  # fmt: skip


def test_follow_sees_records_as_they_arrive(make_sink: MakeSink, tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    sink = make_sink(folder)
    sink.offer(record("first"))
    assert sink.flush()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, argparse; from gateway.samples_cli import add_samples_parser, run_samples;"
            "p = argparse.ArgumentParser(); add_samples_parser(p.add_subparsers(dest='command'));"
            f"sys.exit(run_samples(p.parse_args(['samples', 'tail', {str(folder)!r}, '-n', '1', '--follow'])))",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["request_id"] == "first"
        sink.offer(record("second"))
        timer = threading.Timer(20, proc.kill)  # a hung reader fails the test instead of hanging it
        timer.start()
        assert json.loads(proc.stdout.readline())["request_id"] == "second"
        timer.cancel()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
