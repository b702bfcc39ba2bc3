"""The Prometheus exposition of a real gateway after a known mix of requests, and the operator files in
deploy/ (Grafana dashboard, alerting rules, scrape config) checked against what a live gateway exposes."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.demo import write_demo_repository
from gateway.routing.table import key_fraction
from tests.control_client import call
from tests.gateway_process import ROOT, GatewayProcess, start_gateway

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "onnxgate.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"

# Extra `onnxgate serve` arguments the whole module runs under, one gateway each.
SERVE_ARGS: list[tuple[str, ...]] = [(), ("--workers", "2")]

X = np.random.default_rng(9).random((1, 64), dtype=np.float32)
BAD = np.zeros((1, 32), dtype=np.float32)  # demo wants [-1, 64]
KEYS = [f"user-{i}" for i in range(40)]
CHALLENGER_KEYS = sum(1 for k in KEYS if key_fraction(k) < 0.2)  # the demo challenger's weight
# Labels Prometheus adds to every scraped series: expressions may select or group by them.
TARGET_LABELS = {"job", "instance"}

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    samples: dict[str, dict[Labels, float]]  # sample name -> labels -> value

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def labels_of(self, name: str) -> set[str]:
        return {k for labels in self.samples.get(name, {}) for k, _ in labels}


def scrape(gw: GatewayProcess) -> Scrape:
    text = urllib.request.urlopen(gw.metrics_url, timeout=10).read().decode()
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return Scrape(samples)


def _grpc_inputs(x: np.ndarray) -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def _http_inputs(x: np.ndarray) -> list[httpclient.InferInput]:
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


def _expect_error(call_: Any, status: str) -> None:
    with pytest.raises(Exception) as info:
        call_()
    assert status in str(info.value) or status in repr(getattr(info.value, "status", lambda: "")()), (
        info.value
    )


def send_mix(gw: GatewayProcess) -> Counter[tuple[str, ...]]:
    """The known mix; returns the expected onnxgate_requests_total per (endpoint, model, version, role,
    protocol, code) and, under ("unrouted", protocol, code), the expected unrouted counts."""
    grpc_c = grpcclient.InferenceServerClient(gw.grpc_url)
    http_c = httpclient.InferenceServerClient(gw.http_url)
    expected: Counter[tuple[str, ...]] = Counter()
    for _ in range(30):
        assert grpc_c.infer("demo", _grpc_inputs(X), model_version="1").get_response().model_version == "1"
    expected["demo", "demo", "1", "pinned", "grpc", "OK"] += 30
    for _ in range(20):
        assert http_c.infer("demo", _http_inputs(X), model_version="3").get_response()["model_version"] == "3"
    expected["demo", "demo", "3", "pinned", "http", "OK"] += 20
    for _ in range(10):
        _expect_error(lambda: grpc_c.infer("demo", _grpc_inputs(X), model_version="9"), "NOT_FOUND")
    expected["unrouted", "grpc", "NOT_FOUND"] += 10
    for _ in range(3):
        _expect_error(lambda: http_c.infer("no_such_model", _http_inputs(X)), "404")
    expected["unrouted", "http", "NOT_FOUND"] += 3
    for _ in range(5):
        _expect_error(lambda: http_c.infer("demo", _http_inputs(BAD), model_version="1"), "400")
    expected["demo", "demo", "1", "pinned", "http", "INVALID_ARG"] += 5
    for k in KEYS:  # routed by key: the same split with one process or several
        grpc_c.infer("demo", _grpc_inputs(X), headers={"x-routing-key": k})
    expected["demo", "demo", "1", "champion", "grpc", "OK"] += len(KEYS) - CHALLENGER_KEYS
    expected["demo", "demo", "2", "challenger", "grpc", "OK"] += CHALLENGER_KEYS
    grpc_c.close()
    http_c.close()
    return expected


@dataclass
class Traffic:
    gw: GatewayProcess
    expected: Counter[tuple[str, ...]]
    scrape: Scrape


@pytest.fixture(scope="module", params=SERVE_ARGS, ids=lambda args: " ".join(args) or "one-process")
def traffic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    root = tmp_path_factory.mktemp("metrics")
    config = write_demo_repository(root / "repo")
    gw = start_gateway(
        root / "gw", "--config", str(config), "--state-dir", str(root / "state"), *request.param
    )
    try:
        assert 0 < CHALLENGER_KEYS < len(KEYS)
        expected = send_mix(gw)
        # Let the shadow lane drain: every sampled copy ends compared, failed or timed out.
        deadline = time.monotonic() + 30
        while True:
            s = scrape(gw)
            queued = s.get("onnxgate_shadow_queued_total", endpoint="demo")
            dropped = s.get("onnxgate_shadow_dropped_total", endpoint="demo")
            done = sum(
                s.get(f"onnxgate_shadow_{f}_total", endpoint="demo")
                for f in ("compared", "failed", "timed_out")
            )
            if (queued + dropped == len(KEYS) and done == queued) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        status, body = call(
            gw.ports["control"], "PATCH", "/v1/endpoints/demo", {"challenger": {"weight": 0.25}}
        )
        assert status == 200, body
        yield Traffic(gw, expected, scrape(gw))
    finally:
        code = gw.stop()
    assert code == 0, gw.log()


# ------------------------------------------------------------------------------ the exposition


def test_request_counts_are_exact_per_version_role_protocol_and_code(traffic: Traffic) -> None:
    s = traffic.scrape
    got = {
        tuple(dict(labels)[k] for k in ("endpoint", "model", "version", "role", "protocol", "code")): v
        for labels, v in s.samples["onnxgate_requests_total"].items()
    }
    want = {k: float(n) for k, n in traffic.expected.items() if k[0] != "unrouted"}
    assert got == want
    unrouted = {
        (dict(labels)["protocol"], dict(labels)["code"]): v
        for labels, v in s.samples["onnxgate_unrouted_requests_total"].items()
    }
    assert unrouted == {k[1:]: float(n) for k, n in traffic.expected.items() if k[0] == "unrouted"}


def test_histograms_count_every_request(traffic: Traffic) -> None:
    s = traffic.scrape
    per_series: Counter[tuple[str, ...]] = Counter()
    ok: Counter[tuple[str, ...]] = Counter()
    for key, n in traffic.expected.items():
        if key[0] != "unrouted":
            per_series[key[:4]] += n
            if key[5] == "OK":
                ok[key[:4]] += n
    assert per_series
    for key, n in per_series.items():
        labels = dict(zip(("endpoint", "model", "version", "role"), key, strict=True))
        assert s.get("onnxgate_request_duration_seconds_count", **labels) == n, key
        assert s.get("onnxgate_request_duration_seconds_bucket", **labels, le="+Inf") == n, key
        assert s.get("onnxgate_request_duration_seconds_sum", **labels) > 0, key
        # Queue and compute time are recorded for answered requests only.
        assert s.get("onnxgate_queue_duration_seconds_count", **labels) == ok[key], key
        assert s.get("onnxgate_compute_duration_seconds_count", **labels) == ok[key], key
        buckets = sorted(
            (float(dict(lbl)["le"]), v)
            for lbl, v in s.samples["onnxgate_request_duration_seconds_bucket"].items()
            if {k: v for k, v in lbl if k != "le"} == labels
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), key  # cumulative
    series = {
        tuple(dict(lbl)[k] for k in ("endpoint", "model", "version", "role"))
        for lbl in s.samples["onnxgate_request_duration_seconds_count"]
    }
    assert series == set(per_series)
    assert s.get("onnxgate_batch_size_count", model="demo", version="1") > 0
    assert s.get("onnxgate_inflight_requests") == 0


def test_model_states_and_build_info(traffic: Traffic) -> None:
    s = traffic.scrape
    for version in ("1", "2", "3"):
        assert s.get("onnxgate_model_ready", model="demo", version=version) == 1
        assert s.get("onnxgate_model_state", model="demo", version=version, state="READY") == 1
    assert all(v == 1 for v in s.samples["onnxgate_model_ready"].values())
    (labels,) = s.samples["onnxgate_build_info"]
    info = dict(labels)
    assert info["version"] == __version__ and info["onnxruntime"] and info["python"]


def test_shadow_counters_move(traffic: Traffic) -> None:
    s = traffic.scrape
    queued = s.get("onnxgate_shadow_queued_total", endpoint="demo")
    dropped = s.get("onnxgate_shadow_dropped_total", endpoint="demo")
    compared = s.get("onnxgate_shadow_compared_total", endpoint="demo")
    assert queued + dropped == len(KEYS)  # sample_rate 1.0, pinned requests are never mirrored
    assert compared > 0
    assert (
        compared
        + s.get("onnxgate_shadow_failed_total", endpoint="demo")
        + s.get("onnxgate_shadow_timed_out_total", endpoint="demo")
        == queued
    )
    pair = {"endpoint": "demo", "served_model": "demo", "shadow_model": "demo", "shadow_version": "3"}
    rows = sum(
        s.get("onnxgate_shadow_argmax_rows_total", **pair, served_version=v, output="OUTPUT0")
        for v in ("1", "2")
    )
    assert rows == compared  # one row per request, each compared on its class axis
    answers = sum(
        s.get("onnxgate_shadow_max_abs_difference_count", **pair, served_version=v, output="OUTPUT0")
        for v in ("1", "2")
    )
    assert answers == compared


def test_control_changes_are_counted(traffic: Traffic) -> None:
    assert traffic.scrape.get("onnxgate_control_changes_total", endpoint="demo", action="patch") == 1


# ------------------------------------------------------------------------------ deploy/


def dashboard_expressions() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in doc["annotations"]["list"] if "expr" in a]
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    import yaml

    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, as Prometheus receives it."""
    for var, value in (
        ("$__rate_interval", "1m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("$endpoint", ".*"),
    ):
        expr = expr.replace(var, value)
    return expr


def test_dashboard_is_a_grafana_dashboard() -> None:
    doc = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert (
        variables["DS_PROMETHEUS"]["type"] == "datasource"
        and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    )
    assert variables["endpoint"]["definition"] == "label_values(onnxgate_requests_total, endpoint)"
    titles = [p["title"] for p in doc["panels"]]
    assert len(titles) == len(set(titles)) and len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    for wanted in (
        "Request rate", "Error rate", "Latency p50 / p99", "Queue vs compute", "Batch size", "In-flight",
        "Shadow work rates", "Shadow max", "Shadow mean", "Argmax agreement", "Model ready", "Control changes",
    ):  # fmt: skip
        assert any(t.startswith(wanted) for t in titles), wanted
    for p in doc["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    per_endpoint = [e for e in dashboard_expressions() if "onnxgate_requests_total" in e or "shadow" in e]
    assert all('endpoint=~"$endpoint"' in e for e in per_endpoint)


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for wanted in (
        "ChallengerErrorRate", "ChallengerSlower", "ShadowArgmaxAgreement", "ShadowWorkDropped", "ModelNotReady",
        "OnnxgateDown",
    ):  # fmt: skip
        assert any(wanted in n for n in names), wanted
    for r in rules:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_scrape_config_names_the_job_the_alerts_select() -> None:
    import yaml

    doc = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    (job,) = doc["scrape_configs"]
    assert job["job_name"] == "onnxgate" and job["metrics_path"] == "/metrics"
    assert all(t.endswith(":8002") for t in job["static_configs"][0]["targets"])
    assert any('up{job="onnxgate"}' in r["expr"] for r in alert_rules())


def all_expressions() -> list[str]:
    return [concrete(e) for e in dashboard_expressions()] + [r["expr"] for r in alert_rules()]


def test_every_metric_in_deploy_is_exposed(traffic: Traffic) -> None:
    exposed = set(traffic.scrape.samples)
    used = {name for expr in all_expressions() for name in re.findall(r"\bonnxgate_\w+", expr)}
    assert used, "no expressions found"
    assert used <= exposed, sorted(used - exposed)
    # And every onnxgate family is on the dashboard (histograms by any of their series).
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exposed if n.startswith("onnxgate_")}
    on_dashboard = {
        re.sub(r"_(bucket|count|sum)$", "", n)
        for e in dashboard_expressions()
        for n in re.findall(r"\bonnxgate_\w+", e)
    }
    assert families <= on_dashboard, sorted(families - on_dashboard)


def test_deploy_expressions_parse_and_use_existing_labels(traffic: Traffic) -> None:
    import promql_parser as promql

    s = traffic.scrape
    for text in all_expressions():
        expr = promql.parse(text)
        problems: list[str] = []

        def visit(node: Any, problems: list[str] = problems) -> bool:
            if isinstance(node, promql.VectorSelector):
                known = s.labels_of(node.name) | TARGET_LABELS
                if node.name.startswith("onnxgate_"):
                    problems += [
                        f"{node.name} has no label {m.name!r}"
                        for m in node.matchers.matchers
                        if m.name not in known
                    ]
            elif isinstance(node, promql.AggregateExpr) and node.modifier is not None:
                inner: set[str] = set(TARGET_LABELS)

                def names(n: Any) -> bool:
                    if isinstance(n, promql.VectorSelector):
                        inner.update(s.labels_of(n.name))
                    return True

                promql.walk(node.expr, names)
                problems += [
                    f"grouping by unknown label {label!r}"
                    for label in node.modifier.labels
                    if label not in inner
                ]
            return True

        promql.walk(expr, visit)
        assert not problems, (text, problems)
