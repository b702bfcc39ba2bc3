"""The model repository: `<root>/<model>/<version>/model.onnx` plus an optional `<root>/<model>/config.toml`.

Rules of this module:
- A (re)load builds every new version completely (session, warm-up) off the event loop before anything
  can route to it, then swaps the model's version table with one assignment. A version that fails to load
  keeps its running predecessor serving and records the reason.
- Folders that are not models (no numeric version folder holding model.onnx, another server's files) are
  ignored, never an error. Model names are single safe path components, so no load or unload call can
  reach outside the repository.
- Nothing outside the repository is read: a model folder, config.toml, version folder or model.onnx that is
  a link resolving outside the (resolved) root fails to load with the reason; external data files must be
  inside their version folder (runtime.session).
- Listeners are told after every change, so the gateway can rebuild its routing table and bind metrics.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from runtime.config import CONFIG_FILE, MODEL_FILE, ModelConfig, load_model_config
from runtime.errors import InvalidArgument, ModelLoadError, NotFound, Unavailable
from runtime.model import ModelVersion

log = logging.getLogger("onnxgate.runtime")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class ModelState(enum.Enum):
    READY = "READY"
    LOADING = "LOADING"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


@dataclass(slots=True)
class ModelEntry:
    """What the repository knows of one model name."""

    name: str
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    config: ModelConfig | None = None
    versions: dict[int, ModelVersion] = field(default_factory=dict)  # ready versions only
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it is not ready
    latest: ModelVersion | None = None  # the highest ready version: where unversioned requests go


@dataclass(frozen=True, slots=True)
class IndexRow:
    name: str
    version: str
    state: str
    reason: str


def check_model_name(name: str) -> None:
    if not _NAME.match(name) or ".." in name:
        raise InvalidArgument(
            f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or "
            "digit, at most 128 characters"
        )


def outside_root(path: Path, root: Path) -> bool:
    """True when `path`, links followed, is not inside `root` (links followed too)."""
    return not path.resolve().is_relative_to(root.resolve())


def parse_version(version: str | int | None) -> int | None:
    """'' or None means 'let the policy decide'; anything else must be a positive integer."""
    if version is None or version == "":
        return None
    if isinstance(version, int):
        value = version
    elif version.isdigit() and len(version) <= 18:
        value = int(version)
    else:
        raise InvalidArgument(f"model version must be a positive integer, got {version!r}")
    if value <= 0:
        raise InvalidArgument(f"model version must be a positive integer, got {version!r}")
    return value


class ModelRepository:
    def __init__(self, root: Path, executor: Executor) -> None:
        self.root = root
        self._executor = executor
        self._models: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[Callable[[str], None]] = []

    # ---------------------------------------------------------------- discovery

    def discover(self) -> list[str]:
        """Names of the folders under the root that look like models."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and _NAME.match(folder.name) and self._version_dirs(folder):
                found.append(folder.name)
        return found

    @staticmethod
    def _version_dirs(folder: Path) -> list[int]:
        versions = []
        for sub in folder.iterdir():
            if sub.is_dir() and sub.name.isdigit() and int(sub.name) > 0 and (sub / MODEL_FILE).exists():
                versions.append(int(sub.name))
        return versions

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    # ---------------------------------------------------------------- lookups (request path)

    def entry(self, name: str) -> ModelEntry | None:
        return self._models.get(name)

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """The version that serves (name, version); NotFound or Unavailable otherwise."""
        entry = self._models.get(name)
        if entry is None:
            raise NotFound(f"unknown model: '{name}'")
        if version is None:
            if entry.latest is None:
                raise Unavailable(f"model '{name}' has no ready version: {entry.reason or entry.state.value}")
            return entry.latest
        found = entry.versions.get(version)
        if found is None:
            if version in entry.failed:
                raise Unavailable(f"model '{name}' version {version} is not ready: {entry.failed[version]}")
            raise NotFound(f"unknown version {version} of model '{name}'")
        return found

    def names(self) -> list[str]:
        return sorted(self._models)

    def index(self, ready_only: bool = False) -> list[IndexRow]:
        rows = []
        for name in self.discover() if not ready_only else []:
            if name not in self._models:
                rows.append(IndexRow(name, "", "UNAVAILABLE", "not loaded"))
        for name, entry in sorted(self._models.items()):
            for v in sorted(entry.versions):
                why = (
                    f"reload failed, previous load still serving: {entry.failed[v]}"
                    if v in entry.failed
                    else ""
                )
                rows.append(IndexRow(name, str(v), ModelState.READY.value, why))
            if not ready_only:
                for v, why in sorted(entry.failed.items()):
                    if v not in entry.versions:
                        rows.append(IndexRow(name, str(v), ModelState.UNAVAILABLE.value, why))
                if not entry.versions and not entry.failed:
                    rows.append(IndexRow(name, "", entry.state.value, entry.reason))
        return sorted(rows, key=lambda r: (r.name, int(r.version) if r.version else 0))

    # ---------------------------------------------------------------- load / unload

    async def load_all(self) -> None:
        for name in self.discover():
            await self.load(name, missing_ok=True)

    async def load(self, name: str, missing_ok: bool = False) -> ModelEntry:
        """(Re)load a model. Raises only for a name that is invalid or absent; load failures are recorded."""
        check_model_name(name)
        folder = self.root / name
        if not folder.is_dir():
            raise NotFound(f"model '{name}' is not in the model repository {self.root}")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._models.get(name) or ModelEntry(name)
            self._models[name] = entry
            if not entry.versions:
                entry.state = ModelState.LOADING
            try:
                for path in (folder, folder / CONFIG_FILE):
                    if outside_root(path, self.root):
                        raise ModelLoadError(
                            f"{path} is a link that resolves outside the model repository: refused"
                        )
                config = load_model_config(folder)
                on_disk = self._version_dirs(folder)
                selected = config.version_policy.select(on_disk)
                if not selected:
                    raise ModelLoadError(f"model '{name}' has no version folder with {MODEL_FILE} to load")
            except ModelLoadError as exc:
                entry.failed = {v: exc.message for v in entry.versions} if entry.versions else {}
                self._finish(entry, entry.versions, exc.message)
                log.error("model %s not loaded: %s", name, exc.message)
                return entry
            new: dict[int, ModelVersion] = {}
            failed: dict[int, str] = {}
            for version in selected:
                try:
                    for path in (folder / str(version), folder / str(version) / MODEL_FILE):
                        if outside_root(path, self.root):
                            raise ModelLoadError(
                                f"{path} is a link that resolves outside the model repository: refused"
                            )
                    new[version] = await asyncio.to_thread(
                        ModelVersion, name, version, folder, config, self._executor
                    )
                except ModelLoadError as exc:
                    failed[version] = exc.message
                    old = entry.versions.get(version)
                    if old is not None:  # a failed reload leaves the running version serving
                        new[version] = old
                    log.error("model %s version %s not loaded: %s", name, version, exc.message)
            entry.config = config
            entry.failed = failed
            self._finish(entry, new, "; ".join(f"version {v}: {w}" for v, w in sorted(failed.items())))
            return entry

    def _finish(self, entry: ModelEntry, versions: dict[int, ModelVersion], reason: str) -> None:
        entry.versions = dict(versions)
        entry.latest = versions[max(versions)] if versions else None
        entry.state = ModelState.READY if versions else ModelState.UNAVAILABLE
        entry.reason = reason
        for listener in self._listeners:
            listener(entry.name)

    async def unload(self, name: str) -> None:
        check_model_name(name)
        entry = self._models.get(name)
        if entry is None:
            raise NotFound(f"unknown model: '{name}'")
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry.failed = {}
            self._finish(entry, {}, "unloaded")
