"""TLS on every listener and mutual TLS on the control listener, against a real gateway and real clients.

Certificates are made for each test session with the ``cryptography`` package: a self-signed server
certificate (as an operator would make one for a first deployment), a CA for control clients, a client
certificate signed by it, and a second, unrelated CA with a client of its own that must be refused.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tritonclient.utils import InferenceServerException

from gateway.control.auth import Access, Authenticator
from gateway.control.errors import Unauthenticated
from gateway.demo import write_demo_repository
from gateway.settings import SettingsError, load_settings
from tests.gateway_process import GatewayProcess, start_gateway


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(d: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _builder(subject: str, issuer: str, public_key: Any) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _ca(d: Path, name: str) -> None:
    key = _key()
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    _write(d, name, cert, key)


def _client(d: Path, name: str, ca: str) -> None:
    ca_key = serialization.load_pem_private_key((d / f"{ca}.key").read_bytes(), password=None)
    key = _key()
    cert = (
        _builder(name, ca, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    _write(d, name, cert, key)


def _server(d: Path) -> None:
    key = _key()
    cert = (
        _builder("localhost", "localhost", key.public_key())
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    _write(d, "server", cert, key)


@dataclass(frozen=True)
class Certs:
    dir: Path
    server_cert: Path  # self-signed: the server's certificate is also what clients trust
    server_key: Path
    client_ca: Path
    client: tuple[Path, Path]  # (certificate, key) signed by client_ca, CN "alice"
    rogue: tuple[Path, Path]  # signed by an unrelated CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    _server(d)
    _ca(d, "control-ca")
    _client(d, "alice", "control-ca")
    _ca(d, "rogue-ca")
    _client(d, "mallory", "rogue-ca")
    return Certs(
        d,
        d / "server.pem",
        d / "server.key",
        d / "control-ca.pem",
        (d / "alice.pem", d / "alice.key"),
        (d / "mallory.pem", d / "mallory.key"),
    )


def _repository(root: Path) -> Path:
    source = root / "demo"
    write_demo_repository(source)
    models = root / "models"
    models.mkdir()
    shutil.copytree(source / "models" / "simple", models / "simple")
    return models


def _config(root: Path, certs: Certs, extra: str = "") -> Path:
    config = root / "gateway.toml"
    config.write_text(
        f'model_repository = "models"\ntls_cert = "{certs.server_cert}"\ntls_key = "{certs.server_key}"\n'
        f'control_client_ca = "{certs.client_ca}"\n{extra}'
    )
    return config


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("tls")
    _repository(root)
    gw = start_gateway(root / "gw", "--config", str(_config(root, certs)), "--state-dir", str(root / "state"))
    yield gw
    assert gw.stop() == 0, gw.log()


def _infer(client: Any, module: Any) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        t = module.InferInput(name, [2, 16], "INT32")
        t.set_data_from_numpy(a)
        inputs.append(t)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)


def _context(certs: Certs, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.server_cert))
    if client is not None:
        context.load_cert_chain(*client)
    return context


def _https(port: int, path: str, context: ssl.SSLContext, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        raw = response.read()
        return response.status, json.loads(raw) if raw and path.startswith("/v1") else raw


# ------------------------------------------------------------------------------ inference over TLS


def test_grpc_client_with_the_certificate_infers(tls_gateway: GatewayProcess, certs: Certs) -> None:
    client = grpcclient.InferenceServerClient(
        tls_gateway.grpc_url, ssl=True, root_certificates=str(certs.server_cert)
    )
    try:
        assert client.is_server_ready()
        _infer(client, grpcclient)
    finally:
        client.close()


def test_http_client_with_the_certificate_infers(tls_gateway: GatewayProcess, certs: Certs) -> None:
    client = httpclient.InferenceServerClient(
        tls_gateway.http_url, ssl=True, ssl_options={"ca_certs": str(certs.server_cert)}, insecure=False
    )
    try:
        assert client.is_server_ready()
        _infer(client, httpclient)
    finally:
        client.close()


def test_plain_text_and_untrusting_clients_are_refused(tls_gateway: GatewayProcess, certs: Certs) -> None:
    plain_grpc = grpcclient.InferenceServerClient(tls_gateway.grpc_url)
    with pytest.raises(InferenceServerException):
        plain_grpc.is_server_live(client_timeout=10)
    plain_grpc.close()
    with pytest.raises(OSError):  # the server speaks TLS only: a plain request gets no HTTP answer
        urllib.request.urlopen(f"http://{tls_gateway.http_url}/v2/health/live", timeout=10)
    with pytest.raises(OSError):  # a client that does not trust the certificate refuses the server
        urllib.request.urlopen(
            f"https://{tls_gateway.http_url}/v2/health/live", timeout=10, context=ssl.create_default_context()
        )
    untrusting = grpcclient.InferenceServerClient(tls_gateway.grpc_url, ssl=True)
    with pytest.raises(InferenceServerException):
        untrusting.is_server_live(client_timeout=10)
    untrusting.close()


def test_metrics_are_served_over_tls(tls_gateway: GatewayProcess, certs: Certs) -> None:
    status, body = _https(tls_gateway.ports["metrics"], "/metrics", _context(certs))
    assert status == 200
    assert b"onnxgate_" in body


# ------------------------------------------------------------------------------ mutual TLS, control API


def test_control_api_accepts_a_client_certificate_signed_by_its_ca(
    tls_gateway: GatewayProcess, certs: Certs
) -> None:
    port = tls_gateway.ports["control"]
    context = _context(certs, certs.client)
    status, body = _https(port, "/v1/models", context)
    assert status == 200
    assert any(m["name"] == "simple" for m in body["models"])
    status, _ = _https(port, "/v1/models/simple/load", context, method="POST")
    assert status == 200
    _, audit = _https(port, "/v1/audit?limit=1", context)
    assert audit["entries"][-1]["actor"] == "alice", "the certificate's CN is the actor"


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_control_api_refuses_clients_without_a_certificate_of_its_ca(
    tls_gateway: GatewayProcess, certs: Certs, who: str
) -> None:
    context = _context(certs, certs.rogue if who != "no certificate" else None)
    with pytest.raises(OSError):  # the TLS handshake fails (the server asks for, and checks, a certificate)
        _https(tls_gateway.ports["control"], "/v1/models", context)


def test_workers_serve_tls_too(tmp_path: Path, certs: Certs) -> None:
    _repository(tmp_path)
    gw = start_gateway(
        tmp_path / "gw",
        "--config",
        str(_config(tmp_path, certs, "workers = 2\n")),
        "--state-dir",
        str(tmp_path / "state"),
    )
    try:
        g = grpcclient.InferenceServerClient(gw.grpc_url, ssl=True, root_certificates=str(certs.server_cert))
        h = httpclient.InferenceServerClient(
            gw.http_url, ssl=True, ssl_options={"ca_certs": str(certs.server_cert)}
        )
        _infer(g, grpcclient)
        _infer(h, httpclient)
        g.close()
        h.close()
    finally:
        assert gw.stop() == 0, gw.log()


# ------------------------------------------------------------------------------ settings


def test_tls_settings_are_checked_at_start(tmp_path: Path, certs: Certs) -> None:
    def settings(**values: str) -> None:
        load_settings(None, None, {f"ONNXGATE_{k.upper()}": v for k, v in values.items()})

    settings(tls_cert=str(certs.server_cert), tls_key=str(certs.server_key))
    with pytest.raises(SettingsError, match="together"):
        settings(tls_cert=str(certs.server_cert))
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(SettingsError, match=str(missing)):
        settings(tls_cert=str(missing), tls_key=str(certs.server_key))
    with pytest.raises(SettingsError, match="control_client_ca"):
        settings(control_client_ca=str(certs.client_ca))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(SettingsError, match="tls_cert"):
        settings(tls_cert=str(garbage), tls_key=str(certs.server_key))
    with pytest.raises(SettingsError, match="control_client_ca"):
        settings(
            tls_cert=str(certs.server_cert), tls_key=str(certs.server_key), control_client_ca=str(garbage)
        )


def test_mutual_tls_names_the_caller_and_allows_a_non_loopback_control_listener(certs: Certs) -> None:
    settings = load_settings(
        None,
        None,
        {
            "ONNXGATE_CONTROL_HOST": "0.0.0.0",
            "ONNXGATE_TLS_CERT": str(certs.server_cert),
            "ONNXGATE_TLS_KEY": str(certs.server_key),
            "ONNXGATE_CONTROL_CLIENT_CA": str(certs.client_ca),
        },
    )
    auth = Authenticator.from_settings(settings)  # the certificate authenticates: no tokens file needed
    principal = auth.authenticate(None, write=True, common_name="alice")
    assert (principal.name, principal.access) == ("alice", Access.OPERATOR)
    for bad in (None, "", "alice\nFORGED", "x" * 200):
        with pytest.raises(Unauthenticated):
            auth.authenticate(None, write=False, common_name=bad)


def test_with_a_tokens_file_the_certificate_is_only_a_gate(tmp_path: Path, certs: Certs) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[tokens]]\nname = "dash"\nsecret = "viewer-secret-0123456789"\nrole = "viewer"\n')
    settings = load_settings(
        None,
        None,
        {
            "ONNXGATE_TOKENS_FILE": str(tokens),
            "ONNXGATE_TLS_CERT": str(certs.server_cert),
            "ONNXGATE_TLS_KEY": str(certs.server_key),
            "ONNXGATE_CONTROL_CLIENT_CA": str(certs.client_ca),
        },
    )
    auth = Authenticator.from_settings(settings)
    with pytest.raises(Unauthenticated):
        auth.authenticate(None, write=False, common_name="alice")
    principal = auth.authenticate("Bearer viewer-secret-0123456789", write=False, common_name="alice")
    assert (principal.name, principal.access) == ("dash", Access.VIEWER)
