"""Per-model configuration: `models/<name>/config.toml`, validated once when the model loads.

Anything the ONNX graph already says (inputs, outputs, datatypes, dims, whether there is a batch dimension)
is read from the graph; the file only overrides. A config that cannot be parsed or holds a bad value makes
the model fail to load with a message that names the file and the field, never a crash of the gateway.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.datatypes import BY_CONFIG_NAME, BY_NAME, DataType
from runtime.errors import ModelLoadError

CONFIG_FILE = "config.toml"
MODEL_FILE = "model.onnx"
# Used when the graph has a dynamic first dimension on every tensor and the config sets no limit.
AUTO_MAX_BATCH_SIZE = 256


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions found on disk are loaded: all of them, the newest N, or a listed few."""

    kind: str = "all"  # "all" | "latest" | "specific"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        ordered = sorted(available)
        if self.kind == "latest":
            return ordered[-self.num_versions :]
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered


@dataclass(frozen=True, slots=True)
class TensorOverride:
    name: str
    datatype: DataType | None = None
    dims: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """Dynamic batching: concurrent requests are stacked into one ONNX Runtime call."""

    max_queue_delay_us: int = 100  # the longest a request waits for batch-mates before its batch leaves
    preferred_batch_sizes: tuple[int, ...] = ()  # a batch of one of these sizes leaves without waiting
    max_queue_size: int = 1024  # requests waiting to be batched; more are refused (UNAVAILABLE)
    # Batches of one version (per executor) running at once. While they run the next batch fills up, so a
    # small number makes batches grow with load; more helps only when one run cannot use the machine.
    max_concurrent_batches: int = 2


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    max_batch_size: int | None = None  # None: decided from the graph
    device: str = "cpu"  # "cpu" or "cuda:N"
    fallback: str | None = None  # "cpu" lets a GPU model run on the CPU when no GPU provider is there
    tensorrt: bool = False
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    warmup: bool = True
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    inputs: tuple[TensorOverride, ...] = ()
    outputs: tuple[TensorOverride, ...] = ()
    dynamic_batching: BatchingConfig | None = None
    max_queue_size: int = 1024  # admission bound per version, with or without batching
    # Versions whose warm-up run is faster than this run on the event loop thread (0: always a thread).
    inline_threshold_us: int = 50

    @property
    def cuda_device_id(self) -> int | None:
        if self.device == "cpu":
            return None
        return int(self.device.split(":", 1)[1]) if ":" in self.device else 0


class _Fields:
    """Reads typed fields from a TOML table and names the file and key in every complaint."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = "") -> None:
        self.path, self.table, self.prefix = path, table, prefix

    def fail(self, key: str, why: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path}: '{self.prefix}{key}' {why}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.table.get(key, default)
        if value is None:
            return default
        if isinstance(value, bool) and kind in (int, float):
            raise self.fail(key, "must be a number, not a boolean")
        if not isinstance(value, kind):
            raise self.fail(key, f"must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
        return value

    def int(self, key: str, default: int | None, minimum: int = 0) -> int | None:
        value = self.get(key, int, default)
        if value is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def sub(self, key: str) -> _Fields:
        return _Fields(self.path, self.get(key, dict, {}), f"{self.prefix}{key}.")


def _tensors(fields: _Fields, key: str) -> tuple[TensorOverride, ...]:
    result = []
    for i, item in enumerate(fields.get(key, list, [])):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise fields.fail(f"{key}[{i}]", "must be a table with a 'name'")
        sub = _Fields(fields.path, item, f"{key}[{i}].")
        dt_name = sub.get("datatype", str)
        datatype = None
        if dt_name is not None:
            datatype = BY_NAME.get(dt_name) or BY_CONFIG_NAME.get(dt_name)
            if datatype is None:
                raise sub.fail("datatype", f"is not a known datatype: {dt_name!r}")
        dims = sub.get("dims", list)
        if dims is not None and not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in dims
        ):
            raise sub.fail("dims", "must be a list of integers >= -1")
        result.append(TensorOverride(item["name"], datatype, tuple(dims) if dims is not None else None))
    return tuple(result)


def load_model_config(folder: Path) -> ModelConfig:
    """Parse `folder/config.toml` (absent means all defaults)."""
    path = folder / CONFIG_FILE
    name = folder.name
    if not path.exists():
        return ModelConfig(name=name)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot be read as TOML: {exc}") from None
    f = _Fields(path, table)
    device = f.get("device", str, "cpu")
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise f.fail("device", f"must be 'cpu' or 'cuda:N', got {device!r}")
    fallback = f.get("fallback", str)
    if fallback not in (None, "cpu"):
        raise f.fail("fallback", f"can only be 'cpu', got {fallback!r}")
    threads = f.sub("threads")
    warmup = f.sub("warmup")
    vp = f.sub("version_policy")
    kind = vp.get("policy", str, "all")
    if kind not in ("all", "latest", "specific"):
        raise vp.fail("policy", f"must be 'all', 'latest' or 'specific', got {kind!r}")
    versions = vp.get("versions", list, [])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in versions):
        raise vp.fail("versions", "must be a list of positive integers")
    policy = VersionPolicy(kind, vp.int("num_versions", 1, minimum=1) or 1, tuple(versions))
    batching = None
    if "dynamic_batching" in table:
        db = f.sub("dynamic_batching")
        preferred = db.get("preferred_batch_sizes", list, [])
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in preferred):
            raise db.fail("preferred_batch_sizes", "must be a list of positive integers")
        batching = BatchingConfig(
            max_queue_delay_us=db.int("max_queue_delay_us", 100) or 0,
            preferred_batch_sizes=tuple(sorted(preferred)),
            max_queue_size=db.int("max_queue_size", 1024, minimum=1) or 1024,
            max_concurrent_batches=db.int("max_concurrent_batches", 2, minimum=1) or 2,
        )
    return ModelConfig(
        name=name,
        max_batch_size=f.int("max_batch_size", None),
        device=device,
        fallback=fallback,
        tensorrt=bool(f.get("tensorrt", bool, False)),
        intra_op_threads=threads.int("intra_op", 1) or 0,
        inter_op_threads=threads.int("inter_op", 1) or 0,
        warmup=bool(warmup.get("enabled", bool, True)),
        version_policy=policy,
        inputs=_tensors(f, "inputs"),
        outputs=_tensors(f, "outputs"),
        dynamic_batching=batching,
        max_queue_size=f.int("max_queue_size", 1024, minimum=1) or 1024,
        inline_threshold_us=f.int("inline_threshold_us", 50) or 0,
    )
