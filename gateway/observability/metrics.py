"""Prometheus exposition of the gateway's records, built at scrape time from snapshots.

Why a custom collector instead of prometheus_client Counters on the request path: a labelled child update
takes a lock and costs about a microsecond; our records are plain ints updated for free, and a snapshot
(summed across worker processes by the supervisor) is turned into metric families only when scraped.
Latency histograms use Prometheus buckets from 50 us to 10 s, derived from the finer HDR buckets (each
HDR bucket is assigned by its lower bound, so a count can only move across a boundary by < 0.8%).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnxruntime
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.observability.latency import bucket_bounds
from gateway.routing.shadow import DIFF_BUCKETS

LATENCY_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BOUNDS_US = np.array([b * 1e6 for b in LATENCY_BUCKETS_S])
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SERIES_LABELS = ["endpoint", "model", "version", "role"]
PAIR_LABELS = ["endpoint", "served_model", "served_version", "shadow_model", "shadow_version", "output"]

Snapshot = dict[str, Any]


def _fmt(bound: float) -> str:
    return repr(float(bound)) if bound != float("inf") else "+Inf"


def hdr_to_buckets(counts: dict[int, int], sum_us: int) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (seconds) and the sum in seconds from HDR bucket counts."""
    cumulative = [0] * (len(_BOUNDS_US) + 1)
    if counts:
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        n = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
        lower, _ = bucket_bounds(idx)
        slot = np.searchsorted(_BOUNDS_US, lower, side="left")
        per = np.bincount(slot, weights=n, minlength=len(_BOUNDS_US) + 1)
        cumulative = [int(x) for x in np.cumsum(per)]
    buckets = [(_fmt(b), float(c)) for b, c in zip(LATENCY_BUCKETS_S, cumulative, strict=False)]
    buckets.append(("+Inf", float(cumulative[-1])))
    return buckets, sum_us / 1e6


def families(snap: Snapshot) -> Iterator[Metric]:
    records = snap["records"]
    requests = CounterMetricFamily(
        "onnxgate_requests", "Inference requests by endpoint, model version, role, protocol and outcome code.",
        labels=[*SERIES_LABELS, "protocol", "code"],
    )  # fmt: skip
    total = HistogramMetricFamily(
        "onnxgate_request_duration_seconds", "Time from routing to the answer, per version and role.",
        labels=SERIES_LABELS,
    )  # fmt: skip
    queue = HistogramMetricFamily(
        "onnxgate_queue_duration_seconds",
        "Time a request waited for an inference thread.",
        labels=SERIES_LABELS,
    )
    compute = HistogramMetricFamily(
        "onnxgate_compute_duration_seconds", "Time ONNX Runtime spent on the request.", labels=SERIES_LABELS
    )
    for key, s in records["series"].items():
        labels = list(key)
        for (protocol, code), n in s["counts"].items():
            requests.add_metric([*labels, protocol, code], n)
        buckets, total_s = hdr_to_buckets(s["windows"]["all"], s["sum_us"])
        total.add_metric(labels, buckets, total_s)
        buckets, qs = hdr_to_buckets(s["queue"], s["queue_sum_us"])
        queue.add_metric(labels, buckets, qs)
        buckets, cs = hdr_to_buckets(s["compute"], s["compute_sum_us"])
        compute.add_metric(labels, buckets, cs)
    yield from (requests, total, queue, compute)

    unrouted = CounterMetricFamily(
        "onnxgate_unrouted_requests", "Requests for names that are not served (no per-name label).",
        labels=["protocol", "code"],
    )  # fmt: skip
    for (protocol, code), n in records["unrouted"].items():
        unrouted.add_metric([protocol, code], n)
    yield unrouted

    batch = HistogramMetricFamily(
        "onnxgate_batch_size", "Rows per ONNX Runtime execution.", labels=["model", "version"]
    )
    for (model, version), h in records["batch_sizes"].items():
        cum, acc, total_rows = [], 0, 0
        for b in BATCH_BUCKETS:
            acc = sum(n for size, n in h.items() if size <= b)
            cum.append((str(float(b)), float(acc)))
        cum.append(("+Inf", float(sum(h.values()))))
        total_rows = sum(size * n for size, n in h.items())
        batch.add_metric([model, version], cum, float(total_rows))
    yield batch

    yield GaugeMetricFamily(
        "onnxgate_inflight_requests", "Requests being served now.", value=records["in_flight"]
    )

    changes = CounterMetricFamily(
        "onnxgate_control_changes",
        "Routing changes made through the control API.",
        labels=["endpoint", "action"],
    )
    for (endpoint, action), n in records["control_changes"].items():
        changes.add_metric([endpoint, action], n)
    yield changes

    state = GaugeMetricFamily(
        "onnxgate_model_state",
        "1 for the state each model version is in.",
        labels=["model", "version", "state"],
    )
    ready = GaugeMetricFamily(
        "onnxgate_model_ready", "1 when the model version serves.", labels=["model", "version"]
    )
    for model, version, st in snap["models"]:
        state.add_metric([model, version, st], 1)
        ready.add_metric([model, version], 1 if st == "READY" else 0)
    yield from (state, ready)

    yield from _shadow_families(snap["shadow"])

    info = GaugeMetricFamily(
        "onnxgate_build_info", "Versions of onnxgate and what it runs on.",
        labels=["version", "onnxruntime", "python"],
    )  # fmt: skip
    info.add_metric([__version__, onnxruntime.__version__, platform.python_version()], 1)
    yield info


def _shadow_families(shadow: Snapshot) -> Iterator[Metric]:
    names = {
        "queued": "Requests copied to the shadow queue.",
        "dropped": "Shadow copies dropped: the shadow lane was full or lagging, or the event loop was saturated.",
        "failed": "Shadow runs that raised.",
        "timed_out": "Shadow runs abandoned after the shadow timeout.",
        "compared": "Shadow answers compared with the served answer.",
    }
    for field, doc in names.items():
        fam = CounterMetricFamily(f"onnxgate_shadow_{field}", doc, labels=["endpoint"])
        for endpoint, c in shadow["counters"].items():
            fam.add_metric([endpoint], c[field])
        yield fam
    max_diff = HistogramMetricFamily(
        "onnxgate_shadow_max_abs_difference", "Per answer, the largest element difference shadow vs served.",
        labels=PAIR_LABELS,
    )  # fmt: skip
    mean_diff = HistogramMetricFamily(
        "onnxgate_shadow_mean_abs_difference", "Per answer, the mean element difference shadow vs served.",
        labels=PAIR_LABELS,
    )  # fmt: skip
    rows = CounterMetricFamily(
        "onnxgate_shadow_argmax_rows", "Rows compared on the class axis.", labels=PAIR_LABELS
    )
    agree = CounterMetricFamily(
        "onnxgate_shadow_argmax_agreements", "Rows whose predicted class (argmax) agreed.", labels=PAIR_LABELS
    )
    for key, pair in shadow["pairs"].items():
        for output, o in pair["outputs"].items():
            labels = [*key, output]
            for hist, counts, total in (
                (max_diff, o["max_abs_buckets"], o["sum_max_abs_diff"]),
                (mean_diff, o["mean_abs_buckets"], o["sum_mean_abs_diff"]),
            ):
                cum = np.cumsum(counts)
                buckets = [(repr(b), float(c)) for b, c in zip(DIFF_BUCKETS, cum, strict=False)]
                buckets.append(("+Inf", float(cum[-1])))
                hist.add_metric(labels, buckets, total)
            rows.add_metric(labels, o["argmax_rows"])
            agree.add_metric(labels, o["argmax_agree"])
    yield from (max_diff, mean_diff, rows, agree)


class SnapshotCollector(Collector):
    """Registers with a prometheus_client registry; asks `source` for a fresh snapshot at every scrape."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from families(self._source())
