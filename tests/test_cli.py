"""The `onnxgate` command: `demo` writes a repository, `serve` merges flags, environment and config file,
and a bad configuration stops `serve` with status 2 and a message that names the problem (no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway import __version__
from gateway.demo import write_demo_repository
from gateway.settings import SettingsError, load_settings
from tests.gateway_process import ROOT, start_gateway

DEMO_MODELS = ["demo", "identity_fp32", "simple", "simple_identity", "simple_int8", "simple_string"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXGATE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ------------------------------------------------------------------------------------------ demo


def test_demo_writes_the_models_and_gateway_toml(tmp_path: Path) -> None:
    target = tmp_path / "out"
    result = run_cli("demo", str(target))
    assert result.returncode == 0, result.stderr
    assert str(target / "gateway.toml") in result.stdout
    assert (target / "gateway.toml").is_file()
    assert sorted(p.name for p in (target / "models").iterdir()) == DEMO_MODELS
    for version in (1, 2, 3):
        assert (target / "models" / "demo" / str(version) / "model.onnx").is_file()
    # The files are exactly what the library writes: reproducible, byte for byte.
    reference = tmp_path / "reference"
    write_demo_repository(reference)
    written = sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())
    expected = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert written == expected
    for rel in written:
        assert (target / rel).read_bytes() == (reference / rel).read_bytes(), rel
    # Rerunning over an existing repository is fine.
    assert run_cli("demo", str(target)).returncode == 0


# ------------------------------------------------------------------------------------------ precedence


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "gateway.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


FILE = """\
model_repository = "models"
http_port = 1111
grpc_port = 2222
metrics_port = 3333
model_control = false
log_level = "WARNING"
"""


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    config = _config(tmp_path, FILE)
    environ = {"ONNXGATE_HTTP_PORT": "4444", "ONNXGATE_GRPC_PORT": "5555", "ONNXGATE_MODEL_CONTROL": "true"}
    settings = load_settings(config, {"http_port": 6666, "grpc_port": None, "workers": None}, environ)
    assert settings.http_port == 6666  # flag over environment and file
    assert settings.grpc_port == 5555  # environment over file (a None flag is "not given")
    assert settings.metrics_port == 3333  # file over default
    assert settings.control_port == 8003  # default
    assert settings.model_control is True  # environment over file
    assert settings.log_level == "WARNING"
    assert settings.workers == 1
    # Relative paths in the file are relative to the file's folder.
    assert settings.model_repository is not None
    assert settings.model_repository.resolve() == (config.parent / "models").resolve()


def test_environment_names_the_config_file_and_empty_values_are_ignored(tmp_path: Path) -> None:
    config = _config(tmp_path, FILE)
    settings = load_settings(None, {}, {"ONNXGATE_CONFIG": str(config), "ONNXGATE_HTTP_PORT": ""})
    assert settings.http_port == 1111
    assert settings.grpc_port == 2222
    # An explicit file wins over the one the environment names.
    other = tmp_path / "other.toml"
    other.write_text("http_port = 7777\n", encoding="utf-8")
    assert load_settings(other, {}, {"ONNXGATE_CONFIG": str(config)}).http_port == 7777


def test_defaults_without_file_environment_or_flags() -> None:
    settings = load_settings(None, {}, {})
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (8000, 8001, 8002)
    assert settings.model_control is False
    assert settings.model_repository is None


@pytest.mark.parametrize(
    ("environ", "overrides", "wanted"),
    [
        ({"ONNXGATE_HTTP_PORT": "eighty"}, {}, "http_port"),
        ({"ONNXGATE_MODEL_CONTROL": "maybe"}, {}, "model_control"),
        ({}, {"grpc_port": 70000}, "grpc_port"),
        ({"ONNXGATE_WORKERS": "0"}, {}, "workers"),
    ],
    ids=["env_port_not_a_number", "env_bool_not_a_bool", "flag_port_out_of_range", "env_zero_workers"],
)
def test_bad_values_from_environment_or_flags_name_the_setting(
    environ: dict[str, str], overrides: dict[str, object], wanted: str
) -> None:
    with pytest.raises(SettingsError, match=wanted):
        load_settings(None, overrides, environ)


def test_environment_is_honoured_end_to_end(tmp_path: Path) -> None:
    models = tmp_path / "demo" / "models"
    write_demo_repository(tmp_path / "demo")
    # Model control comes only from the environment; the HTTP port in the environment loses to the flag
    # (--http-port 0) that start_gateway passes.
    gw = start_gateway(
        tmp_path / "gw",
        "--model-repository", str(models), "--state-dir", str(tmp_path / "state"),
        env={"ONNXGATE_MODEL_CONTROL": "true", "ONNXGATE_HTTP_PORT": "1"},
    )  # fmt: skip
    try:
        assert gw.ports["http"] not in (0, 1)
        for action in ("unload", "load"):
            request = urllib.request.Request(
                f"http://{gw.http_url}/v2/repository/models/simple/{action}", data=b"{}", method="POST",
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=60) as resp:
                    assert resp.status == 200
            except urllib.error.HTTPError as exc:
                with exc:
                    pytest.fail(f"{action} refused with {exc.code}: {exc.read()!r}")
        with urllib.request.urlopen(f"http://{gw.http_url}/v2/models/simple/ready", timeout=30) as resp:
            assert resp.status == 200
    finally:
        code = gw.stop()
    assert code == 0, gw.log()


# ------------------------------------------------------------------------------------------ bad configs

ENDPOINT = 'model_repository = "models"\n[endpoints.demo]\nchampion = {{ model = "demo", version = 1 }}\n{}'
PORTS = ("http_port", "grpc_port", "metrics_port", "control_port")
BAD_CONFIGS = [
    ("invalid_toml", 'model_repository = "models"\nhttp_port = \n', "TOML"),
    ("unknown_key", 'model_repository = "models"\nbogus_setting = 1\n', "bogus_setting"),
    (
        "challenger_weight_above_1",
        ENDPOINT.format('challenger = { model = "demo", version = 2, weight = 1.5 }\n'),
        "weight",
    ),
    (
        "shadow_rate_negative",
        ENDPOINT.format('shadow = { model = "demo", version = 3, sample_rate = -0.1 }\n'),
        "sample_rate",
    ),
    ("version_not_positive", ENDPOINT.format("").replace("version = 1", "version = 0"), "version"),
    ("port_out_of_range", 'model_repository = "models"\nhttp_port = 70000\n', "http_port"),
    ("port_not_a_number", 'model_repository = "models"\ngrpc_port = "x"\n', "grpc_port"),
    ("unknown_limit", 'model_repository = "models"\n[limits]\nmax_nothing = 3\n', "max_nothing"),
]


@pytest.mark.parametrize(("text", "wanted"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_config_file_makes_serve_exit_2(tmp_path: Path, text: str, wanted: str) -> None:
    config = _config(tmp_path, text)
    # Ephemeral ports by flag (so a gateway that wrongly starts cannot collide), except for the port the
    # file gets wrong: a flag would rightly override it.
    flags = [x for p in PORTS if p not in text for x in (f"--{p.replace('_', '-')}", "0")]
    result = run_cli(
        "serve", "--config", str(config), "--state-dir", str(tmp_path / "state"), *flags, timeout=45
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert wanted in output, output
    assert "Traceback" not in output, output


def test_a_missing_config_file_makes_serve_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    result = run_cli("serve", "--config", str(missing), "--http-port", "0", "--grpc-port", "0", timeout=45)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert str(missing) in output
    assert "Traceback" not in output


def test_a_bad_environment_value_makes_serve_exit_2(tmp_path: Path) -> None:
    config = _config(tmp_path, 'model_repository = "models"\n')
    result = run_cli("serve", "--config", str(config), env={"ONNXGATE_WORKERS": "many"}, timeout=45)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "workers" in output
    assert "Traceback" not in output


def test_version_flag() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"onnxgate {__version__}"
