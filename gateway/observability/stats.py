"""Per-version latency statistics of one endpoint, read from a records snapshot (the stats API's answer).

Rules of this module:
- Pure: the input is a snapshot as ``InferenceService.snapshot()`` (or the supervisor's merge of several)
  returns it; nothing here touches the live records, so it runs off the request path and on merged data.
- Latencies are answered in milliseconds. Quantiles are HDR bucket midpoints (``latency.quantiles``), so
  each is within half a bucket (< 0.4%) of the exact value; see ``window_stats`` for ``max``.
"""

from __future__ import annotations

from typing import Any

from gateway.observability.latency import quantiles
from gateway.observability.records import WINDOWS
from runtime.errors import NotFound

QUANTILES = {"p50_ms": 0.5, "p90_ms": 0.9, "p99_ms": 0.99, "p999_ms": 0.999}
SHADOW_COUNTERS = ("queued", "dropped", "failed", "timed_out", "compared")
_ROLE_ORDER = {"champion": 0, "challenger": 1, "shadow": 2, "pinned": 3}


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000.0, 3)


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def window_stats(counts: dict[int, int], max_us: int | None, errors: int | None) -> dict[str, Any]:
    """Count, errors and latency quantiles (ms) of one window's HDR bucket counts.

    ``max_ms`` is exact when ``max_us`` is given (the "all" window: the series keeps its true maximum, and
    quantiles are capped at it, since a bucket's midpoint may lie above it); for the rolling windows it is
    the upper bound of the highest bucket hit, at most 0.78% above the true maximum of that window.
    ``errors`` is None where the records cannot tell (see ``endpoint_stats``).
    """
    total, values, top_us = quantiles(counts, QUANTILES.values())
    top = top_us
    if max_us is not None and total:  # a midpoint may lie above the true maximum in its bucket
        top = float(max_us)
        values = [None if v is None else min(v, top) for v in values]
    out: dict[str, Any] = {"count": total, "errors": errors}
    out.update({name: _ms(v) for name, v in zip(QUANTILES, values, strict=True)})
    out["max_ms"] = _ms(top)
    return out


def series_stats(key: tuple[str, str, str, str], s: dict[str, Any]) -> dict[str, Any]:
    """One (endpoint, model, version, role) series: per-window latency and counts by protocol and code."""
    _, model, version, role = key
    by_protocol: dict[str, dict[str, int]] = {}
    for (protocol, code), n in sorted(s["counts"].items()):
        by_protocol.setdefault(str(protocol), {})[str(code)] = n
    errors = sum(n for (_, code), n in s["counts"].items() if code != "OK")
    windows = {
        name: window_stats(
            s["windows"].get(name, {}),
            s["max_us"] if seconds is None else None,
            errors if seconds is None else s["window_errors"].get(name, 0),
        )
        for name, seconds in WINDOWS.items()
    }
    return {
        "model": str(model),
        "version": str(version),
        "role": str(role),
        "requests": by_protocol,
        "windows": windows,
    }


def shadow_stats(shadow: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The endpoint's shadow counters and, per served/shadow version pair and output, the comparison."""
    raw = shadow.get("counters", {}).get(endpoint, {})
    counters = {name: int(raw.get(name, 0)) for name in SHADOW_COUNTERS}
    comparisons = []
    for key, pair in shadow.get("pairs", {}).items():
        ep, served_model, served_version, shadow_model, shadow_version = key
        if ep != endpoint:
            continue
        for output, o in sorted(pair["outputs"].items()):
            numeric = o["compared"] - o["mismatched"]
            comparisons.append(
                {
                    "served_model": served_model,
                    "served_version": served_version,
                    "shadow_model": shadow_model,
                    "shadow_version": shadow_version,
                    "output": output,
                    "compared": o["compared"],
                    "mismatched": o["mismatched"],
                    "max_abs_diff": o["max_abs_diff"],
                    "mean_abs_diff": o["sum_mean_abs_diff"] / numeric if numeric else None,
                    "argmax_rows": o["argmax_rows"],
                    "argmax_agreement": o["argmax_agree"] / o["argmax_rows"] if o["argmax_rows"] else None,
                }
            )
    comparisons.sort(
        key=lambda c: (
            c["served_model"],
            _version_order(c["served_version"]),
            c["shadow_model"],
            _version_order(c["shadow_version"]),
            c["output"],
        )
    )
    return {"counters": counters, "comparisons": comparisons}


def endpoint_stats(snapshot: dict[str, Any], endpoint: str, known: bool = False) -> dict[str, Any]:
    """Everything the records say about `endpoint`, as JSON-ready data.

    ``series``: one entry per (model, version, role) the endpoint has served, each with ``requests``
    (counts by protocol, then code, since start) and ``windows`` (10s, 1m, 5m, all): ``count`` (every
    request, failed ones included: they are timed too), ``errors`` (non-"OK" codes, counted per
    second for the rolling windows), the p50, p90, p99
    and p99.9 latency and the max, in milliseconds (see ``window_stats``).
    ``shadow``: the endpoint's shadow counters and comparisons (``shadow_stats``).

    Raises NotFound when the endpoint has no records and is not `known` (configured); a known endpoint
    without traffic yet answers with empty series.
    """
    series = [series_stats(key, s) for key, s in snapshot["records"]["series"].items() if key[0] == endpoint]
    shadow = shadow_stats(snapshot.get("shadow", {}), endpoint)
    has_shadow = any(shadow["counters"].values()) or bool(shadow["comparisons"])
    if not (known or series or has_shadow):
        raise NotFound(f"unknown endpoint: '{endpoint}'")
    series.sort(key=lambda s: (_ROLE_ORDER.get(s["role"], 9), s["model"], _version_order(s["version"])))
    return {"endpoint": endpoint, "windows": list(WINDOWS), "series": series, "shadow": shadow}
