"""Sample files: the on-disk format of payload samples, and the readers that turn them back into numpy.

The format. A sample file is a stream of msgpack maps, one per record, appended by exactly one writer
(`gateway.observability.sampling.SampleSink`) and named ``<prefix>-<YYYYmmddTHHMMSSZ>-<seq>.msgpack`` (UTC
creation time; the prefix keeps the files of several worker processes in one folder apart). A record is
``{v, time, request_id, endpoint, model, version, role, routing_key, latency_us, status, error, inputs,
outputs}``; a tensor is ``{name, datatype, shape, data}`` where ``data`` is the raw little-endian bytes of the
array in C order (BYTES: a list of bin, one per element, so NUL and non-UTF-8 survive), or
``{name, redacted: true}`` for an input the configuration names as sensitive. A stream of self-delimiting
maps needs no index and no footer, so a file is readable while it is written and after a crash; a reader
stops at a truncated last map instead of failing.

The npz layout (`export_npz`): one entry per record along the leading axis of every array:
``request_id``, ``endpoint``, ``model``, ``version``, ``role``, ``status``, ``error``, ``routing_key``
(strings), ``time`` (float64), ``latency_us`` (int64); per tensor name ``input__<NAME>`` / ``output__<NAME>``,
stacked to ``(records, *shape)`` when every record holds it with one shape and datatype, else an object
array of per-record arrays (None where a record lacks it, e.g. redacted); and ``pair_served`` /
``pair_shadow``: aligned indices of the served and the shadow record of each request id seen in both roles.
Served against shadow answers, in one line::

    d = np.load("samples.npz", allow_pickle=True); y, y_shadow = d["output__y"][d["pair_served"]], d["output__y"][d["pair_shadow"]]
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from runtime.datatypes import BY_NAME, BYTES

FORMAT_VERSION = 1
SUFFIX = ".msgpack"
_NAME = re.compile(r"^(?P<prefix>.+)-(?P<stamp>\d{8}T\d{6}Z)-(?P<seq>\d+)\.msgpack$")
_SHADOW = "shadow"

Record = dict[str, Any]


def file_name(prefix: str, created: float, seq: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created))
    return f"{prefix}-{stamp}-{seq:06d}{SUFFIX}"


@dataclass(frozen=True, slots=True)
class SampleFile:
    path: Path
    prefix: str
    stamp: str
    seq: int
    size: int
    mtime: float


def list_files(directory: Path, prefix: str | None = None) -> list[SampleFile]:
    """Regular sample files (of one prefix, if given), oldest first by name; other entries are ignored,
    so a FIFO or a stray file in the folder is never opened, counted or deleted."""
    found: list[SampleFile] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:  # no folder (yet), or not one: nothing to read or to retain
        return found
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None or (prefix is not None and match["prefix"] != prefix):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:  # deleted by retention while we looked
            continue
        found.append(
            SampleFile(
                Path(entry.path), match["prefix"], match["stamp"], int(match["seq"]), st.st_size, st.st_mtime
            )
        )
    found.sort(key=lambda f: (f.stamp, f.prefix, f.seq))
    return found


# ------------------------------------------------------------------------------------------ tensors


def encode_tensor(
    name: str, datatype: str, shape: tuple[int, ...], array: np.ndarray | None
) -> dict[str, Any]:
    """The stored form of one tensor (None: redacted). Raises ValueError/KeyError on a malformed tensor."""
    if array is None:
        return {"name": name, "redacted": True}
    dims = [int(d) for d in shape]
    if datatype == BYTES.name:
        flat = np.asarray(array, dtype=object).reshape(dims).ravel()
        data: Any = [x if isinstance(x, bytes) else str(x).encode("utf-8", "surrogatepass") for x in flat]
    else:
        data = np.ascontiguousarray(np.asarray(array).reshape(dims), dtype=BY_NAME[datatype].numpy).tobytes()
    return {"name": name, "datatype": datatype, "shape": dims, "data": data}


def decode_tensor(tensor: dict[str, Any]) -> np.ndarray:
    """A stored tensor as numpy: fixed-size types wrap the bytes (read-only, no copy); BYTES is an object
    array of bytes."""
    shape = tuple(tensor["shape"])
    if tensor["datatype"] == BYTES.name:
        out = np.empty(len(tensor["data"]), dtype=object)
        out[:] = tensor["data"]
        return out.reshape(shape)
    return np.frombuffer(tensor["data"], dtype=BY_NAME[tensor["datatype"]].numpy).reshape(shape)


def tensor_json(tensor: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready tensor: data as a flat list; BYTES as strings when every element is UTF-8, otherwise
    base64 strings with ``"encoding": "base64"``. JSON has a single NaN: NaN sign and payload bits do not
    survive (the npz export is bit-exact)."""
    if tensor.get("redacted"):
        return {"name": tensor["name"], "redacted": True}
    out: dict[str, Any] = {"name": tensor["name"], "datatype": tensor["datatype"], "shape": tensor["shape"]}
    if tensor["datatype"] != BYTES.name:
        out["data"] = decode_tensor(tensor).ravel().tolist()
        return out
    try:
        out["data"] = [x.decode("utf-8") for x in tensor["data"]]
    except UnicodeDecodeError:
        out["data"] = [base64.b64encode(x).decode("ascii") for x in tensor["data"]]
        out["encoding"] = "base64"
    return out


def array_from_json(tensor: dict[str, Any]) -> np.ndarray:
    """The inverse of `tensor_json`, for readers of the JSONL export."""
    shape = tuple(tensor["shape"])
    if tensor["datatype"] != BYTES.name:
        return np.array(tensor["data"], dtype=BY_NAME[tensor["datatype"]].numpy).reshape(shape)
    if tensor.get("encoding") == "base64":
        items = [base64.b64decode(x) for x in tensor["data"]]
    else:
        items = [x.encode("utf-8") for x in tensor["data"]]
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def to_json(record: Record) -> Record:
    return {
        **record,
        "inputs": [tensor_json(t) for t in record["inputs"]],
        "outputs": [tensor_json(t) for t in record["outputs"]],
    }


def to_arrays(record: Record) -> Record:
    """The record with ``inputs``/``outputs`` as {name: array} and ``redacted`` listing the input names
    whose data was never stored."""
    return {
        **record,
        "inputs": {t["name"]: decode_tensor(t) for t in record["inputs"] if not t.get("redacted")},
        "outputs": {t["name"]: decode_tensor(t) for t in record["outputs"]},
        "redacted": [t["name"] for t in record["inputs"] if t.get("redacted")],
    }


def summary(record: Record) -> Record:
    """One line for `samples tail`: everything but the tensor data."""

    def meta(t: dict[str, Any]) -> Any:
        return (
            {"name": t["name"], "redacted": True}
            if t.get("redacted")
            else [t["name"], t["datatype"], t["shape"]]
        )

    out = {k: v for k, v in record.items() if k not in ("inputs", "outputs", "v")}
    out["inputs"] = [meta(t) for t in record["inputs"]]
    out["outputs"] = [meta(t) for t in record["outputs"]]
    return out


# ------------------------------------------------------------------------------------------ reading


def unpacker() -> msgpack.Unpacker:
    # max_buffer_size=0 means 4 GiB: a record is as large as the request it samples.
    return msgpack.Unpacker(raw=False, max_buffer_size=0)


def iter_file(path: Path) -> Iterator[Record]:
    """The records of one file, stopping quietly at a truncated or corrupt tail."""
    reader = unpacker()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                reader.feed(chunk)
                yield from reader
    except FileNotFoundError:  # deleted by retention between listing and reading
        return
    except (ValueError, msgpack.UnpackException):
        return


def iter_records(directory: Path, since: float | None = None) -> Iterator[Record]:
    """Every record of every sample file in the folder, files in time order; with `since`, only records
    whose time is at or after it (files last written before it are not opened)."""
    for f in list_files(directory):
        if since is not None and f.mtime < since:
            continue
        for record in iter_file(f.path):
            if since is None or record.get("time", 0.0) >= since:
                yield record


# ------------------------------------------------------------------------------------------ exports


def export_jsonl(directory: Path, out_path: Path, since: float | None = None) -> int:
    """One JSON object per line (tensors as in `tensor_json`); returns the number of records."""
    count = 0
    with open(out_path, "w", encoding="utf-8") as out:
        for record in iter_records(directory, since):
            out.write(
                json.dumps(to_json(record), ensure_ascii=False)
            )  # NaN/Infinity kept, as Python reads them
            out.write("\n")
            count += 1
    return count


def _stack(arrays: list[np.ndarray | None]) -> np.ndarray:
    first = arrays[0]
    if first is not None and all(
        a is not None and a.shape == first.shape and a.dtype == first.dtype for a in arrays
    ):
        return np.stack(arrays)  # type: ignore[arg-type]
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def _pairs(request_ids: list[str], roles: list[str]) -> tuple[np.ndarray, np.ndarray]:
    served: dict[str, int] = {}
    shadow: dict[str, int] = {}
    for i, (rid, role) in enumerate(zip(request_ids, roles, strict=True)):
        if rid:
            (shadow if role == _SHADOW else served).setdefault(rid, i)
    both = [rid for rid in served if rid in shadow]
    return (
        np.array([served[r] for r in both], dtype=np.int64),
        np.array([shadow[r] for r in both], dtype=np.int64),
    )


def _columns(records: Iterable[Record]) -> dict[str, np.ndarray]:
    rows = [to_arrays(r) for r in records]
    cols: dict[str, np.ndarray] = {}
    for key in ("request_id", "endpoint", "model", "version", "role", "status", "error", "routing_key"):
        cols[key] = np.array([str(r.get(key) or "") for r in rows], dtype=str)
    cols["time"] = np.array([r["time"] for r in rows], dtype=np.float64)
    cols["latency_us"] = np.array([r["latency_us"] for r in rows], dtype=np.int64)
    for side in ("inputs", "outputs"):
        names = dict.fromkeys(name for r in rows for name in r[side])
        for name in names:
            cols[f"{side[:-1]}__{name}"] = _stack([r[side].get(name) for r in rows])
    cols["pair_served"], cols["pair_shadow"] = _pairs(cols["request_id"].tolist(), cols["role"].tolist())
    return cols


def export_npz(directory: Path, out_path: Path, since: float | None = None) -> int:
    """All records as columns in one .npz (layout in the module docstring); returns the number of records.
    Holds the export in memory: narrow it with `since` for large folders."""
    cols = _columns(iter_records(directory, since))
    with open(out_path, "wb") as out:  # a file object: np.savez would otherwise append ".npz" to the name
        np.savez(out, **cols)  # type: ignore[arg-type]
    return len(cols["time"])
