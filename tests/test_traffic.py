"""Traffic management against a real gateway: canary split, routing keys, shadows, promote/rollback,
conditional changes, durability across SIGKILL, and who may change what."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from gateway.demo import write_demo_repository
from gateway.routing.table import key_fraction
from tests.control_client import call
from tests.gateway_process import ROOT, GatewayProcess, start_gateway
from tests.traffic_models import write_failing_model, write_slow_model

X = np.random.default_rng(3).random((1, 64), dtype=np.float32)


def grpc_inputs(x: np.ndarray = X) -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def stream_versions(gw: GatewayProcess, model: str, n: int, x: np.ndarray = X) -> tuple[Counter[str], int]:
    """Send `n` requests over one gRPC stream; count the answering versions and the errors."""
    versions: Counter[str] = Counter()
    errors = 0
    done = threading.Semaphore(0)

    def callback(result: grpcclient.InferResult | None, error: Exception | None) -> None:
        nonlocal errors
        if error is not None:
            errors += 1
        else:
            versions[result.get_response().model_version] += 1
        done.release()

    client = grpcclient.InferenceServerClient(gw.grpc_url)
    client.start_stream(callback=callback)
    inputs = grpc_inputs(x)
    for i in range(n):
        client.async_stream_infer(model, inputs, request_id=str(i))
    for _ in range(n):
        assert done.acquire(timeout=60), "stream answers stopped arriving"
    client.stop_stream()
    client.close()
    return versions, errors


def metric_samples(gw: GatewayProcess, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = urllib.request.urlopen(gw.metrics_url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def shadow_counter(gw: GatewayProcess, field: str, endpoint: str) -> float:
    return metric_samples(gw, f"onnxgate_shadow_{field}_total").get((("endpoint", endpoint),), 0.0)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    config = write_demo_repository(tmp_path / "repo")
    return config


def own_gateway(
    tmp_path: Path, config: Path, *args: str, env: dict[str, str] | None = None
) -> GatewayProcess:
    return start_gateway(
        tmp_path / "gw", "--config", str(config), "--state-dir", str(tmp_path / "state"), *args, env=env
    )


@pytest.fixture
def gw(tmp_path: Path, repo: Path) -> Iterator[GatewayProcess]:
    g = own_gateway(tmp_path, repo)
    yield g
    assert g.stop() == 0, g.log()


def endpoint(gw: GatewayProcess, name: str = "demo") -> dict:
    status, body = call(gw.ports["control"], "GET", f"/v1/endpoints/{name}")
    assert status == 200, body
    return body


# ------------------------------------------------------------------------------------------ routing


def test_weight_split_within_tolerance(gateway: GatewayProcess) -> None:
    """20,000 unversioned requests at weight 0.2: the challenger's share is 0.2 +- 0.015."""
    versions, errors = stream_versions(gateway, "demo", 20_000)
    assert errors == 0
    assert set(versions) == {"1", "2"}
    share = versions["2"] / 20_000
    assert 0.185 <= share <= 0.215, versions


def test_routing_key_is_sticky_and_raising_the_weight_only_moves_keys_to_the_challenger(
    gw: GatewayProcess,
) -> None:
    keys = [f"user-{i}" for i in range(150)]
    grpc_c = grpcclient.InferenceServerClient(gw.grpc_url)
    http_c = httpclient.InferenceServerClient(gw.http_url)
    http_in = httpclient.InferInput("INPUT0", [1, 64], "FP32")
    http_in.set_data_from_numpy(X)

    def versions_now() -> dict[str, str]:
        seen = {}
        for i, k in enumerate(keys):
            # three ways to carry a key: gRPC metadata, HTTP header, request parameter
            if i % 3 == 0:
                r = grpc_c.infer("demo", grpc_inputs(), headers={"x-routing-key": k})
                v = r.get_response().model_version
            elif i % 3 == 1:
                v = http_c.infer("demo", [http_in], headers={"x-routing-key": k}).get_response()[
                    "model_version"
                ]
            else:
                v = http_c.infer("demo", [http_in], parameters={"routing_key": k}).get_response()[
                    "model_version"
                ]
            seen[k] = v
        return seen

    first = versions_now()
    assert versions_now() == first, "the same key must always land on the same version"
    for k, v in first.items():
        assert v == ("2" if key_fraction(k) < 0.2 else "1"), k
    status, body = call(gw.ports["control"], "PATCH", "/v1/endpoints/demo", {"challenger": {"weight": 0.6}})
    assert status == 200, body
    after = versions_now()
    moved = [k for k in keys if first[k] != after[k]]
    assert all(first[k] == "1" and after[k] == "2" for k in moved), "keys only move champion -> challenger"
    assert all(after[k] == "2" for k in keys if first[k] == "2")
    assert moved, "raising the weight from 0.2 to 0.6 moves some keys"
    grpc_c.close()
    http_c.close()


def test_pinned_version_is_served_and_counted_as_pinned(gateway: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    before = metric_samples(gateway, "onnxgate_requests_total")
    for _ in range(7):
        assert client.infer("demo", grpc_inputs(), model_version="3").get_response().model_version == "3"
    after = metric_samples(gateway, "onnxgate_requests_total")
    key = tuple(
        sorted(
            {
                "endpoint": "demo", "model": "demo", "version": "3", "role": "pinned", "protocol": "grpc", "code": "OK",
            }.items()
        )
    )  # fmt: skip
    assert after[key] - before.get(key, 0.0) == 7
    client.close()


# ------------------------------------------------------------------------------------------ shadows


def _shadow_gateway(tmp_path: Path, shadow_model: str) -> GatewayProcess:
    root = tmp_path / "repo"
    write_demo_repository(root)
    write_slow_model(root / "models")
    write_failing_model(root / "models")
    config = root / "gateway.toml"
    config.write_text(
        'model_repository = "models"\n'
        "[endpoints.ep]\n"
        'champion = { model = "demo", version = 1 }\n'
        f'shadow = {{ model = "{shadow_model}", version = 1, sample_rate = 1.0 }}\n'
    )
    env = {"ONNXGATE_SHADOW_QUEUE_SIZE": "4", "ONNXGATE_SHADOW_CONCURRENCY": "1"}
    return own_gateway(tmp_path, config, env=env)


@pytest.mark.parametrize("shadow_model", ["slow", "failing"])
def test_a_slow_or_failing_shadow_never_changes_client_answers(tmp_path: Path, shadow_model: str) -> None:
    gw = _shadow_gateway(tmp_path, shadow_model)
    try:
        x = np.random.default_rng(11).random((1, 64), dtype=np.float32)
        expected = ort.InferenceSession(str(tmp_path / "repo/models/demo/1/model.onnx")).run(
            None, {"INPUT0": x}
        )[0]
        n = 600
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        results: list[np.ndarray] = []
        done = threading.Semaphore(0)
        errors: list[Exception] = []

        def cb(result: grpcclient.InferResult | None, error: Exception | None) -> None:
            if error is not None:
                errors.append(error)
            else:
                assert result is not None
                results.append(result.as_numpy("OUTPUT0"))
            done.release()

        client.start_stream(callback=cb)
        for i in range(n):
            client.async_stream_infer("ep", grpc_inputs(x), request_id=str(i))
        for _ in range(n):
            assert done.acquire(timeout=60)
        client.stop_stream()
        assert not errors
        assert len(results) == n
        for r in results:
            np.testing.assert_allclose(r, expected, rtol=1e-5, atol=1e-6)
        # Every sampled copy is accounted for once the lane drains.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            queued, dropped = shadow_counter(gw, "queued", "ep"), shadow_counter(gw, "dropped", "ep")
            finished = sum(shadow_counter(gw, f, "ep") for f in ("compared", "failed", "timed_out"))
            if queued + dropped == n and finished == queued:
                break
            time.sleep(0.2)
        assert queued + dropped == n
        assert finished == queued
        if shadow_model == "slow":
            assert dropped > 0, "a shadow slower than the champion must shed work, not queue it"
            assert shadow_counter(gw, "compared", "ep") > 0
        else:
            assert shadow_counter(gw, "failed", "ep") == queued > 0
            assert shadow_counter(gw, "compared", "ep") == 0
        # A client that asks the failing model directly gets INTERNAL with a message; others still serve.
        if shadow_model == "failing":
            with pytest.raises(Exception, match="failing") as info:
                client.infer("failing", grpc_inputs(x))
            assert "INTERNAL" in str(info.value.status())
            assert client.infer("ep", grpc_inputs(x)).as_numpy("OUTPUT0") is not None
        client.close()
    finally:
        assert gw.stop() == 0, gw.log()


# ------------------------------------------------------------------------------------------ control


def test_promote_and_rollback_under_load_fail_no_request(gw: GatewayProcess) -> None:
    stop = threading.Event()
    failures: list[str] = []
    seen: Counter[str] = Counter()

    def load() -> None:
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        while not stop.is_set():
            try:
                seen[client.infer("demo", grpc_inputs()).get_response().model_version] += 1
            except Exception as exc:  # any failure is what this test is about
                failures.append(repr(exc))
        client.close()

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    port = gw.ports["control"]
    try:
        for _ in range(5):
            status, body = call(port, "POST", "/v1/endpoints/demo/promote")
            assert status == 200, body
            assert body["champion"]["version"] == 2 and body["challenger"]["version"] == 1
            assert body["challenger"]["weight"] == 0
            status, body = call(port, "POST", "/v1/endpoints/demo/rollback")
            assert status == 200, body
            assert body["champion"]["version"] == 1 and body["challenger"]["version"] == 2
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert sum(seen.values()) > 0
    status, audit = call(port, "GET", "/v1/audit?limit=100")
    actions = (
        [e["action"] for e in audit["entries"]] if isinstance(audit, dict) else [e["action"] for e in audit]
    )
    assert actions.count("promote") == 5 and actions.count("rollback") == 5


def test_concurrent_conditional_patches_one_wins(gw: GatewayProcess) -> None:
    port = gw.ports["control"]
    revision = endpoint(gw)["revision"]
    statuses: list[int] = []

    def patch(w: float) -> None:
        status, _ = call(
            port, "PATCH", "/v1/endpoints/demo", {"challenger": {"weight": w}}, if_match=revision
        )
        statuses.append(status)

    threads = [threading.Thread(target=patch, args=(0.01 * (i + 1),)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [412] * 11
    assert endpoint(gw)["revision"] == revision + 1


def test_invalid_changes_are_refused_and_change_nothing(gw: GatewayProcess) -> None:
    port = gw.ports["control"]
    before = endpoint(gw)
    for body, status in (
        ({"challenger": {"weight": 1.5}}, 400),
        ({"challenger": {"version": 9}}, 400),
        ({"shadow": {"model": "demo", "version": 1, "sample_rate": 0.5}}, 400),  # equal to the champion
        ({"champion": {"model": "nope", "version": 1}}, 400),
        ({"colour": "blue"}, 400),
    ):
        got, answer = call(port, "PATCH", "/v1/endpoints/demo", body)
        assert got == status, (body, got, answer)
        assert isinstance(answer["error"], str) and answer["error"]
    assert endpoint(gw) == before


def test_an_acknowledged_change_survives_sigkill(tmp_path: Path, repo: Path) -> None:
    gw = own_gateway(tmp_path, repo)
    status, body = call(gw.ports["control"], "PATCH", "/v1/endpoints/demo", {"challenger": {"weight": 0.7}})
    assert status == 200
    gw.stop(signal.SIGKILL)  # no chance to flush anything after the answer
    again = own_gateway(tmp_path, repo)
    try:
        state = endpoint(again)
        assert state["challenger"]["weight"] == 0.7
        assert state["revision"] == body["revision"]
        client = grpcclient.InferenceServerClient(again.grpc_url)
        for k in (f"k{i}" for i in range(40)):
            v = client.infer("demo", grpc_inputs(), headers={"x-routing-key": k}).get_response().model_version
            assert v == ("2" if key_fraction(k) < 0.7 else "1")
        client.close()
    finally:
        assert again.stop() == 0


def test_corrupt_routing_state_stops_start_up_naming_the_file(tmp_path: Path, repo: Path) -> None:
    gw = own_gateway(tmp_path, repo)
    assert call(gw.ports["control"], "PATCH", "/v1/endpoints/demo", {"challenger": {"weight": 0.3}})[0] == 200
    assert gw.stop() == 0
    state_file = tmp_path / "state" / "routing.json"
    state_file.write_text(state_file.read_text()[:25])  # truncated
    with pytest.raises(RuntimeError) as info:
        own_gateway(tmp_path, repo)
    assert "routing.json" in str(info.value) and "Traceback" not in str(info.value)


# ------------------------------------------------------------------------------------------ security


def test_tokens_decide_who_reads_and_who_changes(tmp_path: Path, repo: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        '[[tokens]]\nname = "ops"\nsecret = "s3cret-operator"\nrole = "operator"\n'
        '[[tokens]]\nname = "dash"\nsecret = "s3cret-viewer"\nrole = "viewer"\n'
    )
    gw = own_gateway(tmp_path, repo, env={"ONNXGATE_TOKENS_FILE": str(tokens)})
    port = gw.ports["control"]
    try:
        assert call(port, "GET", "/v1/endpoints")[0] == 401
        assert call(port, "GET", "/v1/endpoints", token="wrong")[0] == 401
        assert call(port, "GET", "/v1/endpoints", token="s3cret-viewer")[0] == 200
        patch = {"challenger": {"weight": 0.4}}
        assert call(port, "PATCH", "/v1/endpoints/demo", patch, token="s3cret-viewer")[0] == 403
        assert call(port, "PATCH", "/v1/endpoints/demo", patch)[0] == 401
        status, body = call(port, "PATCH", "/v1/endpoints/demo", patch, token="s3cret-operator")
        assert status == 200 and body["changed_by"] == "ops"
        assert "s3cret" not in gw.log()
    finally:
        assert gw.stop() == 0


def test_control_listener_off_loopback_without_tokens_refuses_to_start(tmp_path: Path, repo: Path) -> None:
    with pytest.raises(RuntimeError) as info:
        own_gateway(tmp_path, repo, env={"ONNXGATE_CONTROL_HOST": "0.0.0.0"})
    assert "token" in str(info.value).lower()


def test_ctl_sets_weight_and_reads_audit(gw: GatewayProcess) -> None:
    env = {"ONNXGATE_CONTROL_URL": f"http://127.0.0.1:{gw.ports['control']}", "PATH": "/usr/bin:/bin"}

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "ctl", *args], capture_output=True, text=True, env=env, cwd=ROOT,
            timeout=60,
        )  # fmt: skip

    assert ctl("set-weight", "demo", "0.35").returncode == 0
    assert endpoint(gw)["challenger"]["weight"] == 0.35
    out = ctl("get", "demo")
    assert out.returncode == 0 and "0.35" in out.stdout
    audit = ctl("audit")
    assert audit.returncode == 0 and "patch" in audit.stdout.lower()
    bad = ctl("set-weight", "demo", "2")
    assert bad.returncode == 1 and "weight" in (bad.stderr + bad.stdout).lower()
