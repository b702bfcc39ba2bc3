"""The router: decides which model version serves each request.

Rules of this module:
- ``route`` is on the hot path: one dict read of the current table, one random draw (or a key hash), no
  locks, no logging. The table is replaced, never mutated, by ``rebuild``.
- A request that names a version is served by exactly that version of the endpoint's model (role
  ``pinned``), or gets NOT_FOUND / UNAVAILABLE.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from gateway.routing.roles import Role
from gateway.routing.table import EndpointSpec, Route, RoutingTable, key_fraction
from gateway.types import InferRequest
from runtime.errors import NotFound, Unavailable
from runtime.model import ModelVersion
from runtime.repository import ModelRepository, parse_version


class Router:
    def __init__(self, repository: ModelRepository, specs: Mapping[str, EndpointSpec] | None = None) -> None:
        self.repository = repository
        self.specs: dict[str, EndpointSpec] = dict(specs or {})
        self._random = random.random
        self.table = RoutingTable.build(self.specs, repository)
        repository.subscribe(lambda _name: self.rebuild())

    def rebuild(self, specs: Mapping[str, EndpointSpec] | None = None) -> None:
        if specs is not None:
            self.specs = dict(specs)
        self.table = RoutingTable.build(self.specs, self.repository)

    def _route_for(self, name: str) -> Route:
        route = self.table.routes.get(name)
        if route is None:
            raise NotFound(f"unknown model: '{name}'")
        return route

    def choose(self, request: InferRequest) -> tuple[ModelVersion, Role, Route]:
        """The version that serves `request`, the role it plays, and the endpoint's route."""
        route = self._route_for(request.model_name)
        if request.model_version:
            version = parse_version(request.model_version)
            return self.repository.get(route.model, version), Role.PINNED, route
        if route.challenger is not None:
            key = request.routing_key
            u = key_fraction(key) if key else self._random()
            if u < route.weight:
                return route.challenger, Role.CHALLENGER, route
        if route.champion is None:
            raise Unavailable(f"model '{request.model_name}' has no ready version to serve")
        return route.champion, route.champion_role, route

    def route(self, request: InferRequest) -> ModelVersion:
        return self.choose(request)[0]

    def resolve_for_metadata(self, name: str, version: int | None) -> ModelVersion:
        route = self._route_for(name)
        if version is not None:
            return self.repository.get(route.model, version)
        if route.champion is None:
            raise Unavailable(f"model '{name}' has no ready version")
        return route.champion

    def model_name_for(self, name: str) -> str:
        return self._route_for(name).model

    def all_endpoints_ready(self) -> bool:
        return all(r.champion is not None for r in self.table.routes.values() if r.configured)
