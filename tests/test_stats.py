"""Per-version latency statistics: `endpoint_stats` on known records, the stats and samples routes, and the
stats of a real gateway compared with what its client measured."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from aiohttp import web

from gateway import ctl
from gateway.control.api import SamplesSource, SnapshotSource, create_control_app
from gateway.control.auth import Authenticator
from gateway.demo import write_demo_repository
from gateway.observability.records import Recorder
from gateway.observability.stats import endpoint_stats
from gateway.routing.shadow import OutputComparison
from runtime.errors import NotFound
from tests.control_client import call
from tests.gateway_process import GatewayProcess, start_gateway

X = np.random.default_rng(5).random((1, 64), dtype=np.float32)
QS = {"p50_ms": 0.5, "p90_ms": 0.9, "p99_ms": 0.99, "p999_ms": 0.999}
HDR_HALF_BUCKET = 1 / 256  # a midpoint is at most this far (relative) above the values of its bucket


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _synthetic_snapshot() -> dict[str, Any]:
    """demo v1 champion: 1..10000 us, one each, 1 s apart (oldest 10000 s ago); v2 challenger: 3 requests,
    one failed; a shadow comparison of v1 against v3."""
    recorder = Recorder()
    champion = recorder.get(("demo", "demo", "1", "champion"))
    clock = _Clock()
    champion.latency.clock = clock  # record on a clock of our own: one value per second
    for us in range(1, 10_001):
        champion.observe("grpc" if us % 2 else "http", "OK", us, 10, us // 2)
        clock.now += 1.0
    challenger = recorder.get(("demo", "demo", "2", "challenger"))
    for us, code in ((2000, "OK"), (4000, "OK"), (150, "INVALID_ARG")):
        challenger.observe("http", code, us, 0, 0)
    recorder.get(("other", "simple", "1", "champion")).observe("http", "OK", 5, 0, 0)
    comparison = OutputComparison(
        compared=4, mismatched=1, max_abs_diff=0.5, sum_mean_abs_diff=0.3, argmax_rows=6, argmax_agree=3
    )
    shadow = {
        "counters": {"demo": {"queued": 5, "dropped": 1, "failed": 0, "timed_out": 0, "compared": 4}},
        "pairs": {
            ("demo", "demo", "1", "demo", "3"): {
                "compared": 4,
                "outputs": {"OUTPUT0": dataclasses.asdict(comparison)},
            },
            ("other", "simple", "1", "simple", "2"): {"compared": 1, "outputs": {}},
        },
    }
    return {"records": recorder.snapshot(), "shadow": shadow, "models": []}


def test_endpoint_stats_on_known_records() -> None:
    stats = endpoint_stats(_synthetic_snapshot(), "demo")
    assert stats["endpoint"] == "demo" and stats["windows"] == ["10s", "1m", "5m", "all"]
    assert [(s["role"], s["model"], s["version"]) for s in stats["series"]] == [
        ("champion", "demo", "1"),
        ("challenger", "demo", "2"),
    ]
    champion, challenger = stats["series"]
    assert champion["requests"] == {"grpc": {"OK": 5000}, "http": {"OK": 5000}}
    everything = champion["windows"]["all"]
    assert everything["count"] == 10_000 and everything["errors"] == 0
    for name, q in QS.items():
        expected_ms = q * 10_000 / 1000
        assert everything[name] == pytest.approx(expected_ms, rel=0.01), name
    assert everything["max_ms"] == 10.0  # exact for "all"
    assert everything["p50_ms"] <= everything["p90_ms"] <= everything["p99_ms"] <= everything["p999_ms"]
    # Rolling windows: the clock stopped 1 s after the last value, so the last N seconds hold the top values.
    for window, seconds in (("10s", 10), ("1m", 60), ("5m", 300)):
        w = champion["windows"][window]
        assert w["count"] == seconds - 1, window
        assert w["errors"] == 0
        assert 10.0 <= w["max_ms"] <= 10.0 * (1 + 1 / 128) + 0.001, window  # the top bucket's upper bound
        low = 10_000 - seconds + 2  # the oldest value still in the window, us
        assert w["p50_ms"] == pytest.approx((low + 10_000) / 2 / 1000, rel=0.01), window
    assert challenger["requests"] == {"http": {"INVALID_ARG": 1, "OK": 2}}
    assert challenger["windows"]["all"]["count"] == 3 and challenger["windows"]["all"]["errors"] == 1
    assert challenger["windows"]["10s"]["errors"] == 1  # errors are counted per second for the windows
    assert challenger["windows"]["all"]["max_ms"] == 4.0

    shadow = stats["shadow"]
    assert shadow["counters"] == {"queued": 5, "dropped": 1, "failed": 0, "timed_out": 0, "compared": 4}
    assert shadow["comparisons"] == [
        {
            "served_model": "demo",
            "served_version": "1",
            "shadow_model": "demo",
            "shadow_version": "3",
            "output": "OUTPUT0",
            "compared": 4,
            "mismatched": 1,
            "max_abs_diff": 0.5,
            "mean_abs_diff": pytest.approx(0.1),
            "argmax_rows": 6,
            "argmax_agreement": 0.5,
        }
    ]


def test_endpoint_stats_unknown_and_quiet_endpoints() -> None:
    snap = _synthetic_snapshot()
    with pytest.raises(NotFound, match="nope"):
        endpoint_stats(snap, "nope")
    quiet = endpoint_stats(snap, "nope", known=True)
    assert quiet["series"] == [] and quiet["shadow"]["comparisons"] == []
    assert set(quiet["shadow"]["counters"].values()) == {0}
    assert [s["model"] for s in endpoint_stats(snap, "other")["series"]] == ["simple"]
    empty = endpoint_stats({"records": Recorder().snapshot(), "shadow": {}}, "x", known=True)
    assert empty["series"] == []


def test_empty_windows_answer_nulls() -> None:
    recorder = Recorder()
    series = recorder.get(("e", "m", "1", "pinned"))
    clock = _Clock()
    series.latency.clock = clock
    series.observe("grpc", "UNAVAILABLE", 700, 0, 0)
    clock.now += 400  # older than every rolling window
    s = endpoint_stats({"records": recorder.snapshot(), "shadow": {}}, "e")["series"][0]
    assert s["windows"]["10s"] == {
        "count": 0, "errors": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None,
    }  # fmt: skip
    assert s["windows"]["all"]["count"] == 1 and s["windows"]["all"]["errors"] == 1
    assert s["windows"]["all"]["max_ms"] == 0.7


def test_quantiles_never_exceed_the_exact_maximum() -> None:
    recorder = Recorder()
    series = recorder.get(("e", "m", "1", "pinned"))
    for us in (1000, 1001, 1177):  # 1177 sits low in a bucket 8 us wide: its midpoint is above it
        series.observe("grpc", "OK", us, 0, 0)
    w = endpoint_stats({"records": recorder.snapshot(), "shadow": {}}, "e")["series"][0]["windows"]["all"]
    assert w["p999_ms"] == w["max_ms"] == 1.177
    assert w["p50_ms"] <= w["p90_ms"] <= w["p99_ms"] <= w["p999_ms"]


# ------------------------------------------------------------------------------ routes, in process


class _Controller:
    """Just what the stats route asks of the controller: whether an endpoint is configured."""

    def get(self, name: str) -> object:
        if name != "quiet":
            raise NotFound(f"unknown endpoint: '{name}'")
        return object()


@contextlib.asynccontextmanager
async def _control(
    snapshot_source: SnapshotSource | None, samples_source: SamplesSource | None
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    app = create_control_app(
        _Controller(),  # type: ignore[arg-type]
        Authenticator((), allow_local=True),
        snapshot_source=snapshot_source,
        samples_source=samples_source,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    session = aiohttp.ClientSession()
    try:
        yield f"http://127.0.0.1:{port}", session
    finally:
        await session.close()
        await runner.cleanup()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


def test_routes_without_sources_answer_501() -> None:
    async def scenario() -> None:
        async with _control(None, None) as (url, session):
            status, body = await _get(session, url + "/v1/endpoints/demo/stats")
            assert status == 501 and "statistics" in body["error"]
            status, body = await _get(session, url + "/v1/endpoints/demo/samples")
            assert status == 501 and "samples" in body["error"]
            status, body = await _get(session, url + "/v1/endpoints/demo/samples?limit=0")
            assert status == 400  # a bad query is refused before the missing source is noticed

    asyncio.run(scenario())


def test_stats_and_samples_routes_with_sources() -> None:
    snap = _synthetic_snapshot()
    asked: list[tuple[str, str | None, str | None, int]] = []

    async def snapshot() -> dict[str, Any]:
        return snap

    async def samples(
        endpoint: str, version: str | None, role: str | None, limit: int
    ) -> list[dict[str, Any]]:
        asked.append((endpoint, version, role, limit))
        return [{"request_id": "r1"}]

    async def scenario() -> None:
        async with _control(snapshot, samples) as (url, session):
            status, body = await _get(session, url + "/v1/endpoints/demo/stats")
            assert status == 200
            assert body["series"][0]["windows"]["all"]["count"] == 10_000
            assert body["shadow"]["comparisons"][0]["argmax_agreement"] == 0.5
            status, body = await _get(session, url + "/v1/endpoints/nope/stats")
            assert status == 404 and "nope" in body["error"]
            status, body = await _get(session, url + "/v1/endpoints/quiet/stats")
            assert status == 200 and body["series"] == []
            status, body = await _get(session, url + "/v1/endpoints/demo/samples")
            assert status == 200 and body == {"samples": [{"request_id": "r1"}]}
            status, _ = await _get(
                session, url + "/v1/endpoints/demo/samples?version=2&role=challenger&limit=7"
            )
            assert status == 200
            for query in ("limit=0", "limit=1001", "limit=x", "role=boss", "version=0", "version=v1"):
                status, body = await _get(session, url + "/v1/endpoints/demo/samples?" + query)
                assert status == 400, query
                assert body["error"], query
            status, _ = await _get(session, url + "/v1/endpoints/demo/samples?limit=1000&role=pinned")
            assert status == 200

    asyncio.run(scenario())
    assert asked == [
        ("demo", None, None, 100),
        ("demo", "2", "challenger", 7),
        ("demo", None, "pinned", 1000),
    ]


# ------------------------------------------------------------------------------ a real gateway


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    config = write_demo_repository(tmp_path / "repo")
    g = start_gateway(tmp_path / "gw", "--config", str(config), "--state-dir", str(tmp_path / "state"))
    yield g
    assert g.stop() == 0, g.log()


def _inputs() -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    return [inp]


def _timed_pinned(client: grpcclient.InferenceServerClient, version: str, n: int) -> list[float]:
    """`n` sequential pinned requests; each one's client-side time in milliseconds."""
    inputs = _inputs()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = client.infer("demo", inputs, model_version=version)
        times.append((time.perf_counter() - t0) * 1000)
        assert result.get_response().model_version == version
    return times


def _series(stats: dict[str, Any], version: str, role: str) -> dict[str, Any]:
    found = [s for s in stats["series"] if (s["model"], s["version"], s["role"]) == ("demo", version, role)]
    assert len(found) == 1, stats["series"]
    return found[0]


def test_stats_of_a_real_gateway_match_the_client_timings(
    gw: GatewayProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    port = gw.ports["control"]
    status, quiet = call(port, "GET", "/v1/endpoints/demo/stats")
    assert status == 200 and quiet["series"] == []  # configured, no traffic yet

    client = grpcclient.InferenceServerClient(gw.grpc_url)
    client_ms = _timed_pinned(client, "1", 400)
    _timed_pinned(client, "2", 30)
    _timed_pinned(client, "3", 17)
    client.close()

    status, stats = call(port, "GET", "/v1/endpoints/demo/stats")
    assert status == 200, stats
    assert [(s["version"], s["role"]) for s in stats["series"]] == [
        ("1", "pinned"),
        ("2", "pinned"),
        ("3", "pinned"),
    ]
    v1 = _series(stats, "1", "pinned")
    assert v1["requests"] == {"grpc": {"OK": 400}}
    assert _series(stats, "2", "pinned")["windows"]["all"]["count"] == 30
    assert _series(stats, "3", "pinned")["requests"] == {"grpc": {"OK": 17}}
    assert _series(stats, "3", "pinned")["windows"]["all"]["count"] == 17

    everything = v1["windows"]["all"]
    assert everything["count"] == 400 and everything["errors"] == 0
    assert v1["windows"]["5m"]["count"] == 400
    for w in v1["windows"].values():
        if w["count"]:
            assert 0 < w["p50_ms"] <= w["p90_ms"] <= w["p99_ms"] <= w["p999_ms"] <= w["max_ms"], w

    # Server time is a sub-interval of client time request by request, so the server's k-th smallest time
    # is at most the client's k-th smallest. The server answers a bucket midpoint (at most 1/256 above the
    # values of its bucket), in ms rounded to the microsecond.
    for name, q in QS.items():
        client_q = _exact_quantile(client_ms, q)
        assert everything[name] <= client_q * (1 + HDR_HALF_BUCKET) + 0.001, (
            name,
            everything[name],
            client_q,
        )
    assert everything["max_ms"] <= max(client_ms) + 0.001  # exact on the server

    # The table ctl prints.
    code = ctl.main(["--url", f"http://127.0.0.1:{port}", "stats", "demo", "--window", "all"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "endpoint demo, window all"
    assert lines[1].split()[:5] == ["ROLE", "MODEL", "VERSION", "COUNT", "ERRORS"]
    assert lines[2].split()[:5] == ["pinned", "demo", "1", "400", "0"]

    status, body = call(port, "GET", "/v1/endpoints/simple/stats")
    assert status == 404, body  # neither configured nor requested
