"""The endpoint controller: the one writer of routing state, and the one caller of ``router.rebuild``.

Rules of this module:
- Every mutation runs under one asyncio.Lock, in this order: check If-Match -> build and validate the new
  state -> persist it (fsync) -> append the audit entry (fsync) -> swap the in-memory state and rebuild the
  routing table -> return. The caller acknowledges only after the return, so an acknowledged change is on
  disk, and of two changes made against the same revision exactly one wins.
- A mutation runs shielded from its caller's cancellation: a client that hangs up mid-write cannot leave
  memory and disk disagreeing.
- The lock belongs to the control plane alone; the request path reads the router's table and never waits.
- A change that leaves the split as it is (same champion, challenger, shadow and fractions) is answered
  with the current state and recorded nowhere: repeating a PUT or PATCH is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from gateway.control.audit import AuditEntry
from gateway.control.errors import StaleRevision
from gateway.control.state import CONFIG_ACTOR, EndpointState, Json, now_rfc3339, spec_to_json
from gateway.control.store import StateStore
from gateway.control.validation import apply_patch, check_spec, parse_spec
from gateway.routing.router import Router
from gateway.routing.table import EndpointSpec
from runtime.errors import InvalidArgument, NotFound, Unavailable
from runtime.repository import IndexRow, ModelEntry, ModelRepository, check_model_name

log = logging.getLogger("onnxgate.control")

UNDO_DEPTH = 50  # rollbacks an endpoint remembers; older states fall off the bottom of the stack

# Given the current state (None for an endpoint that does not exist yet): the new spec and undo stack.
Change = Callable[[EndpointState | None], tuple[EndpointSpec, tuple[EndpointSpec, ...]]]


def _model_summary(entry: ModelEntry | None) -> Json | None:
    if entry is None:
        return None
    return {"state": entry.state.value, "versions": sorted(entry.versions), "reason": entry.reason}


class EndpointController:
    def __init__(
        self, router: Router, repository: ModelRepository, store: StateStore, undo_depth: int = UNDO_DEPTH
    ) -> None:
        self.router = router
        self.repository = repository
        self.store = store
        self.undo_depth = undo_depth
        self._endpoints: dict[str, EndpointState] = {}
        self._lock = asyncio.Lock()
        # Told (endpoint or model, action) after every acknowledged change: metrics count them.
        self.listeners: list[Callable[[str, str], None]] = []
        # With worker processes: push an acknowledged routing state (or a model load/unload) to every
        # worker, awaited before the change is answered, so it applies to every request that starts after.
        self.propagate: Callable[[dict[str, EndpointSpec]], Awaitable[None]] | None = None
        self.propagate_model: Callable[[str, str], Awaitable[None]] | None = None

    # ---------------------------------------------------------------- start-up and reads

    async def startup(self, config_specs: Mapping[str, EndpointSpec]) -> None:
        """Merge the persisted state over gateway.toml's endpoints and route by the result.

        Call after the repository has loaded its models. Raises StateFileError for an unreadable state file.
        """
        persisted = await asyncio.to_thread(self.store.load)
        started = now_rfc3339()
        merged = {name: EndpointState(spec, 0, CONFIG_ACTOR, started) for name, spec in config_specs.items()}
        for name, state in persisted.items():
            if name in merged and merged[name].spec != state.spec:
                log.info(
                    "endpoint %s: the persisted state (revision %d, by %s) overrides gateway.toml",
                    name,
                    state.revision,
                    state.changed_by,
                )
            merged[name] = state
        for state in merged.values():
            entry = self.repository.entry(state.spec.champion.model)
            if entry is None or state.spec.champion.version not in entry.versions:
                log.warning("endpoint %s: its champion %s is not ready", state.name, state.spec.champion)
        self._endpoints = merged
        self.router.rebuild(self._specs())

    def _specs(self) -> dict[str, EndpointSpec]:
        return {name: state.spec for name, state in self._endpoints.items()}

    def list(self) -> tuple[EndpointState, ...]:
        return tuple(state for _, state in sorted(self._endpoints.items()))

    def get(self, name: str) -> EndpointState:
        state = self._endpoints.get(name)
        if state is None:
            raise NotFound(f"unknown endpoint: '{name}'")
        return state

    async def audit(
        self, limit: int = 100, since_revision: int | None = None, endpoint: str | None = None
    ) -> Sequence[dict[str, Any]]:
        """The latest `limit` audit entries (oldest first), optionally of one endpoint or above a revision."""
        return await asyncio.to_thread(self.store.audit.read, limit, endpoint, since_revision)

    # ---------------------------------------------------------------- endpoint changes

    async def put(
        self, name: str, body: Any, actor: str, if_match: int | None = None
    ) -> tuple[EndpointState, bool]:
        """Replace (or create) an endpoint's whole desired state; also says whether it was created."""
        try:
            check_model_name(name)
        except InvalidArgument:
            raise InvalidArgument(
                f"invalid endpoint name {name!r}: use letters, digits, '_', '-' and '.', starting with a "
                "letter or digit, at most 128 characters"
            ) from None
        spec = parse_spec(name, body)
        created = name not in self._endpoints
        state = await self._mutate(name, actor, if_match, "put", lambda current: self._next(current, spec))
        return state, created and state.revision == 1

    async def patch(self, name: str, body: Any, actor: str, if_match: int | None = None) -> EndpointState:
        """Change part of an endpoint: `{"challenger": {"weight": 0.3}}`, `{"shadow": null}`, ..."""

        def change(current: EndpointState | None) -> tuple[EndpointSpec, tuple[EndpointSpec, ...]]:
            assert current is not None
            return self._next(current, apply_patch(current.spec, body))

        return await self._mutate(name, actor, if_match, "patch", change, must_exist=True)

    async def promote(self, name: str, actor: str, if_match: int | None = None) -> EndpointState:
        """The challenger becomes the champion; the old champion stays on as challenger at weight 0."""

        def change(current: EndpointState | None) -> tuple[EndpointSpec, tuple[EndpointSpec, ...]]:
            assert current is not None
            old = current.spec
            if old.challenger is None:
                raise InvalidArgument(f"endpoint '{name}' has no challenger to promote")
            shadow_kept = old.shadow != old.challenger  # a shadow may not repeat the (new) champion
            spec = EndpointSpec(
                name,
                old.challenger,
                old.champion,
                0.0,
                old.shadow if shadow_kept else None,
                old.sample_rate if shadow_kept else 0.0,
            )
            return self._next(current, spec)

        return await self._mutate(name, actor, if_match, "promote", change, must_exist=True)

    async def rollback(self, name: str, actor: str, if_match: int | None = None) -> EndpointState:
        """Restore the split before the latest change; each further rollback goes one change further back."""

        def change(current: EndpointState | None) -> tuple[EndpointSpec, tuple[EndpointSpec, ...]]:
            assert current is not None
            if not current.undo:
                raise InvalidArgument(f"endpoint '{name}' has nothing to roll back")
            return current.undo[-1], current.undo[:-1]

        return await self._mutate(name, actor, if_match, "rollback", change, must_exist=True)

    def _next(
        self, current: EndpointState | None, spec: EndpointSpec
    ) -> tuple[EndpointSpec, tuple[EndpointSpec, ...]]:
        if current is None:
            return spec, ()
        undo = (*current.undo, current.spec)[-self.undo_depth :] if self.undo_depth > 0 else ()
        return spec, undo

    async def _mutate(
        self,
        name: str,
        actor: str,
        if_match: int | None,
        action: str,
        change: Change,
        must_exist: bool = False,
    ) -> EndpointState:
        # Shielded: the work finishes (and releases the lock) even if the HTTP handler is cancelled; the
        # callback retrieves an error nobody is left to await, so asyncio does not report it as lost.
        task = asyncio.ensure_future(self._locked_mutate(name, actor, if_match, action, change, must_exist))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

    async def _locked_mutate(
        self, name: str, actor: str, if_match: int | None, action: str, change: Change, must_exist: bool
    ) -> EndpointState:
        async with self._lock:
            current = self._endpoints.get(name)
            if current is None and must_exist:
                raise NotFound(f"unknown endpoint: '{name}'")
            revision = current.revision if current is not None else 0
            if if_match is not None and if_match != revision:
                raise StaleRevision(
                    f"endpoint '{name}' is at revision {revision}, not {if_match} (If-Match): "
                    "it changed meanwhile; read it again and retry"
                )
            spec, undo = change(current)
            if current is not None and spec == current.spec and action in ("put", "patch"):
                return current
            check_spec(spec, self.repository, current.spec if current is not None else None)
            new = EndpointState(spec, revision + 1, actor, now_rfc3339(), undo)
            endpoints = {**self._endpoints, name: new}
            await asyncio.to_thread(self.store.save, {n: s for n, s in endpoints.items() if s.revision > 0})
            entry = AuditEntry(
                new.changed_at,
                actor,
                action,
                name,
                new.revision,
                spec_to_json(current.spec) if current is not None else None,
                spec_to_json(spec),
            )
            try:
                await asyncio.to_thread(self.store.audit.append, entry)
            finally:  # the state file is the truth now, audit entry or not: memory must follow it
                self._endpoints = endpoints
                self.router.rebuild(self._specs())
                if self.propagate is not None:
                    await self.propagate(self._specs())
            log.info("endpoint %s revision %d: %s by %s", name, new.revision, action, actor)
            for listener in self.listeners:
                listener(name, action)
            return new

    # ---------------------------------------------------------------- models

    def models(self) -> Sequence[IndexRow]:
        return self.repository.index()

    async def load_model(self, name: str, actor: str) -> ModelEntry:
        """(Re)load a model from the repository; Unavailable when no version of it became ready."""
        return await self._model_action(name, actor, "load", self.repository.load)

    async def unload_model(self, name: str, actor: str) -> ModelEntry:
        async def unload(model: str) -> ModelEntry:
            await self.repository.unload(model)
            entry = self.repository.entry(model)
            assert entry is not None
            return entry

        return await self._model_action(name, actor, "unload", unload)

    async def _model_action(
        self, name: str, actor: str, action: str, run: Callable[[str], Awaitable[ModelEntry]]
    ) -> ModelEntry:
        check_model_name(name)
        before = _model_summary(self.repository.entry(name))
        entry = await run(name)
        if self.propagate_model is not None:
            await self.propagate_model(action, name)
        after = _model_summary(entry)
        record = AuditEntry(now_rfc3339(), actor, action, None, None, before, after, model=name)
        await asyncio.to_thread(self.store.audit.append, record)
        log.info("model %s: %s by %s", name, action, actor)
        for listener in self.listeners:
            listener(name, action)
        if action == "load" and not entry.versions:
            raise Unavailable(f"model '{name}' has no ready version after loading: {entry.reason}")
        return entry
