"""Per-version request records: counts by outcome and latency histograms, cheap to write, merged to read.

Rules of this module:
- The request path touches plain Python ints and dicts only (no locks, no Prometheus calls, no
  allocation beyond a dict slot): a series is looked up once per request by a tuple key built from
  strings the routing table already holds; everything else happens when someone reads.
- Reading goes through ``snapshot()``: plain, picklable data, so the snapshots of several worker
  processes can be summed by the supervisor before they are exposed (Prometheus, the stats API).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.observability.latency import WINDOW_S, RollingHistogram, bucket_of, merge

SeriesKey = tuple[str, str, str, str]  # endpoint, model, version, role
WINDOWS = {"10s": 10, "1m": 60, "5m": 300, "all": None}


class RequestSeries:
    """What one (endpoint, model, version, role) has done."""

    __slots__ = (
        "compute",
        "compute_sum_us",
        "counts",
        "error_seconds",
        "key",
        "latency",
        "queue",
        "queue_sum_us",
        "sum_us",
    )

    def __init__(self, key: SeriesKey) -> None:
        self.key = key
        self.counts: dict[tuple[str, str], int] = {}  # (protocol, code) -> requests
        self.latency = RollingHistogram()  # total time in the gateway, microseconds
        self.queue: dict[int, int] = {}  # HDR bucket -> count, since start
        self.compute: dict[int, int] = {}
        self.sum_us = 0
        self.queue_sum_us = 0
        self.compute_sum_us = 0
        self.error_seconds: dict[int, int] = {}  # monotonic second -> failed requests (pruned to the window)

    def observe(self, protocol: str, code: str, total_us: int, queue_us: int, compute_us: int) -> None:
        counts = self.counts
        k = (protocol, code)
        counts[k] = counts.get(k, 0) + 1
        self.latency.record(total_us)
        self.sum_us += total_us
        if code != "OK":
            second = int(self.latency.clock())
            errors = self.error_seconds
            errors[second] = errors.get(second, 0) + 1
            if len(errors) > WINDOW_S:
                for old in [t for t in errors if t <= second - WINDOW_S]:
                    del errors[old]
        else:
            q = bucket_of(queue_us)
            c = bucket_of(compute_us)
            self.queue[q] = self.queue.get(q, 0) + 1
            self.compute[c] = self.compute.get(c, 0) + 1
            self.queue_sum_us += queue_us
            self.compute_sum_us += compute_us

    def snapshot(self) -> dict[str, Any]:
        now = int(self.latency.clock())
        window_errors = {
            name: sum(n for t, n in self.error_seconds.items() if now - t < sec)
            for name, sec in WINDOWS.items()
            if sec is not None
        }
        return {
            "counts": dict(self.counts),
            "window_errors": window_errors,
            "windows": {name: self.latency.window(sec) for name, sec in WINDOWS.items()},
            "max_us": self.latency.max_us,
            "queue": dict(self.queue),
            "compute": dict(self.compute),
            "sum_us": self.sum_us,
            "queue_sum_us": self.queue_sum_us,
            "compute_sum_us": self.compute_sum_us,
        }


@dataclass(slots=True)
class Recorder:
    series: dict[SeriesKey, RequestSeries] = field(default_factory=dict)
    unrouted: dict[tuple[str, str], int] = field(default_factory=dict)  # (protocol, code): unknown names
    control_changes: dict[tuple[str, str], int] = field(default_factory=dict)  # (endpoint, action)
    in_flight: int = 0

    def get(self, key: SeriesKey) -> RequestSeries:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = RequestSeries(key)
        return s

    def observe_unrouted(self, protocol: str, code: str) -> None:
        k = (protocol, code)
        self.unrouted[k] = self.unrouted.get(k, 0) + 1

    def observe_control(self, endpoint: str, action: str) -> None:
        k = (endpoint, action)
        self.control_changes[k] = self.control_changes.get(k, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "series": {k: s.snapshot() for k, s in list(self.series.items())},
            "batch_sizes": {},  # filled from the versions' own statistics by the service
            "unrouted": dict(self.unrouted),
            "control_changes": dict(self.control_changes),
            "in_flight": self.in_flight,
        }


def _add(into: dict[Any, int], more: dict[Any, int]) -> None:
    for k, n in more.items():
        into[k] = into.get(k, 0) + n


def merge_snapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum the snapshots of several processes into one of the same shape."""
    out: dict[str, Any] = {
        "series": {},
        "batch_sizes": {},
        "unrouted": {},
        "control_changes": {},
        "in_flight": 0,
    }
    for snap in snapshots:
        for key, s in snap["series"].items():
            have = out["series"].get(key)
            if have is None:
                out["series"][key] = {
                    **s,
                    "counts": dict(s["counts"]),
                    "window_errors": dict(s["window_errors"]),
                    "windows": {w: dict(h) for w, h in s["windows"].items()},
                    "queue": dict(s["queue"]),
                    "compute": dict(s["compute"]),
                }
                continue
            _add(have["counts"], s["counts"])
            _add(have["window_errors"], s["window_errors"])
            for w, h in s["windows"].items():
                have["windows"][w] = merge([have["windows"][w], h])
            _add(have["queue"], s["queue"])
            _add(have["compute"], s["compute"])
            for k in ("sum_us", "queue_sum_us", "compute_sum_us"):
                have[k] += s[k]
            have["max_us"] = max(have["max_us"], s["max_us"])
        for key, h in snap["batch_sizes"].items():
            _add(out["batch_sizes"].setdefault(key, {}), h)
        _add(out["unrouted"], snap["unrouted"])
        _add(out["control_changes"], snap["control_changes"])
        out["in_flight"] += snap["in_flight"]
    return out
