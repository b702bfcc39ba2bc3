"""TLS for the listeners, built once at start from the PEM files the settings name.

Rules of this module:
- One certificate and key serve every listener; TLS 1.2 is the floor. Nothing here runs per request.
- ``server_context`` is for the aiohttp listeners (HTTP inference, metrics, control); with ``client_ca``
  the listener requires a client certificate signed by it (mutual TLS, the control listener only).
- ``grpc_credentials`` is for the gRPC listener; clients there are not asked for certificates.
- Both return None when TLS is off, so the composition root passes their results straight through.
- The files were checked by ``load_settings``; a file that changed since then still fails as a
  SettingsError naming it, never as a bare ssl error.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from gateway.settings import Settings, SettingsError


def _read(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"setting '{name}': {path} cannot be read: {exc.strerror or exc}") from None


def server_context(settings: Settings, client_ca: Path | None = None) -> ssl.SSLContext | None:
    """A server-side context (TLS 1.2+), or None when the settings name no certificate."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        # An empty password: an encrypted key fails instead of OpenSSL prompting on the terminal.
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=b"")
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise SettingsError(
            f"settings 'tls_cert' ({settings.tls_cert}) and 'tls_key' ({settings.tls_key}) cannot be used: "
            f"{exc}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise SettingsError(f"setting 'control_client_ca' ({client_ca}) cannot be used: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Server credentials for grpc.aio (TLS 1.2+ is gRPC's own floor), or None when TLS is off."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    key = _read("tls_key", settings.tls_key)
    chain = _read("tls_cert", settings.tls_cert)
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=None, require_client_auth=False)
