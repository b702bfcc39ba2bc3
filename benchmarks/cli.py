"""`onnxgate bench`: run the scenarios side by side and write JSON, Markdown and a plot.

The gateway's CLI hooks this in with ``add_bench_parser(subparsers)`` and ``run_bench(args)``;
``python -m benchmarks`` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.scenarios import ORDER, QUICK, Bench, Options, Scenarios

DEFAULT_OUT = Path("benchmarks") / "results"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrencies must be positive integers")
    return values


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of numbers, got {text!r}"
        ) from None


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if names == ("all",):
        return ORDER
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {unknown}; choose from {', '.join(ORDER)} or all"
        )
    return names


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--scenarios",
        type=_scenarios,
        default=None,
        help=f"comma-separated, run in this order: {','.join(ORDER)} (default: all; --quick: {','.join(QUICK)})",
    )
    p.add_argument(
        "--duration", type=float, default=None, help="measured seconds per run (default 10; --quick 2)"
    )
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each run (default 1)")
    p.add_argument("--concurrency", type=_ints, default=None, help="closed-loop concurrencies (default 1,16)")
    p.add_argument(
        "--open-loop",
        type=_floats,
        default=None,
        help="open-loop runs at these fractions of onnxgate's best closed-loop gRPC rate (default 0.5,0.8)",
    )
    p.add_argument(
        "--clients", type=int, default=0, help="client processes per run (default: 1 up to c=4, else 2)"
    )
    p.add_argument(
        "--grpc-client",
        choices=("h2", "aio"),
        default="h2",
        help="h2: the harness's lean HTTP/2 client (default); aio: grpcio's asyncio client (3x its CPU here)",
    )
    p.add_argument("--profile", action="store_true", help="py-spy the gateway during an extra gRPC run")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 2 s runs, c=1,4, onnxgate and bare ORT only"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="results folder (default benchmarks/results/<timestamp>)"
    )
    return p


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `bench` to an argparse subparsers object (the gateway CLI's)."""
    p = subparsers.add_parser(
        "bench", help="run the benchmark scenarios side by side (see benchmarks/README.md)"
    )
    return configure_parser(p)


def options_from(args: argparse.Namespace) -> tuple[Options, tuple[str, ...]]:
    quick = bool(args.quick)
    # Absolute: the peers (MLServer, Triton) run with working directories of their own.
    out = (args.out or DEFAULT_OUT / time.strftime("%Y%m%d-%H%M%S")).resolve()
    options = Options(
        out=Path(out),
        duration_s=args.duration if args.duration is not None else (2.0 if quick else 10.0),
        warmup_s=args.warmup if args.warmup is not None else (0.5 if quick else 1.0),
        concurrency=args.concurrency or ((1, 4) if quick else (1, 16)),
        clients=args.clients,
        grpc_client=args.grpc_client,
        open_loop=args.open_loop if args.open_loop is not None else (() if quick else (0.5, 0.8)),
        profile=bool(args.profile),
        quick=quick,
    )
    return options, args.scenarios or (QUICK if quick else ORDER)


def run_bench(args: argparse.Namespace) -> int:
    """Run the selected scenarios; 0 when every run completed (skips are not failures), 1 otherwise."""
    from benchmarks import report

    options, names = options_from(args)
    if options.duration_s <= 0 or options.warmup_s < 0:
        print("onnxgate bench: --duration must be positive and --warmup not negative", file=sys.stderr)
        return 2
    progress = report.Progress()
    bench = Bench(options, progress)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "started": started,
        "machine": report.machine(),
        "settings": {
            "scenarios": list(names),
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "concurrency": list(options.concurrency),
            "clients": options.clients or "auto",
            "grpc_client": options.grpc_client,
            "open_loop": list(options.open_loop),
        },
    }
    failed: list[str] = []
    scenarios = Scenarios(bench)
    for name in names:
        try:
            getattr(scenarios, name)()
        except KeyboardInterrupt:
            failed.append(f"{name}: interrupted")
            break
        except Exception as exc:  # report the rest of the run rather than lose it
            import traceback

            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"scenario {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
    result["rows"] = bench.rows
    result["skipped"] = bench.skipped
    result["failed"] = failed
    result["micro"] = bench.extras.get("micro")
    result["profile"] = bench.extras.get("profile")
    result["targets"] = report.targets(bench.rows, options.reference_c, result["micro"])
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    paths = report.write_all(result, options.out)
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}", file=sys.stderr)
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="onnxgate bench", description=__doc__))
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
