"""`onnxgate samples ls|tail|export DIR`: read the payload sample files a gateway wrote, without the gateway.

Reads only; safe on a folder that gateways are writing to (a document being written is skipped until it is
whole). Imports no server code, so it runs where the samples were copied to.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from gateway.observability import sample_files

_FOLLOW_INTERVAL_S = 0.5


def add_samples_parser(subparsers: Any) -> None:
    """Add `samples` to the `onnxgate` sub-commands; dispatch with `run_samples(args)`."""
    samples = subparsers.add_parser("samples", help="read payload sample files")
    sub = samples.add_subparsers(dest="samples_command", required=True)

    ls = sub.add_parser("ls", help="list sample files: size, records, time range")
    ls.add_argument("dir", type=Path)

    tail = sub.add_parser("tail", help="print the last records as one-line JSON summaries")
    tail.add_argument("dir", type=Path)
    tail.add_argument("-n", type=int, default=10, help="how many records (default 10)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing records as they arrive")

    export = sub.add_parser("export", help="write every record, tensors included, to one file")
    export.add_argument("dir", type=Path)
    export.add_argument("--format", choices=("jsonl", "npz"), required=True)
    export.add_argument("--output", "-o", type=Path, required=True)
    export.add_argument("--since", type=float, help="only records at or after this unix time")


def run_samples(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        print(f"onnxgate samples: {args.dir} is not a folder", file=sys.stderr)
        return 2
    if args.samples_command == "ls":
        return _ls(args.dir)
    if args.samples_command == "tail":
        return _tail(args.dir, args.n, args.follow)
    if args.samples_command == "export":
        export = sample_files.export_npz if args.format == "npz" else sample_files.export_jsonl
        count = export(args.dir, args.output, args.since)
        print(f"exported {count} records to {args.output}", file=sys.stderr)
        return 0
    return 2


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _ls(directory: Path) -> int:
    files = sample_files.list_files(directory)
    print(f"{'FILE':<48} {'BYTES':>12} {'RECORDS':>8}  FIRST                 LAST")
    for f in files:
        times = [r.get("time", 0.0) for r in sample_files.iter_file(f.path)]
        span = f"{_stamp(min(times))}  {_stamp(max(times))}" if times else "-"
        print(f"{f.path.name:<48} {f.size:>12} {len(times):>8}  {span}")
    print(f"{len(files)} files, {sum(f.size for f in files)} bytes")
    return 0


def _print(record: dict[str, Any]) -> None:
    print(json.dumps(sample_files.summary(record), ensure_ascii=False), flush=True)


def _tail(directory: Path, n: int, follow: bool) -> int:
    cursors: dict[Path, tuple[Any, int]] = {}
    last: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(n, 0))
    last.extend(_new_records(directory, cursors))
    for record in last:
        _print(record)
    try:
        while follow:
            time.sleep(_FOLLOW_INTERVAL_S)
            for record in _new_records(directory, cursors):
                _print(record)
    except KeyboardInterrupt:
        pass
    return 0


def _new_records(directory: Path, cursors: dict[Path, tuple[Any, int]]) -> Iterator[dict[str, Any]]:
    """Records appended since the last call, file by file in time order; `cursors` holds, per file, an
    unpacker (keeping a partly written document) and how many bytes it has been fed."""
    files = sample_files.list_files(directory)
    for gone in cursors.keys() - {f.path for f in files}:
        del cursors[gone]
    for f in files:
        reader, offset = cursors.get(f.path) or (sample_files.unpacker(), 0)
        if f.size > offset:
            try:
                with open(f.path, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read(f.size - offset)
            except FileNotFoundError:
                continue
            reader.feed(chunk)
            offset += len(chunk)
        try:
            records = list(reader)
        except (ValueError, msgpack.UnpackException):  # a corrupt file: read no further in it
            records, offset = [], sys.maxsize
        cursors[f.path] = (reader, offset)
        yield from records
