"""Gateway settings: validated once at start-up, then frozen.

Precedence, lowest to highest: built-in defaults, the TOML config file, ``ONNXGATE_*`` environment
variables, command-line flags. Relative paths in the config file are relative to the file's folder, so a
config can be moved together with its repository.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
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
    sample_rate: float | None = None  # payload sampling; None = the [sampling] default


@dataclass(frozen=True, slots=True)
class SamplingSettings:
    """Payload sampling (`[sampling]` in gateway.toml); files go to `directory` (default: state_dir/samples)."""

    rate: float = 0.0  # fraction of requests whose inputs and outputs are written
    errors: bool = True  # always keep failed requests
    sensitive_inputs: tuple[str, ...] = ()  # input names whose data is never written
    directory: Path | None = None
    queue_size: int = 10_000
    max_file_bytes: int = 64 * 1024 * 1024
    max_file_age_s: float = 3600.0
    retention_bytes: int = 1024 * 1024 * 1024
    retention_age_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits; violations are refused before anything is allocated."""

    max_body_bytes: int = 64 * 1024 * 1024  # HTTP body and gRPC message size
    max_tensor_elements: int = 1 << 28
    max_inputs: int = 64
    max_json_depth: int = 64
    max_bytes_element: int = 16 * 1024 * 1024
    # Slow clients: after body_grace_s a request body must arrive at body_min_rate bytes/s on average or
    # the connection is closed (408); a gRPC stream silent for stream_idle_timeout_s is ended.
    body_grace_s: float = 5.0
    body_min_rate: int = 16 * 1024
    stream_idle_timeout_s: float = 600.0
    # A gRPC connection with no call for this long gets GOAWAY and is closed (native transport).
    connection_idle_timeout_s: float = 300.0


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
    # TLS: PEM certificate chain and private key. When set, every listener (HTTP inference, gRPC, metrics,
    # control) serves TLS 1.2+ only; plain-text clients are refused.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Mutual TLS for the control listener: PEM bundle of the CA(s) whose client certificates it accepts.
    # Needs tls_cert/tls_key. Without a tokens_file a verified client is an operator named by its
    # certificate's common name; with one, tokens still decide (the certificate is an extra gate).
    control_client_ca: Path | None = None
    shadow_queue_size: int = 1024  # shadow work waiting to run; beyond it work is dropped and counted
    shadow_concurrency: int = 2  # shadow requests running at once
    shadow_timeout_s: float = 5.0  # a shadow request that takes longer is abandoned and counted
    # The shadow lane lags when its oldest waiting copy has waited longer: new copies are dropped, counted.
    shadow_max_wait_s: float = 0.05
    # Share of the event loop thread's time (running or waiting for a CPU) above which the shadow lane
    # takes fewer copies (the rest dropped, counted): the served path keeps a saturated loop. 1 = never.
    shadow_busy_limit: float = 0.75
    shutdown_grace_s: float = 10.0  # on SIGTERM, how long in-flight requests may take to finish
    # Calls in progress per process beyond which new ones get UNAVAILABLE (native transport), or gRPC
    # core's bound on calls not yet handed to Python (grpcio; refused as CANCELLED). 0: no bound.
    grpc_max_pending_requests: int = 0
    # "native": our own HTTP/2 gRPC transport (gateway.grpc.h2: 78 us of CPU per inference at c=16
    # where grpc.aio took 360 us); "grpcio": grpc.aio, the reference implementation and a fallback.
    grpc_transport: str = "native"
    # "auto": uvloop when it is installed and the gRPC transport is native; "uvloop"; "asyncio".
    event_loop: str = "auto"
    log_level: str = "INFO"
    limits: Limits = field(default_factory=Limits)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    endpoints: tuple[EndpointSettings, ...] = ()
    config_file: Path | None = None


_SCALAR_FIELDS = {
    f.name: f
    for f in dataclasses.fields(Settings)
    if f.name not in ("limits", "sampling", "endpoints", "config_file")
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
        unknown = set(body) - {"champion", "challenger", "shadow", "sampling"}
        if unknown:
            raise SettingsError(f"endpoint '{name}': unknown keys {sorted(unknown)}")
        sampling = body.get("sampling", {})
        rate = sampling.get("rate") if isinstance(sampling, dict) else None
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1
        ):
            raise SettingsError(f"endpoint '{name}': sampling.rate must be a number in [0, 1], got {rate!r}")
        result.append(
            EndpointSettings(
                name,
                champion,
                _target(name, "challenger", body.get("challenger")),
                _target(name, "shadow", body.get("shadow")),
                float(rate) if rate is not None else None,
            )
        )
    return tuple(result)


def _sampling(raw: Any, base: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SettingsError("'sampling' must be a table")
    known = {f.name: f for f in dataclasses.fields(SamplingSettings)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise SettingsError(f"sampling.{key} is not a known setting ({sorted(known)})")
        if key == "sensitive_inputs":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SettingsError("sampling.sensitive_inputs must be a list of input names")
            out[key] = tuple(value)
        elif key == "directory":
            path = Path(str(value))
            out[key] = path if path.is_absolute() else base / path
        else:
            out[key] = _coerce(f"sampling.{key}", value, known[key].type)
            if key == "rate" and not 0.0 <= out[key] <= 1.0:
                raise SettingsError(f"sampling.rate must be in [0, 1], got {value!r}")
            if key != "rate" and key != "errors" and out[key] <= 0:
                raise SettingsError(f"sampling.{key} must be positive, got {value!r}")
    return out


def _check_tls(values: Mapping[str, Any]) -> None:
    """The TLS files must come as a pair, be readable and parse; SettingsError names the file at fault."""
    cert, key, ca = values.get("tls_cert"), values.get("tls_key"), values.get("control_client_ca")
    if (cert is None) != (key is None):
        raise SettingsError("settings 'tls_cert' and 'tls_key' must be given together")
    if ca is not None and cert is None:
        raise SettingsError("setting 'control_client_ca' (mutual TLS) needs 'tls_cert' and 'tls_key'")
    for name, path in (("tls_cert", cert), ("tls_key", key), ("control_client_ca", ca)):
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise SettingsError(f"setting '{name}': {path} cannot be read: {exc.strerror or exc}") from None
    if cert is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty password: an encrypted key fails here instead of OpenSSL prompting on the terminal.
        context.load_cert_chain(cert, key, password=b"")
    except (ssl.SSLError, ValueError) as exc:
        raise SettingsError(
            f"settings 'tls_cert' ({cert}) and 'tls_key' ({key}) are not a PEM certificate chain and its "
            f"unencrypted private key: {exc}"
        ) from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, ValueError) as exc:
            raise SettingsError(f"setting 'control_client_ca': {ca} is not a PEM CA bundle: {exc}") from None


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
    sampling: dict[str, Any] = {}
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
            elif key == "sampling":
                sampling = _sampling(value, base)
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
    if values.get("shadow_max_wait_s", 1.0) <= 0:
        raise SettingsError("setting 'shadow_max_wait_s' must be positive")
    if not 0 < values.get("shadow_busy_limit", 1.0) <= 1:
        raise SettingsError("setting 'shadow_busy_limit' must be in (0, 1]")
    limit_fields = {f.name: f for f in dataclasses.fields(Limits)}
    for key, value in limits.items():
        field_ = limit_fields.get(key)
        kind: type | tuple[type, ...] = int if field_ is None or field_.type == "int" else (int, float)
        ok = field_ is not None and not isinstance(value, bool) and isinstance(value, kind)
        if not ok or float(value) <= 0:
            raise SettingsError(f"limits.{key} is unknown or not a positive number")
    for key in ("http_port", "grpc_port", "metrics_port", "control_port"):
        port = values.get(key, _SCALAR_FIELDS[key].default)
        if not 0 <= port <= 65535:
            raise SettingsError(f"setting '{key}' must be a port number (0-65535), got {port}")
    if values.get("workers", 1) < 1:
        raise SettingsError("setting 'workers' must be at least 1")
    _check_tls(values)
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise SettingsError("endpoint names must be unique")
    try:
        return Settings(
            **values,
            limits=Limits(**limits),
            sampling=SamplingSettings(**sampling),
            endpoints=endpoints,
            config_file=config_file,
        )
    except InvalidArgument as exc:  # pragma: no cover - defensive: constructors do not validate today
        raise SettingsError(str(exc)) from None
