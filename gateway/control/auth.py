"""Who may call the control API (and, with `inference_auth`, the inference APIs): bearer tokens.

Rules of this module:
- Tokens come from a TOML file: ``[[tokens]] name = "alice"  secret = "..."  role = "operator"|"viewer"``.
  Viewers may read; operators may also change. Any role may run inference.
- Only SHA-256 digests of the secrets are kept. A presented secret is hashed once and compared with every
  token's digest by hmac.compare_digest, without stopping at a match, so timing tells neither which token
  matched nor how long the secrets are. Secrets are never logged or put in error messages.
- Without a tokens file, calls are allowed without a token (actor "local") only when the control listener is
  bound to a loopback address; a non-loopback listener without tokens refuses to start.
- With mutual TLS (``control_client_ca``) and no tokens file, the client certificate is the credential:
  every verified caller is an operator whose actor name is its certificate's common name (a CN that is
  missing or not a plain name is refused). With a tokens file, tokens decide; the certificate is a gate.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import logging
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.control.errors import PermissionDenied, Unauthenticated
from gateway.settings import Settings, SettingsError

log = logging.getLogger("onnxgate.control")

LOCAL_ACTOR = "local"
# A certificate's common name becomes an actor name in the audit log and in log lines: plain names only.
_COMMON_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@:+\-]{0,127}$")


class Access(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller; `name` is what the audit log records as the actor."""

    name: str
    access: Access


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    digest: bytes  # sha256 of the secret
    access: Access

    @classmethod
    def from_secret(cls, name: str, secret: str, access: Access) -> Token:
        return cls(name, hashlib.sha256(secret.encode()).digest(), access)


def load_tokens(path: Path) -> tuple[Token, ...]:
    """Parse and check the tokens file; SettingsError names the file and the mistake (never a secret)."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"tokens file {path} cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"tokens file {path} is not valid TOML: {exc}") from None
    raw = doc.get("tokens")
    if set(doc) != {"tokens"} or not isinstance(raw, list) or not raw:
        raise SettingsError(f"tokens file {path} must hold one or more [[tokens]] tables and nothing else")
    tokens: list[Token] = []
    for i, item in enumerate(raw, 1):
        where = f"tokens file {path}, token #{i}"
        if not isinstance(item, dict) or set(item) != {"name", "secret", "role"}:
            raise SettingsError(f"{where} must have exactly 'name', 'secret' and 'role'")
        name, secret, role = item["name"], item["secret"], item["role"]
        if not isinstance(name, str) or not name.strip():
            raise SettingsError(f"{where}: 'name' must be a non-empty string")
        if not isinstance(secret, str) or not secret:
            raise SettingsError(f"{where} ({name}): 'secret' must be a non-empty string")
        if role not in tuple(Access):
            raise SettingsError(f"{where} ({name}): 'role' must be 'operator' or 'viewer', got {role!r}")
        if len(secret) < 16:
            log.warning("token %s has a short secret (%d characters): use at least 16", name, len(secret))
        tokens.append(Token.from_secret(name, secret, Access(role)))
    if len({t.name for t in tokens}) != len(tokens) or len({t.digest for t in tokens}) != len(tokens):
        raise SettingsError(f"tokens file {path}: token names and secrets must be unique")
    return tuple(tokens)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost could resolve anywhere: assume the worst


class Authenticator:
    """Turns an Authorization header value into a Principal, or refuses."""

    def __init__(
        self, tokens: Sequence[Token], allow_local: bool = False, client_certs: bool = False
    ) -> None:
        self._tokens = tuple(tokens)
        self.allow_local = allow_local and not self._tokens
        # The caller's TLS client certificate names it (mutual TLS without a tokens file).
        self.client_certs = client_certs and not self._tokens

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """Check the security settings for the control listener and load the tokens; SettingsError if unsafe."""
        host = settings.control_host or settings.host
        if settings.tokens_file is None:
            if settings.inference_auth:
                raise SettingsError("inference_auth needs a tokens_file to check tokens against")
            if settings.control_client_ca is not None:
                return cls((), client_certs=True)
            if not is_loopback(host):
                raise SettingsError(
                    f"the control API would listen on {host!r}, which is not a loopback address, without "
                    "authentication: set tokens_file (ONNXGATE_TOKENS_FILE) or bind control_host to 127.0.0.1"
                )
            return cls((), allow_local=True)
        return cls(load_tokens(settings.tokens_file))

    def _match(self, authorization: str | None, common_name: str | None = None) -> Principal:
        if self.client_certs:
            if common_name is None or not _COMMON_NAME.match(common_name):
                raise Unauthenticated("the client certificate has no usable common name (CN)")
            return Principal(common_name, Access.OPERATOR)
        if self.allow_local:
            return Principal(LOCAL_ACTOR, Access.OPERATOR)
        if not authorization:
            raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
        scheme, _, secret = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        digest = hashlib.sha256(secret.strip().encode()).digest()
        found: Token | None = None
        for token in self._tokens:  # no early exit: every call compares against every token
            if hmac.compare_digest(digest, token.digest):
                found = token
        if found is None:
            raise Unauthenticated("invalid token")
        return Principal(found.name, found.access)

    def authenticate(
        self, authorization: str | None, write: bool, common_name: str | None = None
    ) -> Principal:
        """The caller of a control call; `write` calls need the operator role.

        `common_name` is the CN of the caller's verified TLS client certificate, if it presented one.
        """
        principal = self._match(authorization, common_name)
        if write and principal.access is not Access.OPERATOR:
            raise PermissionDenied(
                f"'{principal.name}' is a {principal.access.value}: changes need an operator"
            )
        return principal

    def check_inference(self, authorization: str | None) -> Principal:
        """For the inference front ends when `inference_auth` is on: any valid token may infer."""
        return self._match(authorization)


def inference_authenticator(settings: Settings) -> Authenticator | None:
    """The token check of the inference listeners, or None when ``inference_auth`` is off (no check at all)."""
    if not settings.inference_auth:
        return None
    if settings.tokens_file is None:
        raise SettingsError("inference_auth needs a tokens_file to check tokens against")
    return Authenticator(load_tokens(settings.tokens_file))
