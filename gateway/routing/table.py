"""The routing table: an immutable snapshot of every endpoint's split, with model handles resolved.

Rules of this module:
- A table is built whole from the endpoint specs and the repository, then swapped in with one attribute
  assignment; a request reads the table once and takes no lock.
- Everything a request needs (the version objects, the challenger threshold, the shadow rate) is resolved
  at build time: routing costs one random number (or one key hash) and a comparison.
- A model that no endpoint names is served as a plain endpoint: its champion is its latest ready version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.routing.roles import Role
from runtime.model import ModelVersion
from runtime.repository import ModelRepository


@dataclass(frozen=True, slots=True)
class Target:
    model: str
    version: int


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """The desired state of one endpoint, as configured or set through the control API."""

    name: str
    champion: Target
    challenger: Target | None = None
    weight: float = 0.0
    shadow: Target | None = None
    sample_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Route:
    """What a request to one endpoint needs, resolved. `champion` is None while it is not ready."""

    endpoint: str
    model: str  # the model whose versions a pinned request names
    champion: ModelVersion | None
    champion_role: Role
    challenger: ModelVersion | None
    weight: float
    shadow: ModelVersion | None
    sample_rate: float
    configured: bool  # an endpoint from config/control (readiness counts it), not a plain model


def key_fraction(key: str) -> float:
    """A stable map of a routing key to [0, 1): the same key always lands in the same place."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 18446744073709551616.0  # 2**64


def _version(repository: ModelRepository, target: Target | None) -> ModelVersion | None:
    if target is None:
        return None
    entry = repository.entry(target.model)
    return entry.versions.get(target.version) if entry is not None else None


@dataclass(frozen=True, slots=True)
class RoutingTable:
    routes: Mapping[str, Route]

    @classmethod
    def build(cls, specs: Mapping[str, EndpointSpec], repository: ModelRepository) -> RoutingTable:
        routes: dict[str, Route] = {}
        for name in repository.names():
            entry = repository.entry(name)
            if entry is not None:
                routes[name] = Route(name, name, entry.latest, Role.CHAMPION, None, 0.0, None, 0.0, False)
        for spec in specs.values():
            challenger = _version(repository, spec.challenger)
            routes[spec.name] = Route(
                endpoint=spec.name,
                model=spec.champion.model,
                champion=_version(repository, spec.champion),
                champion_role=Role.CHAMPION,
                challenger=challenger,
                weight=spec.weight if challenger is not None else 0.0,
                shadow=_version(repository, spec.shadow),
                sample_rate=spec.sample_rate,
                configured=True,
            )
        return cls(routes)
