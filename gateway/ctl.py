"""`onnxgate ctl`: a small client for the control API, on the standard library alone (urllib).

It prints tables for lists and indented JSON for single endpoints, exits 0 on success and 1 with the
server's error message on failure, so it works both at a terminal and in deployment scripts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8003"
TIMEOUT_S = 30.0
STATS_WINDOWS = ("10s", "1m", "5m", "all")
STATS_HEADER = [
    "ROLE",
    "MODEL",
    "VERSION",
    "COUNT",
    "ERRORS",
    "P50_MS",
    "P90_MS",
    "P99_MS",
    "P99.9_MS",
    "MAX_MS",
]


class CtlError(Exception):
    """A failed call: the message is what the user sees."""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ctl's options and commands to `parser` (the `ctl` subcommand of `onnxgate`, or its own)."""
    parser.add_argument("--url", help=f"control API (default: $ONNXGATE_CONTROL_URL or {DEFAULT_URL})")
    parser.add_argument("--token", help="bearer token (default: $ONNXGATE_TOKEN)")
    parser.add_argument("--if-match", type=int, metavar="REV", help="change only if at this revision")
    parser.add_argument("--json", action="store_true", help="print the server's JSON as it is")
    cmd = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    cmd.add_parser("get", help="list endpoints, or show one").add_argument("name", nargs="?")
    p = cmd.add_parser("set-weight", help="set the challenger's share of traffic")
    p.add_argument("name")
    p.add_argument("weight", type=_fraction)
    p = cmd.add_parser("set-shadow", help="mirror a sample of requests to MODEL VERSION")
    p.add_argument("name")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.add_argument("rate", type=_fraction)
    cmd.add_parser("remove-shadow", help="stop mirroring").add_argument("name")
    p = cmd.add_parser("set-challenger", help="send WEIGHT of traffic to MODEL VERSION")
    p.add_argument("name")
    p.add_argument("model")
    p.add_argument("version", type=int)
    p.add_argument("weight", type=_fraction)
    cmd.add_parser("promote", help="make the challenger the champion").add_argument("name")
    cmd.add_parser("rollback", help="undo the latest change").add_argument("name")
    p = cmd.add_parser("audit", help="the latest changes")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--endpoint", help="only this endpoint's changes")
    cmd.add_parser("models", help="the model repository's index")
    p = cmd.add_parser("stats", help="per-version request counts, latency quantiles and shadow comparisons")
    p.add_argument("name")
    p.add_argument("--window", choices=STATS_WINDOWS, default="1m", help="latency window (default: 1m)")


class Client:
    def __init__(self, url: str, token: str | None, if_match: int | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.if_match = if_match

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.if_match is not None and method != "GET":
            headers["If-Match"] = str(self.if_match)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or exc.reason
            raise CtlError(f"{exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(f"cannot reach the control API at {self.url}: {reason}") from None


def _target(t: dict[str, Any] | None, fraction: str) -> str:
    return "-" if t is None else f"{t['model']}:{t['version']} @{t[fraction]:g}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def _render(command: str, result: Any) -> str:
    if command == "get" and "endpoints" in result:
        rows = [
            [
                e["name"],
                f"{e['champion']['model']}:{e['champion']['version']}",
                _target(e["challenger"], "weight"),
                _target(e["shadow"], "sample_rate"),
                str(e["revision"]),
                e["changed_by"],
                e["changed_at"],
            ]
            for e in result["endpoints"]
        ]
        return _table(rows, ["NAME", "CHAMPION", "CHALLENGER", "SHADOW", "REV", "BY", "AT"])
    if command == "audit":
        rows = [
            [
                e["time"],
                e["actor"],
                e["action"],
                e.get("endpoint") or e.get("model") or "",
                "" if e.get("revision") is None else str(e["revision"]),
            ]
            for e in result["entries"]
        ]
        return _table(rows, ["TIME", "ACTOR", "ACTION", "TARGET", "REV"])
    if command == "models":
        rows = [[m["name"], m["version"], m["state"], m["reason"]] for m in result["models"]]
        return _table(rows, ["MODEL", "VERSION", "STATE", "REASON"])
    return json.dumps(result, indent=2)


def _number(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def render_stats(result: dict[str, Any], window: str) -> str:
    """The stats answer as a table of series in `window`, then one line per shadow comparison."""
    rows = []
    for s in result["series"]:
        w = s["windows"][window]
        q = [_number(w[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")]
        rows.append([s["role"], s["model"], s["version"], str(w["count"]), str(w["errors"]), *q])
    lines = [f"endpoint {result['endpoint']}, window {window}"]
    lines.append(_table(rows, STATS_HEADER) if rows else "no requests yet")
    shadow = result["shadow"]
    counters = shadow["counters"]
    if any(counters.values()) or shadow["comparisons"]:
        lines.append("shadow: " + " ".join(f"{k}={v}" for k, v in counters.items()))
        for c in shadow["comparisons"]:
            agreement = c["argmax_agreement"]
            lines.append(
                f"  {c['served_model']}:{c['served_version']} vs {c['shadow_model']}:{c['shadow_version']} "
                f"{c['output']}: compared={c['compared']} mismatched={c['mismatched']} "
                f"max_abs_diff={c['max_abs_diff']:.4g} mean_abs_diff={_number(c['mean_abs_diff'], '.4g')} "
                f"argmax_agreement={'-' if agreement is None else f'{agreement:.2%}'}"
            )
    return "\n".join(lines)


def _request(args: argparse.Namespace) -> tuple[str, str, Any]:
    """The (method, path, body) that a parsed command line asks for."""
    c = args.ctl_command
    name = urllib.parse.quote(getattr(args, "name", None) or "", safe="")
    endpoint = f"/v1/endpoints/{name}"
    if c == "get":
        return "GET", endpoint if name else "/v1/endpoints", None
    if c == "set-weight":
        return "PATCH", endpoint, {"challenger": {"weight": args.weight}}
    if c == "set-shadow":
        return (
            "PATCH",
            endpoint,
            {"shadow": {"model": args.model, "version": args.version, "sample_rate": args.rate}},
        )
    if c == "remove-shadow":
        return "PATCH", endpoint, {"shadow": None}
    if c == "set-challenger":
        return (
            "PATCH",
            endpoint,
            {"challenger": {"model": args.model, "version": args.version, "weight": args.weight}},
        )
    if c in ("promote", "rollback"):
        return "POST", f"{endpoint}/{c}", None
    if c == "stats":
        return "GET", f"{endpoint}/stats", None
    if c == "audit":
        query = {"limit": str(args.limit)} | ({"endpoint": args.endpoint} if args.endpoint else {})
        return "GET", "/v1/audit?" + urllib.parse.urlencode(query), None
    return "GET", "/v1/models", None


def run(args: argparse.Namespace) -> int:
    """Run a parsed `ctl` command line; the exit status."""
    url = args.url or os.environ.get("ONNXGATE_CONTROL_URL") or DEFAULT_URL
    client = Client(url, args.token or os.environ.get("ONNXGATE_TOKEN"), args.if_match)
    method, path, body = _request(args)
    try:
        result = client.call(method, path, body)
    except CtlError as exc:
        print(f"onnxgate ctl: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.ctl_command == "stats":
        print(render_stats(result, args.window))
    else:
        print(_render(args.ctl_command, result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onnxgate ctl", description="change routing at run time")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
