"""The control plane's record of one endpoint, and its one JSON form (shared by the API and the file).

Rules of this module:
- ``EndpointState`` is immutable: a change builds a new one, so the controller can compute the next state,
  persist it, and only then make it current.
- The JSON written for an endpoint is the same in ``routing.json``, in audit entries and in API answers, so
  an operator can read any of them the same way. Only the persisted form adds the undo stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.routing.table import EndpointSpec, Target

Json = dict[str, Any]

CONFIG_ACTOR = "config"  # `changed_by` of an endpoint that gateway.toml defines and nobody has changed


def now_rfc3339() -> str:
    """UTC with a 'Z' suffix and milliseconds: sortable as text and unambiguous in every log tool."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class EndpointState:
    """An endpoint's desired split plus who changed it last; `undo` holds earlier specs, newest last."""

    spec: EndpointSpec
    revision: int
    changed_by: str
    changed_at: str
    undo: tuple[EndpointSpec, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    def to_json(self) -> Json:
        return {
            "name": self.spec.name,
            **spec_to_json(self.spec),
            "revision": self.revision,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
        }


def target_json(target: Target) -> Json:
    return {"model": target.model, "version": target.version}


def spec_to_json(spec: EndpointSpec) -> Json:
    """The split alone: the body a PUT accepts, and what `before`/`after` show in the audit log."""
    challenger = shadow = None
    if spec.challenger is not None:
        challenger = {**target_json(spec.challenger), "weight": spec.weight}
    if spec.shadow is not None:
        shadow = {**target_json(spec.shadow), "sample_rate": spec.sample_rate}
    return {"champion": target_json(spec.champion), "challenger": challenger, "shadow": shadow}
