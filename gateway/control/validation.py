"""Turning request bodies into endpoint specs, and checking a spec against the repository.

Rules of this module:
- Every mistake is an InvalidArgument whose message names the field, so the caller can fix the request
  without reading the server's code; nothing here changes any state.
- One parser serves PUT bodies, merged PATCH bodies and the persisted file, so they cannot drift apart.
- The champion must always be ready. A challenger or shadow must be ready when a change names it anew;
  one that is already part of the split is not rechecked, so a promote or a weight change still works
  while an old version is down (the routing table skips versions that are not ready).
"""

from __future__ import annotations

import math
from typing import Any

from gateway.control.state import spec_to_json
from gateway.routing.table import EndpointSpec, Target
from runtime.errors import InvalidArgument
from runtime.repository import ModelRepository, check_model_name

# Each role and the number that comes with it (the champion takes all traffic not sent elsewhere).
ROLE_FRACTION: dict[str, str | None] = {"champion": None, "challenger": "weight", "shadow": "sample_rate"}


def _fraction(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{where} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"{where} must be in [0, 1], got {value!r}")
    return float(value)


def _target(role: str, raw: Any) -> tuple[Target, float]:
    fraction_key = ROLE_FRACTION[role]
    allowed = {"model", "version"} | ({fraction_key} if fraction_key else set())
    if not isinstance(raw, dict):
        raise InvalidArgument(f"'{role}' must be an object with {', '.join(sorted(allowed))}")
    for key in raw:
        if key not in allowed:
            raise InvalidArgument(f"unknown key '{role}.{key}' (allowed: {', '.join(sorted(allowed))})")
    model, version = raw.get("model"), raw.get("version")
    if not isinstance(model, str):
        raise InvalidArgument(f"'{role}.model' must be a model name, got {model!r}")
    check_model_name(model)
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise InvalidArgument(f"'{role}.version' must be a positive integer, got {version!r}")
    fraction = _fraction(f"'{role}.{fraction_key}'", raw.get(fraction_key, 0.0)) if fraction_key else 0.0
    return Target(model, version), fraction


def parse_spec(name: str, body: Any) -> EndpointSpec:
    """A whole desired state (PUT body): champion required, challenger and shadow optional or null."""
    if not isinstance(body, dict):
        raise InvalidArgument("the endpoint body must be a JSON object")
    for key in body:
        if key not in ROLE_FRACTION and key != "name":
            hint = " (read-only; send the revision as If-Match)" if key == "revision" else ""
            raise InvalidArgument(f"unknown key '{key}' in the endpoint body{hint}")
    if "name" in body and body["name"] != name:
        raise InvalidArgument(f"the body names endpoint {body['name']!r} but the path names {name!r}")
    if body.get("champion") is None:
        raise InvalidArgument("'champion' is required")
    champion, _ = _target("champion", body["champion"])
    challenger, weight = _target("challenger", body["challenger"]) if body.get("challenger") else (None, 0.0)
    shadow, rate = _target("shadow", body["shadow"]) if body.get("shadow") else (None, 0.0)
    return EndpointSpec(name, champion, challenger, weight, shadow, rate)


def apply_patch(current: EndpointSpec, body: Any) -> EndpointSpec:
    """A JSON merge patch: an object is merged into the role's fields, null removes the role."""
    if not isinstance(body, dict) or not body:
        raise InvalidArgument("a PATCH body must be a non-empty JSON object")
    merged = spec_to_json(current)
    for key, value in body.items():
        if key not in ROLE_FRACTION:
            raise InvalidArgument(f"unknown key '{key}' in the patch (allowed: champion, challenger, shadow)")
        if value is None:
            if key == "champion":
                raise InvalidArgument("the champion cannot be removed; promote a challenger or PUT a new one")
            merged[key] = None
            continue
        if not isinstance(value, dict):
            raise InvalidArgument(f"'{key}' must be an object or null")
        base = merged[key] or {}
        if not base and not {"model", "version"} <= value.keys():
            raise InvalidArgument(
                f"endpoint '{current.name}' has no {key}: a patch that adds one must give 'model' and 'version'"
            )
        merged[key] = {**base, **value}
    return parse_spec(current.name, merged)


def _check_ready(repository: ModelRepository, role: str, target: Target) -> None:
    entry = repository.entry(target.model)
    if entry is None:
        raise InvalidArgument(
            f"{role}: unknown model '{target.model}' (a model on disk must be loaded first: "
            f"POST /v1/models/{target.model}/load)"
        )
    if target.version in entry.versions:
        return
    if target.version in entry.failed:
        raise InvalidArgument(
            f"{role}: version {target.version} of model '{target.model}' is not ready: "
            f"{entry.failed[target.version]}"
        )
    ready = ", ".join(str(v) for v in sorted(entry.versions)) or "none"
    raise InvalidArgument(
        f"{role}: model '{target.model}' has no ready version {target.version} (ready versions: {ready})"
    )


def check_spec(spec: EndpointSpec, repository: ModelRepository, before: EndpointSpec | None) -> None:
    """Reject a split that cannot be served as asked; `before` is the state being replaced, if any."""
    if spec.challenger == spec.champion:
        raise InvalidArgument("the challenger must differ from the champion")
    if spec.shadow == spec.champion:
        raise InvalidArgument("the shadow must differ from the champion: it would only repeat its work")
    known = {before.champion, before.challenger, before.shadow} if before is not None else set()
    _check_ready(repository, "champion", spec.champion)
    for role, target in (("challenger", spec.challenger), ("shadow", spec.shadow)):
        if target is not None and target not in known:
            _check_ready(repository, role, target)
