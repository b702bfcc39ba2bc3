"""The durable routing state and the audit log: round trips, crash safety, unreadable files."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.control.audit import AuditEntry, AuditLog
from gateway.control.state import EndpointState, now_rfc3339
from gateway.control.store import StateFileError, StateStore, decode_state, encode_state
from gateway.routing.table import EndpointSpec, Target

ROOT = Path(__file__).resolve().parent.parent


def _spec(name: str = "demo", champion: int = 1, weight: float = 0.25) -> EndpointSpec:
    return EndpointSpec(
        name, Target("demo", champion), Target("demo", champion + 1), weight, Target("other", 3), 0.5
    )


def _state(revision: int, name: str = "demo") -> EndpointState:
    undo = tuple(_spec(name, v) for v in range(1, 1 + revision % 4))
    return EndpointState(_spec(name, 1 + revision % 3), revision, "alice", now_rfc3339(), undo)


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True).filter(lambda s: ".." not in s)
_targets = st.builds(Target, _names, st.integers(1, 10**6))
_fractions = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def _states(draw: st.DrawFn) -> EndpointState:
    name = draw(_names)

    def spec() -> EndpointSpec:
        challenger = draw(st.none() | _targets)
        shadow = draw(st.none() | _targets)
        return EndpointSpec(
            name,
            draw(_targets),
            challenger,
            draw(_fractions) if challenger else 0.0,
            shadow,
            draw(_fractions) if shadow else 0.0,
        )

    undo = tuple(spec() for _ in range(draw(st.integers(0, 3))))
    return EndpointState(spec(), draw(st.integers(0, 10**9)), draw(st.text(max_size=20)), now_rfc3339(), undo)


@given(st.lists(_states(), max_size=4))
def test_encoding_round_trips(states: list[EndpointState]) -> None:
    endpoints = {s.name: s for s in states}
    assert decode_state(encode_state(endpoints)) == endpoints


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    assert store.load() == {}  # nothing saved yet: start from the config alone
    endpoints = {"demo": _state(3), "ranker": _state(1, "ranker")}
    store.save(endpoints)
    assert StateStore(tmp_path / "state").load() == endpoints
    doc = orjson.loads(store.path.read_bytes())
    assert doc["version"] == 1 and set(doc["endpoints"]) == {"demo", "ranker"}


def test_previous_copy_is_kept(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save({"demo": _state(1)})
    assert not store.previous_path.exists()
    store.save({"demo": _state(2)})
    store.save({"demo": _state(3)})
    assert decode_state(store.previous_path.read_bytes())["demo"].revision == 2
    assert store.load()["demo"].revision == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["routing.json", "routing.json.prev"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "not valid JSON"),  # truncated: the first half of a good file
        (b"\x00\x00garbage", "not valid JSON"),
        (b'{"version": 2, "endpoints": {}}', "schema version 2"),
        (b'{"version": 1}', "exactly 'version' and 'endpoints'"),
        (b'{"version": 1, "endpoints": {"demo": {"champion": {"model": "demo"}}}}', "does not match"),
        (b"[1, 2]", "does not match"),
    ],
)
def test_unreadable_state_stops_start_up(tmp_path: Path, content: bytes | None, why: str) -> None:
    store = StateStore(tmp_path)
    store.save({"demo": _state(1)})
    store.save({"demo": _state(2)})
    good = store.path.read_bytes()
    store.path.write_bytes(good[: len(good) // 2] if content is None else content)
    with pytest.raises(StateFileError) as info:
        store.load()
    message = str(info.value)
    assert str(store.path) in message and why in message
    assert "routing.json.prev" in message and "move it into place" in message
    # The previous copy is still there for the operator, and was not loaded behind their back.
    assert decode_state(store.previous_path.read_bytes())["demo"].revision == 1


_WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from gateway.control.state import EndpointState, now_rfc3339
from gateway.control.store import StateStore
from gateway.routing.table import EndpointSpec, Target

store = StateStore(Path(sys.argv[1]))
current = store.load().get("demo")
revision = current.revision if current else 0
undo = tuple(EndpointSpec("demo", Target("demo", v)) for v in range(1, 50))  # a few KB per write
while True:
    revision += 1
    spec = EndpointSpec("demo", Target("demo", revision), Target("demo", revision + 1), 0.5)
    store.save({"demo": EndpointState(spec, revision, "writer", now_rfc3339(), undo)})
    sys.stdout.write(f"{revision}\\n")
    sys.stdout.flush()
"""


def test_kill_9_leaves_an_acknowledged_state(tmp_path: Path) -> None:
    """SIGKILL a process that saves in a loop, at random moments: the file always parses, and holds the
    last acknowledged revision or the one being written, never anything older."""
    rng = random.Random(20240601)
    state_dir = tmp_path / "state"
    for _ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(state_dir), str(ROOT)], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the writer is up and has acknowledged a save
        assert first.strip().isdigit(), "the writer did not start"
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait()
        proc.stdout.close()
        complete = (first + rest).split(b"\n")[:-1]  # a line without its newline was not acknowledged
        acked = [int(line) for line in complete]
        last = acked[-1]
        persisted = StateStore(state_dir).load()["demo"]
        assert persisted.revision in (last, last + 1)
        assert persisted.spec.champion == Target("demo", persisted.revision)
        decode_state((state_dir / "routing.json.prev").read_bytes())  # the previous copy parses too


def _entry(revision: int, endpoint: str = "demo") -> AuditEntry:
    after = {"champion": {"model": "demo", "version": revision}, "challenger": None, "shadow": None}
    return AuditEntry(now_rfc3339(), "alice", "patch", endpoint, revision, None, after)


def test_audit_log_is_append_only(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.read(10) == []
    seen = b""
    for revision in range(1, 6):
        log.append(_entry(revision, "demo" if revision % 2 else "other"))
        now = log.path.read_bytes()
        assert now.startswith(seen) and now.endswith(b"\n")  # earlier lines are never rewritten
        seen = now
    assert [e["revision"] for e in log.read(10)] == [1, 2, 3, 4, 5]
    assert [e["revision"] for e in log.read(2)] == [4, 5]  # the latest, oldest first
    assert [e["revision"] for e in log.read(10, endpoint="other")] == [2, 4]
    assert [e["revision"] for e in log.read(10, since_revision=3)] == [4, 5]
    first = log.read(1, endpoint="demo", since_revision=0)[0]
    assert set(first) >= {"time", "actor", "action", "endpoint", "revision", "before", "after"}


def test_audit_log_survives_a_torn_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(_entry(1))
    with log.path.open("ab") as f:  # a crash in the middle of an append
        f.write(b'{"time": "2024-')
    assert [e["revision"] for e in log.read(10)] == [1]
    log.append(_entry(2))
    assert [e["revision"] for e in log.read(10)] == [1, 2]


def test_audit_log_reads_backwards_across_blocks(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for revision in range(1, 601):  # about two 64 KiB blocks
        log.append(_entry(revision))
    assert log.path.stat().st_size > 64 * 1024
    assert [e["revision"] for e in log.read(3)] == [598, 599, 600]
    assert [e["revision"] for e in log.read(1000)] == list(range(1, 601))
