"""Results out: the JSON file, the Markdown tables, the latency-vs-load plot, and the progress bar.

The targets are checked here from the rows of one run (ratios between rows measured minutes apart on the
same machine), so a reader sees in one table what was met and what was not.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Ticker

# ------------------------------------------------------------------------------------------- progress


class ProgressBar(Ticker):
    """A carriage-return bar on stderr; one line per run when stderr is not a terminal."""

    width = 24

    def __init__(self, label: str, index: int, stream: Any = None) -> None:
        self.label = label
        self.index = index
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = 0.0
        self.finished = False

    def update(self, elapsed_s: float, total_s: float, done: int) -> None:
        frac = min(1.0, elapsed_s / total_s) if total_s > 0 else 1.0
        now = time.monotonic()
        if frac < 1.0 and now - self.last < (0.2 if self.tty else 1e9):
            return
        self.last = now
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{self.index:2d}] {self.label:<52.52} [{bar}] {elapsed_s:5.1f}/{total_s:.1f}s {done:>9,} answers"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if frac >= 1.0 else ""))
        elif frac >= 1.0 and not self.finished:
            self.stream.write(line + "\n")
        if frac >= 1.0:
            self.finished = True
        self.stream.flush()


class Progress:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, label: str) -> ProgressBar:
        self.count += 1
        return ProgressBar(label, self.count)


# ---------------------------------------------------------------------------------------------- targets


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "throughput") -> float | None:
    if a is None or b is None or not a.get(key) or not b.get(key):
        return None
    return round(a[key] / b[key], 2)


def _target(name: str, goal: str, value: float | None, ok: bool | None, how: str) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": value, "met": ok, "how": how}


def targets(rows: list[dict[str, Any]], c: int, micro: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every target of the issue that this run's rows can answer (met: None when a row is missing)."""
    og = "(2) onnxgate gRPC"
    grpc = _row(rows, scenario=og, protocol="grpc", concurrency=c, mode="closed")
    grpc1 = _row(rows, scenario=og, protocol="grpc", concurrency=1, mode="closed")
    stream = _row(rows, scenario=og, protocol="grpc_stream", concurrency=c)
    tri = "(8) Triton 2.51 (pytriton)"
    mls = "(7) MLServer 1.7.1"
    out = []

    def ge(name: str, a: Any, b: Any, goal: float, how: str) -> None:
        r = _ratio(a, b)
        out.append(_target(name, f">= {goal}x", r, None if r is None else r >= goal, how))

    ge(f"gRPC unary c={c} vs Triton", grpc, _row(rows, scenario=tri, protocol="grpc", concurrency=c), 1.2,
       "onnxgate / Triton inferences/s")  # fmt: skip
    ge(f"gRPC unary c={c} vs MLServer", grpc, _row(rows, scenario=mls, protocol="grpc", concurrency=c), 4.0,
       "onnxgate / MLServer inferences/s")  # fmt: skip
    ge(f"HTTP binary c={c} vs Triton", _row(rows, scenario="(3) onnxgate HTTP", protocol="http_binary", concurrency=c),
       _row(rows, scenario=tri, protocol="http_binary", concurrency=c), 1.0, "onnxgate / Triton inferences/s")  # fmt: skip
    ge(f"HTTP JSON c={c} vs MLServer", _row(rows, scenario="(3) onnxgate HTTP", protocol="http_json", concurrency=c),
       _row(rows, scenario=mls, protocol="http_json", concurrency=c), 2.0, "onnxgate / MLServer inferences/s")  # fmt: skip
    cpu = grpc.get("server_cpu_us_per_inf") if grpc else None
    out.append(_target(f"server CPU per inference, gRPC c={c}", "<= 120 us", cpu, None if cpu is None else cpu <= 120,
                       "CPU s of the server and its children / inferences"))  # fmt: skip
    bare = _row(rows, server="onnxruntime")
    if grpc1 and bare and grpc1.get("p50_ms") is not None and bare.get("p50_ms") is not None:
        extra = round((grpc1["p50_ms"] - bare["p50_ms"]) * 1000, 1)
        out.append(
            _target("gRPC c=1 p50 over bare ORT p50", "<= 150 us", extra, extra <= 150, "p50 difference (us)")
        )
    else:
        out.append(_target("gRPC c=1 p50 over bare ORT p50", "<= 150 us", None, None, "p50 difference (us)"))
    ge(f"gRPC stream c={c} vs Triton unary", stream, _row(rows, scenario=tri, protocol="grpc", concurrency=c), 2.0,
       "onnxgate stream / Triton unary inferences/s")  # fmt: skip
    sc = "(4) challenger 20% + shadow 100%"
    plain = _row(rows, scenario=sc, variant="no shadow") or grpc
    ge("challenger 20% + shadow 100% vs plain", _row(rows, scenario=sc, variant="split"), plain, 0.6,
       "served inferences/s, split / plain")  # fmt: skip
    slow = _row(rows, scenario=sc, variant="slow shadow")
    if slow and plain and slow.get("arms", {}).get("champion") and plain.get("p99_ms"):
        p99 = slow["arms"]["champion"]["p99_ms"]
        change = round(p99 / plain["p99_ms"] - 1.0, 3)
        shadow = slow.get("shadow", {})
        out.append(_target("champion p99 with a 10x slower shadow", "within +10%, excess dropped and counted",
                           change, change <= 0.10,
                           f"p99 change: {p99} ms vs {plain['p99_ms']} ms with no shadow; shadow queued "
                           f"{shadow.get('queued')}, dropped {shadow.get('dropped')}"))  # fmt: skip
    else:
        out.append(
            _target("champion p99 with a 10x slower shadow", "within +10%", None, None, "rows missing")
        )
    bs = "(5) dynamic batching"
    ge("dynamic batching c=32, 1024-wide MLP", _row(rows, scenario=bs, variant="batched"),
       _row(rows, scenario=bs, variant="unbatched"), 2.0, "batched / unbatched inferences/s")  # fmt: skip
    one = _row(rows, scenario="(6) 2 workers", variant="1 worker") or grpc
    two = _row(rows, scenario="(6) 2 workers", variant="2 workers", concurrency=c)
    ge(f"2 workers vs 1, gRPC c={c}", two, one, 1.6, "inferences/s")
    total = (micro or {}).get("routing_recording_us")
    out.append(_target("routing + recording per request", "< 5 us", total, None if total is None else total < 5,
                       "Router.choose + RequestSeries.observe + ShadowDispatcher.offer (timeit, best of 5)"))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- markdown


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _load(r: dict[str, Any]) -> str:
    return f"c={r['concurrency']}" if r.get("mode") != "open" else f"{r['rate']:,.0f}/s open"


def reference_for(r: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[str, float | None]:
    """The ratio column: onnxgate rows vs Triton/MLServer at the same protocol and load; peers vs onnxgate."""
    if r.get("mode") == "open" or r["server"] not in ("onnxgate", "mlserver", "triton"):
        return "", None
    proto, c = r["protocol"], r["concurrency"]
    if r["server"] == "onnxgate":
        if r["scenario"] not in ("(2) onnxgate gRPC", "(3) onnxgate HTTP"):
            return "", None
        for scenario, short in (("(8) Triton 2.51 (pytriton)", "Triton"), ("(7) MLServer 1.7.1", "MLServer")):
            peer_proto = "grpc" if proto == "grpc_stream" else proto
            peer = _row(rows, scenario=scenario, protocol=peer_proto, concurrency=c)
            if peer and peer.get("throughput"):
                what = f"{short} unary" if proto == "grpc_stream" else short
                return f"{r['throughput'] / peer['throughput']:.2f}x {what}", None
        return "", None
    gate = _row(rows, scenario="(2) onnxgate gRPC" if proto == "grpc" else "(3) onnxgate HTTP", protocol=proto,
                concurrency=c)  # fmt: skip
    if gate and r.get("throughput"):
        return f"onnxgate {gate['throughput'] / r['throughput']:.2f}x", None
    return "", None


def _loads(m: dict[str, Any]) -> str:
    start = m.get("loadavg_at_start") or [None]
    end = m.get("loadavg_at_end") or [None]
    return f"{_fmt(start[0])} at the start, {_fmt(end[0])} at the end"


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        f"Measured {result['started']} on {result['machine']['cpus']} CPUs ({result['machine']['cpu_model']}), "
        f"Python {result['machine']['python']}, {result['settings']['duration_s']} s per run after "
        f"{result['settings']['warmup_s']} s warm-up; one 1x64 FP32 row per request. Load average (1 min) "
        f"{_loads(result['machine'])}: other work on the shared machine moves absolute numbers.",
        "",
        "| scenario | server | variant | protocol | load | inferences/s | p50 ms | p90 ms | p99 ms | p99.9 ms "
        "| server CPU us/inf | server / client cores | errors | ratio |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        errors = ", ".join(f"{k} {v}" for k, v in r.get("errors", {}).items()) or "0"
        ratio, _ = reference_for(r, rows)
        bound = " (client-bound)" if r.get("client_bound") else ""
        cores = f"{_fmt(r.get('server_cpu_cores'))} / {_fmt(r.get('client_cpu_cores'))}{bound}"
        lines.append(
            f"| {r['scenario']} | {r['server']} | {r['variant']} | {r['protocol']} | {_load(r)} "
            f"| {_fmt(r['throughput'], 0)} | {_fmt(r['p50_ms'], 3)} | {_fmt(r['p90_ms'], 3)} | {_fmt(r['p99_ms'], 3)} "
            f"| {_fmt(r['p999_ms'], 3)} | {_fmt(r.get('server_cpu_us_per_inf'), 0)} | {cores} | {errors} | {ratio} |"
        )
    arm_rows = [r for r in rows if len(r.get("arms", {})) > 1]
    if arm_rows:
        lines += ["", "Per arm (from the answers' model_version):", "",
                  "| scenario | variant | arm | version | share | p50 ms | p90 ms | p99 ms | p99.9 ms |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in arm_rows:
            for arm, a in r["arms"].items():
                lines.append(
                    f"| {r['scenario']} | {r['variant']} | {arm} | {a['version']} | {a['share']:.1%} "
                    f"| {_fmt(a['p50_ms'], 3)} | {_fmt(a['p90_ms'], 3)} | {_fmt(a['p99_ms'], 3)} | {_fmt(a['p999_ms'], 3)} |"
                )
    notes: dict[str, list[str]] = {}  # a note said of several rows is listed once, with their loads
    for r in rows:
        for n in r.get("notes", []):
            notes.setdefault(f"{r['scenario']} ({r['variant']}): {n}", []).append(
                f"{r['protocol']} {_load(r)}"
            )
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {text} [{', '.join(loads)}]" for text, loads in notes.items()]
    if result.get("targets"):
        lines += ["", "| target | goal | measured | met | how |", "|---|---|---|---|---|"]
        for t in result["targets"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(f"| {t['target']} | {t['goal']} | {_fmt(t['measured'])} | {met} | {t['how']} |")
    micro = result.get("micro")
    if micro:
        lines += ["", "| hot-path function (micro-benchmark) | us per call |", "|---|---:|"]
        for name, us in micro["us_per_call"].items():
            lines.append(f"| {name} | {_fmt(us, 3)} |")
    if result.get("skipped"):
        lines += ["", "Skipped:", ""]
        lines += [f"- {s['scenario']}: {s['reason']}" for s in result["skipped"]]
    profile = result.get("profile")
    if profile and profile.get("self"):
        lines += [
            "",
            f"py-spy profile of onnxgate under gRPC load ({profile['samples']} samples), top self time:",
            "",
        ]
        lines += [f"- {pct}% {name}" for name, pct in profile["self"][:10]]
        lines += ["", "and the gateway's own frames by inclusive time:", ""]
        lines += [f"- {pct}% {name}" for name, pct in profile.get("inclusive_gateway", [])[:12]]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------- plot


_COLORS = {"onnxgate": "tab:blue", "triton": "tab:green", "mlserver": "tab:red"}
_STYLES = {
    "grpc": ("-", "o"),
    "grpc_stream": ("-", "^"),
    "http_binary": ("--", "s"),
    "http_json": (":", "D"),
}


def plot(rows: list[dict[str, Any]], path: Path) -> str | None:
    """p50 and p99 against throughput, one line per server and protocol; None when written, else why not.

    Only the plain closed-loop rows and onnxgate's open-loop rows are drawn (the bare ORT limit would
    squash the axis, and the single-point variants of scenarios 4-6 are in the table).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'onnxgate[bench]')"
    series: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["server"] not in _COLORS or not r.get("throughput") or r.get("p50_ms") is None:
            continue
        if r["variant"] not in ("plain", "open loop"):
            continue
        series.setdefault((r["server"], r["protocol"], r["variant"]), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharex=True)
    for (server, protocol, variant), points in sorted(series.items()):
        points = sorted(points, key=lambda r: r["throughput"])
        style, marker = _STYLES.get(protocol, ("-", "o"))
        if variant == "open loop":
            style, marker = "-.", "x"
        label = f"{server} {protocol}" + (" (open loop)" if variant == "open loop" else "")
        for ax, q in zip(axes, ("p50_ms", "p99_ms"), strict=True):
            ax.plot(
                [p["throughput"] for p in points],
                [p[q] for p in points],
                linestyle=style,
                marker=marker,
                color=_COLORS[server],
                label=label,
            )
            for p in points:
                ax.annotate(
                    _load(p),
                    (p["throughput"], p[q]),
                    fontsize=6,
                    alpha=0.7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    for ax, q in zip(axes, ("p50", "p99"), strict=True):
        ax.set_xlabel("inferences/s")
        ax.set_ylabel(f"{q} latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{q} latency vs load (one 1x64 row per request)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------------------- all


def machine() -> dict[str, Any]:
    import os

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        ort = ""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": ort,
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def write_all(result: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "markdown": out / "results.md",
        "plot": out / "latency_vs_load.png",
    }
    why_not = plot(result["rows"], paths["plot"])
    if why_not:
        result.setdefault("warnings", []).append(f"no plot: {why_not}")
        del paths["plot"]
    paths["json"].write_text(json.dumps(result, indent=2, default=str))
    paths["markdown"].write_text(markdown(result))
    return paths
