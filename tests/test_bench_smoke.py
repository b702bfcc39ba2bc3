"""The benchmark harness runs end to end against a real gateway: rows with answers, no errors, files written.

No timing assertions (speed lives in benchmarks/): only that the harness measures something and writes
its JSON, Markdown and plot. It runs in a subprocess, like users run it, so its processes and imports stay
out of the test process (which imports tritonclient elsewhere).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run_bench(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from benchmarks.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXGATE_")}
    return subprocess.run(
        [sys.executable, "-c", code, "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_quick_bench_against_onnxgate(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = _run_bench(
        out, "--quick", "--scenarios", "grpc,http", "--duration", "1", "--warmup", "0.3", "--concurrency", "1"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert {r["protocol"] for r in rows} == {"grpc", "grpc_stream", "http_binary", "http_json"}
    for row in rows:
        assert row["server"] == "onnxgate"
        assert row["throughput"] > 0, row
        assert row["errors"] == {}, row
        assert row["p50_ms"] is not None and row["p50_ms"] > 0
        assert row["server_cpu_us_per_inf"] is not None and row["server_cpu_us_per_inf"] > 0
        assert set(row["arms"]) == {"champion"}, row["arms"]
    assert result["failed"] == [] and result["skipped"] == []
    markdown = (out / "results.md").read_text()
    assert "| (2) onnxgate gRPC | onnxgate | plain | grpc | c=1 |" in markdown
    assert "| target | goal | measured | met | how |" in markdown
    # matplotlib comes with the bench extra, which `make test` installs: the plot must be there.
    png = (out / "latency_vs_load.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_bench_refuses_bad_arguments(tmp_path: Path) -> None:
    proc = _run_bench(tmp_path / "bad", "--scenarios", "nonesuch")
    assert proc.returncode == 2
    assert "unknown scenario" in proc.stderr


def test_loadgen_refuses_non_loopback_targets() -> None:
    code = (
        "from benchmarks.loadgen import LoadSpec\n"
        "try:\n"
        "    LoadSpec('grpc', 8001, b'', host='10.0.0.1')\n"
        "except ValueError as exc:\n"
        "    print('refused:', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "refused: the load generator only targets loopback addresses" in proc.stdout, proc.stderr
