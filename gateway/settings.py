"""Gateway settings: validated once at start-up, then frozen.

Precedence, lowest to highest: built-in defaults, the TOML config file, ``ONNXGATE_*`` environment
variables, command-line flags. Relative paths in the config file are relative to the file's folder, so a
config can be moved together with its repository.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import InvalidArgument


class SettingsError(ValueError):
    """A configuration mistake; the CLI prints it and exits with status 2."""


@dataclass(frozen=True, slots=True)
class TargetSettings:
    model: str
    version: int
    weight: float = 0.0  # challenger only
    sample_rate: float = 0.0  # shadow only


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    name: str
    champion: TargetSettings
    challenger: TargetSettings | None = None
    shadow: TargetSettings | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits; violations are refused before anything is allocated."""

    max_body_bytes: int = 64 * 1024 * 1024  # HTTP body and gRPC message size
    max_tensor_elements: int = 1 << 28
    max_inputs: int = 64
    max_json_depth: int = 64
    max_bytes_element: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """Every field can be set in gateway.toml, as ONNXGATE_<FIELD> in the environment, or as a flag."""

    model_repository: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    control_port: int = 8003
    state_dir: Path = Path("state")
    workers: int = 1
    # Threads that run ONNX Runtime sessions (each session itself uses its own intra-op threads).
    inference_threads: int = 0  # 0 = number of CPUs
    model_control: bool = False  # repository load/unload over the inference APIs
    control_host: str | None = None  # control listener address; None = same as `host`
    tokens_file: Path | None = None  # bearer tokens for the control API (TOML [[tokens]] name/secret/role)
    inference_auth: bool = False  # inference APIs also require a token from tokens_file
    shadow_queue_size: int = 1024  # shadow work waiting to run; beyond it work is dropped and counted
    shadow_concurrency: int = 2  # shadow requests running at once
    shadow_timeout_s: float = 5.0  # a shadow request that takes longer is abandoned and counted
    log_level: str = "INFO"
    limits: Limits = field(default_factory=Limits)
    endpoints: tuple[EndpointSettings, ...] = ()
    config_file: Path | None = None


_SCALAR_FIELDS = {
    f.name: f for f in dataclasses.fields(Settings) if f.name not in ("limits", "endpoints", "config_file")
}


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Turn a TOML or environment value into the field's type, with a message naming the setting."""
    text = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if "Path" in text:
            return Path(value) if value is not None else None
        if "bool" in text:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if "float" in text:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if "int" in text:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"setting '{name}' must be {text}, got {value!r}") from None


def _target(endpoint: str, role: str, raw: Any) -> TargetSettings | None:
    if raw is None:
        return None
    where = f"endpoint '{endpoint}' {role}"
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
        raise SettingsError(f"{where} must be a table with 'model' and 'version'")
    version = raw.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise SettingsError(f"{where}: 'version' must be a positive integer, got {version!r}")
    weight = raw.get("weight", 0.0)
    rate = raw.get("sample_rate", 0.0)
    for key, v in (("weight", weight), ("sample_rate", rate)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
            raise SettingsError(f"{where}: '{key}' must be a number in [0, 1], got {v!r}")
    return TargetSettings(raw["model"], version, float(weight), float(rate))


def _endpoints(raw: Any) -> tuple[EndpointSettings, ...]:
    if not isinstance(raw, dict):
        raise SettingsError("'endpoints' must be a table of endpoint tables")
    result = []
    for name, body in raw.items():
        if not isinstance(body, dict):
            raise SettingsError(f"endpoint '{name}' must be a table")
        champion = _target(name, "champion", body.get("champion"))
        if champion is None:
            raise SettingsError(f"endpoint '{name}' needs a champion")
        result.append(
            EndpointSettings(
                name,
                champion,
                _target(name, "challenger", body.get("challenger")),
                _target(name, "shadow", body.get("shadow")),
            )
        )
    return tuple(result)


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, the config file, the environment and flag overrides (None values are ignored)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    endpoints: tuple[EndpointSettings, ...] = ()
    limits: dict[str, Any] = {}
    if config_file is None and environ.get("ONNXGATE_CONFIG"):
        config_file = Path(environ["ONNXGATE_CONFIG"])
    if config_file is not None:
        try:
            table = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"config file {config_file} does not exist") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config file {config_file} cannot be read as TOML: {exc}") from None
        base = config_file.resolve().parent
        for key, value in table.items():
            if key == "endpoints":
                endpoints = _endpoints(value)
            elif key == "limits":
                if not isinstance(value, dict):
                    raise SettingsError("'limits' must be a table")
                limits.update(value)
            elif key in _SCALAR_FIELDS:
                values[key] = _coerce(key, value, _SCALAR_FIELDS[key].type)
                if isinstance(values[key], Path) and not values[key].is_absolute():
                    values[key] = base / values[key]
            else:
                raise SettingsError(f"config file {config_file}: unknown setting '{key}'")
    for key, spec in _SCALAR_FIELDS.items():
        env = environ.get(f"ONNXGATE_{key.upper()}")
        if env is not None and env != "":
            values[key] = _coerce(key, env, spec.type)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, _SCALAR_FIELDS[key].type)
    for key in ("shadow_queue_size", "shadow_concurrency"):
        if values.get(key, 1) < 1:
            raise SettingsError(f"setting '{key}' must be at least 1")
    limit_fields = {f.name for f in dataclasses.fields(Limits)}
    for key, value in limits.items():
        if key not in limit_fields or isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SettingsError(f"limits.{key} is unknown or not a positive integer")
    for key in ("http_port", "grpc_port", "metrics_port", "control_port"):
        port = values.get(key, _SCALAR_FIELDS[key].default)
        if not 0 <= port <= 65535:
            raise SettingsError(f"setting '{key}' must be a port number (0-65535), got {port}")
    if values.get("workers", 1) < 1:
        raise SettingsError("setting 'workers' must be at least 1")
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise SettingsError("endpoint names must be unique")
    try:
        return Settings(**values, limits=Limits(**limits), endpoints=endpoints, config_file=config_file)
    except InvalidArgument as exc:  # pragma: no cover - defensive: constructors do not validate today
        raise SettingsError(str(exc)) from None
