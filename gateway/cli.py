"""The `onnxgate` command: `demo` writes the demo repository, `serve` runs the gateway."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.ctl import configure_parser as configure_ctl_parser
from gateway.ctl import run as run_ctl
from gateway.logs import configure as configure_logging
from gateway.loop import run as run_loop
from gateway.samples_cli import add_samples_parser, run_samples
from gateway.settings import SettingsError, load_settings


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnxgate"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxgate", description="ONNX model-serving gateway")
    parser.add_argument("--version", action="version", version=f"onnxgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="write the demo model repository and its gateway.toml into DIR")
    demo.add_argument("dir", type=Path)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="gateway.toml (default: $ONNXGATE_CONFIG)")
    serve.add_argument("--model-repository", type=Path, help="serve every model found in DIR")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="default 8000")
    serve.add_argument("--grpc-port", type=int, help="default 8001")
    serve.add_argument("--metrics-port", type=int, help="default 8002")
    serve.add_argument("--control-port", type=int, help="default 8003")
    serve.add_argument("--state-dir", type=Path, help="where the routing state is persisted")
    serve.add_argument("--workers", type=int, help="serving processes sharing the ports (default 1)")
    serve.add_argument("--inference-threads", type=int, help="threads running ONNX Runtime (default: CPUs)")
    serve.add_argument(
        "--allow-model-control",
        dest="model_control",
        action="store_const",
        const=True,
        help="allow repository load/unload over the inference APIs",
    )
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    serve.add_argument("--ports-file", type=Path, help="write the bound ports as JSON here once ready")

    ctl = sub.add_parser("ctl", help="read and change endpoint routing through the control API")
    configure_ctl_parser(ctl)
    add_samples_parser(sub)
    from benchmarks.cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import serve  # imported late: `onnxgate demo` need not load grpc and onnxruntime

    config = args.config
    if (
        config is None
        and args.model_repository is None
        and not os.environ.get("ONNXGATE_CONFIG")
        and not (os.environ.get("ONNXGATE_MODEL_REPOSITORY"))
    ):
        from gateway.demo import write_demo_repository

        config = write_demo_repository(_cache_dir() / "demo")
        print(f"onnxgate: serving the demo repository from {config.parent}", file=sys.stderr)
    overrides = {
        key: getattr(args, key)
        for key in (
            "model_repository",
            "host",
            "http_port",
            "grpc_port",
            "metrics_port",
            "control_port",
            "state_dir",
            "workers",
            "inference_threads",
            "model_control",
            "log_level",
        )
    }
    settings = load_settings(config, overrides)
    configure_logging(settings.log_level)
    run_loop(serve(settings, args.ports_file), settings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from gateway.demo import write_demo_repository

            path = write_demo_repository(args.dir)
            print(f"wrote the demo repository; serve it with: onnxgate serve --config {path}")
            return 0
        if args.command == "serve":
            return _serve(args)
        if args.command == "ctl":
            return run_ctl(args)
        if args.command == "samples":
            return run_samples(args)
        if args.command == "bench":
            from benchmarks.cli import run_bench

            return run_bench(args)
    except SettingsError as exc:
        print(f"onnxgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
