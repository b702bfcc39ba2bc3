"""Durable routing state: every endpoint changed through the control API, in `<state_dir>/routing.json`.

Rules of this module:
- ``save`` returns only when the new state is on disk (see gateway.control.durable): the controller
  acknowledges a change after ``save``, so an acknowledged change survives `kill -9` at any moment.
- The content that each save replaces is kept as ``routing.json.prev``.
- A state file that cannot be read stops start-up with a message naming the file and the previous copy.
  It is never skipped, and the previous copy is never loaded silently: either would quietly undo changes
  that operators were told had succeeded. The operator decides: move ``routing.json.prev`` into place, or
  move ``routing.json`` away to start from gateway.toml alone.
- The file holds only endpoints changed at run time (revision >= 1; the controller passes no others), so
  editing gateway.toml still takes effect for every endpoint nobody has changed through the control API.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from gateway.control.audit import AuditLog
from gateway.control.durable import replace_file
from gateway.control.state import EndpointState, spec_to_json
from gateway.control.validation import parse_spec
from gateway.settings import SettingsError
from runtime.errors import InvalidArgument
from runtime.repository import check_model_name

SCHEMA_VERSION = 1
STATE_FILE = "routing.json"
PREVIOUS_SUFFIX = ".prev"
AUDIT_FILE = "audit.jsonl"
_RECORD_KEYS = frozenset({"champion", "challenger", "shadow", "revision", "changed_by", "changed_at", "undo"})


class StateFileError(SettingsError):
    """The persisted state cannot be used. A SettingsError, so the CLI prints it and exits 2 at start-up."""


def _record(name: str, raw: Any) -> EndpointState:
    if not isinstance(raw, dict) or set(raw) != _RECORD_KEYS:
        raise ValueError(f"endpoint {name!r} must have exactly the keys {sorted(_RECORD_KEYS)}")
    check_model_name(name)
    revision, by, at, undo = raw["revision"], raw["changed_by"], raw["changed_at"], raw["undo"]
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise ValueError(f"endpoint {name!r}: 'revision' must be a non-negative integer")
    if not isinstance(by, str) or not isinstance(at, str) or not isinstance(undo, list):
        raise ValueError(f"endpoint {name!r}: 'changed_by', 'changed_at' must be strings, 'undo' a list")
    spec = parse_spec(name, {k: raw[k] for k in ("champion", "challenger", "shadow")})
    return EndpointState(spec, revision, by, at, tuple(parse_spec(name, item) for item in undo))


def decode_state(data: bytes) -> dict[str, EndpointState]:
    """Parse the file's bytes; ValueError (or InvalidArgument) says what is wrong."""
    doc = orjson.loads(data)
    if not isinstance(doc, dict) or set(doc) != {"version", "endpoints"}:
        raise ValueError("the document must be an object with exactly 'version' and 'endpoints'")
    if doc["version"] != SCHEMA_VERSION:
        raise ValueError(
            f"schema version {doc['version']!r} is not supported (this onnxgate reads {SCHEMA_VERSION})"
        )
    if not isinstance(doc["endpoints"], dict):
        raise ValueError("'endpoints' must be an object")
    return {name: _record(name, raw) for name, raw in doc["endpoints"].items()}


def encode_state(endpoints: Mapping[str, EndpointState]) -> bytes:
    records = {
        name: {
            **spec_to_json(state.spec),
            "revision": state.revision,
            "changed_by": state.changed_by,
            "changed_at": state.changed_at,
            "undo": [spec_to_json(spec) for spec in state.undo],
        }
        for name, state in sorted(endpoints.items())
    }
    return orjson.dumps({"version": SCHEMA_VERSION, "endpoints": records}, option=orjson.OPT_INDENT_2) + b"\n"


class StateStore:
    """`routing.json` (+ `.prev`) and the audit log in one state folder. Methods block: use to_thread."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE
        self.previous_path = state_dir / (STATE_FILE + PREVIOUS_SUFFIX)
        self.audit = AuditLog(state_dir / AUDIT_FILE)

    def load(self) -> dict[str, EndpointState]:
        """The persisted endpoints ({} when nothing was ever saved); StateFileError when unreadable."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise self._unreadable(f"cannot be read: {exc}") from None
        try:
            return decode_state(data)
        except orjson.JSONDecodeError as exc:
            raise self._unreadable(f"is not valid JSON (truncated or corrupt?): {exc}") from None
        except (ValueError, InvalidArgument) as exc:
            raise self._unreadable(f"does not match the schema: {exc}") from None

    def _unreadable(self, why: str) -> StateFileError:
        return StateFileError(
            f"the routing state file {self.path} {why}. onnxgate will not start from a state it cannot read. "
            f"The previous good copy is at {self.previous_path} (if it exists): to use it, move it into "
            f"place (mv {self.previous_path} {self.path}); to start from the config file alone, move "
            f"{self.path} away."
        )

    def save(self, endpoints: Mapping[str, EndpointState]) -> None:
        """Durably replace the persisted state; returns only once it is on disk."""
        replace_file(self.path, encode_state(endpoints), previous=self.previous_path)
