"""The metrics listener: Prometheus exposition of the gateway's registry on its own port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def create_metrics_app(
    registry: CollectorRegistry, refresh: Callable[[], Awaitable[None]] | None = None
) -> web.Application:
    """`refresh` runs before each scrape: with workers it gathers their records over their links."""

    async def metrics(_request: web.Request) -> web.Response:
        if refresh is not None:
            await refresh()
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
