"""The control plane end to end in one process: a real control API on 127.0.0.1, a real repository of demo
models, a real router and state folder. Each test runs its own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from gateway import ctl
from gateway.control.api import create_control_app, parse_if_match
from gateway.control.auth import Authenticator, load_tokens
from gateway.control.controller import EndpointController
from gateway.control.errors import Unauthenticated
from gateway.control.store import StateFileError, StateStore
from gateway.demo import write_demo_repository
from gateway.routing.router import Router
from gateway.routing.table import EndpointSpec, Target
from gateway.settings import Settings, SettingsError
from runtime.errors import InvalidArgument
from runtime.repository import ModelRepository

T = TypeVar("T")

DEMO = EndpointSpec(
    "demo", Target("demo", 1), Target("demo", 2), 0.2, Target("demo", 3), 1.0
)  # as the demo gateway.toml defines it
CONFIG = {"demo": DEMO, "adder": EndpointSpec("adder", Target("simple", 1))}
OPERATOR_SECRET = "operator-secret-0123456789"
VIEWER_SECRET = "viewer-secret-0123456789"
TOKENS_TOML = f"""
[[tokens]]
name = "alice"
secret = "{OPERATOR_SECRET}"
role = "operator"

[[tokens]]
name = "victor"
secret = "{VIEWER_SECRET}"
role = "viewer"
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("control-models")
    write_demo_repository(root)
    return root / "models"


@dataclass
class Control:
    url: str
    session: aiohttp.ClientSession
    controller: EndpointController
    router: Router
    state_dir: Path

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = None, **headers: str
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        headers = {k.replace("_", "-"): v for k, v in headers.items()}
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(method, self.url + path, data=data, headers=headers) as response:
            return response.status, orjson.loads(await response.read()), response.headers

    async def revision(self, name: str = "demo") -> int:
        status, body, _ = await self.call("GET", f"/v1/endpoints/{name}", token=OPERATOR_SECRET)
        assert status == 200
        return int(body["revision"])


@contextlib.asynccontextmanager
async def control(models: Path, state_dir: Path, auth: Authenticator | None = None) -> AsyncIterator[Control]:
    executor = ThreadPoolExecutor(max_workers=2)
    repository = ModelRepository(models, executor)
    await repository.load("demo")
    await repository.load("simple")
    router = Router(repository, CONFIG)
    controller = EndpointController(router, repository, StateStore(state_dir))
    await controller.startup(CONFIG)
    if auth is None:
        tokens = state_dir.parent / "tokens.toml"
        tokens.write_text(TOKENS_TOML)
        auth = Authenticator(load_tokens(tokens))
    runner = web.AppRunner(create_control_app(controller, auth), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    session = aiohttp.ClientSession()
    try:
        yield Control(f"http://127.0.0.1:{port}", session, controller, router, state_dir)
    finally:
        await session.close()
        await runner.cleanup()
        executor.shutdown()


def run(models: Path, tmp_path: Path, scenario: Callable[[Control], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        async with control(models, tmp_path / "state", **kw) as c:
            return await scenario(c)

    return asyncio.run(main())


async def audit(c: Control, **query: str) -> list[dict[str, Any]]:
    path = "/v1/audit?" + "&".join(f"{k}={v}" for k, v in query.items())
    status, body, _ = await c.call("GET", path, token=OPERATOR_SECRET)
    assert status == 200, body
    return list(body["entries"])


def persisted(c: Control, name: str = "demo") -> dict[str, Any]:
    return dict(json.loads((c.state_dir / "routing.json").read_text())["endpoints"][name])


# ---------------------------------------------------------------- reads


def test_endpoints_start_from_the_config(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> None:
        status, body, _ = await c.call("GET", "/v1/endpoints", token=VIEWER_SECRET)
        assert status == 200
        assert [e["name"] for e in body["endpoints"]] == ["adder", "demo"]
        status, demo, headers = await c.call("GET", "/v1/endpoints/demo", token=VIEWER_SECRET)
        assert status == 200 and headers["ETag"] == '"0"'
        assert demo["champion"] == {"model": "demo", "version": 1}
        assert demo["challenger"] == {"model": "demo", "version": 2, "weight": 0.2}
        assert demo["shadow"] == {"model": "demo", "version": 3, "sample_rate": 1.0}
        assert (demo["revision"], demo["changed_by"]) == (0, "config")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", demo["changed_at"])
        status, body, _ = await c.call("GET", "/v1/endpoints/nope", token=VIEWER_SECRET)
        assert status == 404 and "nope" in body["error"]
        status, body, _ = await c.call("GET", "/v1/no/such/path", token=VIEWER_SECRET)
        assert status == 404 and "error" in body
        status, body, _ = await c.call("DELETE", "/v1/endpoints/demo", token=OPERATOR_SECRET)
        assert status == 405 and "error" in body
        assert not (c.state_dir / "routing.json").exists()  # reading writes nothing

    run(models, tmp_path, scenario)


# ---------------------------------------------------------------- changes


def test_patch_changes_only_what_it_names(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> None:
        status, body, headers = await c.call(
            "PATCH", "/v1/endpoints/demo", {"challenger": {"weight": 0.3}}, OPERATOR_SECRET, If_Match="0"
        )
        assert status == 200 and headers["ETag"] == '"1"'
        assert body["challenger"] == {"model": "demo", "version": 2, "weight": 0.3}
        assert (body["revision"], body["changed_by"]) == (1, "alice")
        # Durable before the answer: the file already holds the acknowledged revision.
        assert persisted(c)["revision"] == 1 and persisted(c)["challenger"]["weight"] == 0.3
        assert c.router.specs["demo"].weight == 0.3 and c.router.table.routes["demo"].weight == 0.3
        assert "adder" not in json.loads((c.state_dir / "routing.json").read_text())["endpoints"]

        status, body, _ = await c.call("PATCH", "/v1/endpoints/demo", {"shadow": None}, OPERATOR_SECRET)
        assert status == 200 and body["shadow"] is None and body["revision"] == 2
        assert c.router.table.routes["demo"].shadow is None

        status, body, _ = await c.call(
            "PATCH", "/v1/endpoints/demo", {"champion": {"version": 3}}, OPERATOR_SECRET
        )
        assert status == 200 and body["champion"] == {"model": "demo", "version": 3}
        assert c.router.table.routes["demo"].champion is not None
        assert c.router.table.routes["demo"].champion.version == 3

        status, body, _ = await c.call(
            "PATCH", "/v1/endpoints/demo", {"shadow": {"model": "simple", "version": 1}}, OPERATOR_SECRET
        )
        assert status == 200 and body["shadow"] == {"model": "simple", "version": 1, "sample_rate": 0.0}

        entries = await audit(c, endpoint="demo")
        assert [(e["action"], e["revision"], e["actor"]) for e in entries] == [
            ("patch", 1, "alice"),
            ("patch", 2, "alice"),
            ("patch", 3, "alice"),
            ("patch", 4, "alice"),
        ]
        assert entries[0]["before"]["challenger"]["weight"] == 0.2
        assert entries[0]["after"]["challenger"]["weight"] == 0.3
        assert entries[1]["after"]["shadow"] is None

    run(models, tmp_path, scenario)


def test_put_creates_replaces_and_is_idempotent(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> None:
        spec = {"champion": {"model": "simple", "version": 1}}
        status, body, headers = await c.call(
            "PUT", "/v1/endpoints/ranker", spec, OPERATOR_SECRET, If_Match="0"
        )
        assert status == 201 and headers["ETag"] == '"1"'
        assert body == {**body, "name": "ranker", "challenger": None, "shadow": None, "revision": 1}
        assert "ranker" in c.router.table.routes and c.router.table.routes["ranker"].configured

        spec2 = {"name": "ranker", **spec, "challenger": {"model": "demo", "version": 2, "weight": 0.5}}
        status, body, _ = await c.call("PUT", "/v1/endpoints/ranker", spec2, OPERATOR_SECRET)
        assert status == 200 and body["revision"] == 2 and body["challenger"]["weight"] == 0.5
        status, body, _ = await c.call("PUT", "/v1/endpoints/ranker", spec2, OPERATOR_SECRET)
        assert status == 200 and body["revision"] == 2  # the same split again: nothing to record

        status, body, _ = await c.call("PUT", "/v1/endpoints/ranker", {**spec2, "name": "x"}, OPERATOR_SECRET)
        assert status == 400 and "path" in body["error"]
        status, body, _ = await c.call("PUT", "/v1/endpoints/bad..name", spec, OPERATOR_SECRET)
        assert status == 400 and "endpoint name" in body["error"]
        status, body, _ = await c.call("PUT", "/v1/endpoints/demo", {"challenger": None}, OPERATOR_SECRET)
        assert status == 400 and "champion" in body["error"]
        assert next((e["action"], e["endpoint"], e["before"]) for e in await audit(c)) == (
            "put",
            "ranker",
            None,
        )

    run(models, tmp_path, scenario)


def test_promote_and_rollback_walk_back_through_changes(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> None:
        async def get() -> dict[str, Any]:
            return (await c.call("GET", "/v1/endpoints/demo", token=OPERATOR_SECRET))[1]

        def split(e: dict[str, Any]) -> tuple[Any, ...]:
            return e["champion"], e["challenger"], e["shadow"]

        history = [split(await get())]
        await c.call("PATCH", "/v1/endpoints/demo", {"challenger": {"weight": 0.5}}, OPERATOR_SECRET)
        history.append(split(await get()))
        await c.call("PATCH", "/v1/endpoints/demo", {"shadow": None}, OPERATOR_SECRET)
        history.append(split(await get()))

        status, body, headers = await c.call("POST", "/v1/endpoints/demo/promote", None, OPERATOR_SECRET)
        assert status == 200 and headers["ETag"] == '"3"'
        assert body["champion"] == {"model": "demo", "version": 2}
        assert body["challenger"] == {"model": "demo", "version": 1, "weight": 0.0}  # remembered, no traffic
        route = c.router.table.routes["demo"]
        assert route.champion is not None and route.champion.version == 2 and route.weight == 0.0

        for revision, expected in zip((4, 5, 6), reversed(history), strict=True):
            status, body, _ = await c.call("POST", "/v1/endpoints/demo/rollback", None, OPERATOR_SECRET)
            assert status == 200 and body["revision"] == revision and split(body) == expected
        assert c.router.specs["demo"] == DEMO
        status, body, _ = await c.call("POST", "/v1/endpoints/demo/rollback", None, OPERATOR_SECRET)
        assert status == 400 and "nothing to roll back" in body["error"]

        await c.call("PATCH", "/v1/endpoints/demo", {"challenger": None}, OPERATOR_SECRET)
        status, body, _ = await c.call("POST", "/v1/endpoints/demo/promote", None, OPERATOR_SECRET)
        assert status == 400 and "no challenger" in body["error"]
        actions = [e["action"] for e in await audit(c, endpoint="demo")]
        assert actions == ["patch", "patch", "promote", "rollback", "rollback", "rollback", "patch"]

    run(models, tmp_path, scenario)


def test_promote_drops_a_shadow_that_would_repeat_the_new_champion(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> None:
        await c.call("PATCH", "/v1/endpoints/demo", {"shadow": {"version": 2}}, OPERATOR_SECRET)
        status, body, _ = await c.call("POST", "/v1/endpoints/demo/promote", None, OPERATOR_SECRET)
        assert status == 200 and body["champion"]["version"] == 2 and body["shadow"] is None

    run(models, tmp_path, scenario)


@pytest.mark.parametrize(
    ("method", "body", "message"),
    [
        ("PATCH", {"challenger": {"version": 9}}, "no ready version 9"),
        ("PATCH", {"challenger": {"weight": 1.5}}, "weight' must be in [0, 1]"),
        ("PATCH", {"challenger": {"weight": -0.1}}, "must be in [0, 1]"),
        ("PATCH", {"challenger": {"weight": "0.5"}}, "must be a number"),
        ("PATCH", {"challenger": {"weight": True}}, "must be a number"),
        ("PATCH", {"shadow": {"sample_rate": 2}}, "sample_rate' must be in [0, 1]"),
        ("PATCH", {"shadow": {"version": 1}}, "shadow must differ from the champion"),
        ("PATCH", {"challenger": {"version": 1}}, "challenger must differ from the champion"),
        ("PATCH", {"colour": "blue"}, "unknown key 'colour'"),
        ("PATCH", {"challenger": {"colour": "blue"}}, "unknown key 'challenger.colour'"),
        ("PATCH", {"champion": None}, "cannot be removed"),
        ("PATCH", {"champion": {"model": "nope"}}, "unknown model 'nope'"),
        ("PATCH", {}, "non-empty"),
        ("PATCH", [1], "non-empty JSON object"),
        ("PUT", {"champion": {"model": "demo", "version": 0}}, "positive integer"),
        ("PUT", {"champion": {"model": "demo", "version": 1}, "revision": 3}, "read-only"),
        ("PUT", {"champion": {"model": "simple_int8", "version": 1}}, "must be loaded first"),
    ],
)
def test_invalid_changes_are_refused_and_change_nothing(
    models: Path, tmp_path: Path, method: str, body: Any, message: str
) -> None:
    async def scenario(c: Control) -> None:
        status, answer, _ = await c.call(method, "/v1/endpoints/demo", body, OPERATOR_SECRET)
        assert status == 400, answer
        assert message.lower() in answer["error"].lower()
        assert await c.revision() == 0 and c.router.specs["demo"] == DEMO
        assert await audit(c) == [] and not (c.state_dir / "routing.json").exists()

    run(models, tmp_path, scenario)


def test_bad_requests_are_json_errors(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> None:
        url = c.url + "/v1/endpoints/demo"
        auth = {"Authorization": f"Bearer {OPERATOR_SECRET}"}
        for data, message in ((b"{not json", "not valid JSON"), (b"", "body is required")):
            async with c.session.patch(url, data=data, headers=auth) as response:
                assert response.status == 400 and message in (await response.json())["error"]
        status, body, _ = await c.call("PATCH", "/v1/endpoints/nope", {"shadow": None}, OPERATOR_SECRET)
        assert status == 404
        status, body, _ = await c.call(
            "PATCH", "/v1/endpoints/demo", {"shadow": None}, OPERATOR_SECRET, If_Match="x"
        )
        assert status == 400 and "If-Match" in body["error"]
        status, body, _ = await c.call("GET", "/v1/audit?limit=0", token=OPERATOR_SECRET)
        assert status == 400 and "limit" in body["error"]
        async with c.session.put(url, data=io.BytesIO(b"x" * (2 << 20)), headers=auth) as response:
            assert response.status == 413 and "error" in await response.json()
        assert await c.revision() == 0

    run(models, tmp_path, scenario)


def test_if_match(models: Path, tmp_path: Path) -> None:
    assert parse_if_match(None) is None
    assert parse_if_match("3") == parse_if_match('"3"') == parse_if_match('W/"3"') == 3
    with pytest.raises(InvalidArgument):
        parse_if_match("*")

    async def scenario(c: Control) -> None:
        patch = {"challenger": {"weight": 0.4}}
        status, _, _ = await c.call("PATCH", "/v1/endpoints/demo", patch, OPERATOR_SECRET, If_Match='"0"')
        assert status == 200
        status, body, _ = await c.call(
            "PATCH", "/v1/endpoints/demo", {"shadow": None}, OPERATOR_SECRET, If_Match="0"
        )
        assert status == 412 and "revision 1" in body["error"]
        status, body, _ = await c.call(
            "PUT",
            "/v1/endpoints/new",
            {"champion": {"model": "simple", "version": 1}},
            OPERATOR_SECRET,
            If_Match="1",
        )
        assert status == 412  # If-Match on an endpoint that does not exist yet: only 0 matches
        assert await c.revision() == 1

    run(models, tmp_path, scenario)


def test_concurrent_patches_with_one_revision_exactly_one_wins(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> None:
        calls = [
            c.call(
                "PATCH",
                "/v1/endpoints/demo",
                {"challenger": {"weight": i / 20}},
                OPERATOR_SECRET,
                If_Match="0",
            )
            for i in range(20)
        ]
        answers = await asyncio.gather(*calls)
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [200] + [412] * 19
        winner = next(body for status, body, _ in answers if status == 200)
        assert await c.revision() == 1 and c.router.specs["demo"].weight == winner["challenger"]["weight"]
        assert len(await audit(c)) == 1 and persisted(c)["revision"] == 1

    run(models, tmp_path, scenario)


def test_a_cancelled_change_still_completes(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> None:
        task = asyncio.create_task(c.controller.patch("demo", {"challenger": {"weight": 0.6}}, "alice"))
        await asyncio.sleep(0)
        task.cancel()
        # Queued behind the first on the controller's lock, so it sees revision 1 only if the first finished.
        state = await c.controller.patch("demo", {"shadow": None}, "alice", if_match=1)
        assert state.revision == 2 and state.spec.weight == 0.6
        assert StateStore(c.state_dir).load()["demo"].revision == 2

    run(models, tmp_path, scenario)


# ---------------------------------------------------------------- persistence across restarts


def test_persisted_state_wins_over_the_config_after_a_restart(models: Path, tmp_path: Path) -> None:
    async def first(c: Control) -> None:
        await c.call("PATCH", "/v1/endpoints/demo", {"challenger": {"weight": 0.7}}, OPERATOR_SECRET)
        await c.call("PATCH", "/v1/endpoints/demo", {"shadow": None}, OPERATOR_SECRET)

    async def second(c: Control) -> None:
        demo = c.controller.get("demo")
        assert (demo.revision, demo.changed_by, demo.spec.weight, demo.spec.shadow) == (2, "alice", 0.7, None)
        assert c.router.specs["demo"] == demo.spec and c.router.table.routes["demo"].shadow is None
        assert c.controller.get("adder").revision == 0  # never changed: still as the config says
        status, body, _ = await c.call("POST", "/v1/endpoints/demo/rollback", None, OPERATOR_SECRET)
        assert status == 200 and body["shadow"] is not None  # the undo stack survived the restart
        assert [e["revision"] for e in await audit(c)] == [1, 2, 3]

    run(models, tmp_path, first)
    run(models, tmp_path, second)


def test_an_unreadable_state_file_stops_start_up(models: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "routing.json").write_text('{"version": 1, "endpoints": {"demo": ')
    with pytest.raises(StateFileError, match=r"routing\.json.*routing\.json\.prev"):
        run(models, tmp_path, lambda c: asyncio.sleep(0))


# ---------------------------------------------------------------- models


def test_models_load_and_unload(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> None:
        status, body, _ = await c.call("GET", "/v1/models", token=VIEWER_SECRET)
        rows = {(m["name"], m["version"]): m["state"] for m in body["models"]}
        assert status == 200 and rows[("demo", "3")] == "READY" and rows[("simple_int8", "")] == "UNAVAILABLE"
        status, body, _ = await c.call("POST", "/v1/models/simple_int8/load", None, VIEWER_SECRET)
        assert status == 403
        status, body, _ = await c.call("POST", "/v1/models/simple_int8/load", None, OPERATOR_SECRET)
        assert status == 200 and body["state"] == "READY" and body["versions"] == [1]
        status, body, _ = await c.call("POST", "/v1/models/simple_int8/unload", None, OPERATOR_SECRET)
        assert status == 200 and body["state"] == "UNAVAILABLE" and body["versions"] == []
        status, body, _ = await c.call("POST", "/v1/models/nope/load", None, OPERATOR_SECRET)
        assert status == 404
        status, body, _ = await c.call("POST", "/v1/models/..%2Fetc/load", None, OPERATOR_SECRET)
        assert status in (400, 404)
        entries = await audit(c)
        assert [(e["action"], e["model"], e["actor"]) for e in entries] == [
            ("load", "simple_int8", "alice"),
            ("unload", "simple_int8", "alice"),
        ]

    run(models, tmp_path, scenario)


# ---------------------------------------------------------------- auth


def test_tokens_and_roles(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> None:
        patch = {"challenger": {"weight": 0.1}}
        status, body, headers = await c.call("GET", "/v1/endpoints")
        assert (
            status == 401 and "missing" in body["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        )
        status, body, _ = await c.call("GET", "/v1/endpoints", token="wrong")
        assert status == 401 and body["error"] == "invalid token"
        status, body, _ = await c.call("GET", "/v1/endpoints", Authorization=f"Basic {VIEWER_SECRET}")
        assert status == 401
        status, body, _ = await c.call("GET", "/v1/no/such/path")
        assert status == 401  # an anonymous caller learns nothing about the routes
        status, _, _ = await c.call("GET", "/v1/endpoints", token=VIEWER_SECRET)
        assert status == 200
        status, _, _ = await c.call("GET", "/v1/audit", token=VIEWER_SECRET)
        assert status == 200
        status, body, _ = await c.call("PATCH", "/v1/endpoints/demo", patch, VIEWER_SECRET)
        assert status == 403 and "victor" in body["error"]
        for path in ("/v1/endpoints/demo/promote", "/v1/endpoints/demo/rollback"):
            assert (await c.call("POST", path, None, VIEWER_SECRET))[0] == 403
        assert await c.revision() == 0
        status, body, _ = await c.call("PATCH", "/v1/endpoints/demo", patch, OPERATOR_SECRET)
        assert status == 200 and body["changed_by"] == "alice"
        assert [e["actor"] for e in await audit(c)] == ["alice"]
        status, body, _ = await c.call("GET", "/openapi.json")
        assert status == 200  # the document is public

    run(models, tmp_path, scenario)


def test_no_tokens_on_loopback_means_local(models: Path, tmp_path: Path) -> None:
    auth = Authenticator.from_settings(Settings(host="127.0.0.1"))

    async def scenario(c: Control) -> None:
        status, body, _ = await c.call("PATCH", "/v1/endpoints/demo", {"challenger": {"weight": 0.1}})
        assert status == 200 and body["changed_by"] == "local"
        assert [e["actor"] for e in await audit(c)] == ["local"]

    run(models, tmp_path, scenario, auth=auth)


def test_a_non_loopback_listener_needs_tokens(tmp_path: Path) -> None:
    for settings in (
        Settings(host="0.0.0.0"),
        Settings(host="127.0.0.1", control_host="10.1.2.3"),
        Settings(host="127.0.0.1", control_host="gateway.example.com"),
    ):
        with pytest.raises(SettingsError, match="not a loopback address"):
            Authenticator.from_settings(settings)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert Authenticator.from_settings(Settings(host="0.0.0.0", control_host=host)).allow_local
    with pytest.raises(SettingsError, match="inference_auth"):
        Authenticator.from_settings(Settings(inference_auth=True))
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS_TOML)
    auth = Authenticator.from_settings(Settings(host="0.0.0.0", tokens_file=tokens, inference_auth=True))
    assert not auth.allow_local
    assert auth.check_inference(f"Bearer {VIEWER_SECRET}").name == "victor"
    for header in (None, "", "Bearer nope", VIEWER_SECRET):
        with pytest.raises(Unauthenticated):
            auth.check_inference(header)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[[tokens]]\nname = "a"\nsecret = "s3cret-value"\nrole = "admin"\n', "'role' must be"),
        ('[[tokens]]\nname = "a"\nsecret = "s3cret-value"\n', "exactly 'name', 'secret' and 'role'"),
        ("tokens = []\n", "one or more"),
        ('[[tokens]]\nname = "a"\nsecret = "s3cret-value"\nrole = "viewer"\n' * 2, "unique"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_tokens_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(content)
    with pytest.raises(SettingsError, match=re.escape(message)) as info:
        load_tokens(path)
    assert str(path) in str(info.value) and "s3cret-value" not in str(info.value)
    with pytest.raises(SettingsError, match="cannot be read"):
        load_tokens(tmp_path / "missing.toml")


# ---------------------------------------------------------------- OpenAPI


def _resolve(doc: dict[str, Any], node: Any) -> None:
    """Every $ref in the document points at something that exists."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None:
            target: Any = doc
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
        for value in node.values():
            _resolve(doc, value)
    elif isinstance(node, list):
        for value in node:
            _resolve(doc, value)


def test_openapi_describes_every_route(models: Path, tmp_path: Path) -> None:
    async def scenario(c: Control) -> dict[str, Any]:
        async with c.session.get(c.url + "/openapi.json") as response:
            assert response.status == 200 and response.content_type == "application/json"
            return dict(json.loads(await response.read()))

    doc = run(models, tmp_path, scenario)
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"]
    app = create_control_app(None, Authenticator((), allow_local=True))  # type: ignore[arg-type]
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    documented = {(m, path) for path, item in doc["paths"].items() for m in item}
    assert routes == documented
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert operation["summary"] and operation["responses"], (method, path)
            assert all(str(code).isdigit() for code in operation["responses"])
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names == set(re.findall(r"{(\w+)}", path)), (method, path)
    _resolve(doc, doc)


# ---------------------------------------------------------------- onnxgate ctl


def test_ctl_commands(models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario(c: Control) -> list[tuple[int, str, str]]:
        results = []
        commands = [
            ["get"],
            ["get", "demo"],
            ["set-weight", "demo", "0.4"],
            ["set-shadow", "demo", "simple", "1", "0.25"],
            ["remove-shadow", "demo"],
            ["set-challenger", "demo", "demo", "3", "0.1"],
            ["promote", "demo"],
            ["rollback", "demo"],
            ["audit", "--limit", "3"],
            ["models"],
            ["set-weight", "demo", "1.5"],
            ["--token", "wrong", "get"],
            ["--if-match", "0", "set-weight", "demo", "0.2"],
        ]
        for command in commands:
            argv = ["--url", c.url, "--token", OPERATOR_SECRET, *command]
            code = await asyncio.to_thread(ctl.main, argv)
            out, err = capsys.readouterr()
            results.append((code, out, err))
        return results

    results = run(models, tmp_path, scenario)
    codes = [code for code, _, _ in results]
    assert codes == [0] * 10 + [1] * 3
    assert "NAME" in results[0][1] and "demo:2 @0.2" in results[0][1]
    assert json.loads(results[1][1])["name"] == "demo"
    assert json.loads(results[2][1])["challenger"]["weight"] == 0.4
    assert json.loads(results[3][1])["shadow"] == {"model": "simple", "version": 1, "sample_rate": 0.25}
    assert json.loads(results[4][1])["shadow"] is None
    assert json.loads(results[5][1])["challenger"] == {"model": "demo", "version": 3, "weight": 0.1}
    assert json.loads(results[6][1])["champion"] == {"model": "demo", "version": 3}
    assert json.loads(results[7][1])["champion"] == {"model": "demo", "version": 1}
    assert "rollback" in results[8][1] and "alice" in results[8][1]
    assert "simple_int8" in results[9][1]
    assert "400" in results[10][2] and "[0, 1]" in results[10][2]
    assert "401" in results[11][2] and "invalid token" in results[11][2]
    assert "412" in results[12][2]


def test_ctl_reports_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["--url", "http://127.0.0.1:9", "models"]) == 1
    assert "cannot reach the control API" in capsys.readouterr().err
