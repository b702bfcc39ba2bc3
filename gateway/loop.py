"""Which event loop runs a serving process: uvloop where it is installed and safe, asyncio otherwise.

Why: the native gRPC transport and aiohttp are asyncio protocols; uvloop's libuv transports cut their
per-call CPU (measured in benchmarks/README.md). grpc.aio keeps its own completion-queue poller and is
not run on uvloop, so ``grpc_transport = "grpcio"`` always gets the standard loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from gateway.settings import Settings, SettingsError

LOOPS = ("auto", "uvloop", "asyncio")
_T = TypeVar("_T")


def wants_uvloop(settings: Settings) -> bool:
    choice = settings.event_loop
    if choice not in LOOPS:
        raise SettingsError(f"setting 'event_loop' is '{choice}'; it must be one of {', '.join(LOOPS)}")
    if choice == "asyncio" or settings.grpc_transport != "native":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise SettingsError("setting 'event_loop' is 'uvloop' but uvloop is not installed") from None
        return False
    return True


def run(main: Coroutine[Any, Any, _T], settings: Settings) -> _T:
    """``asyncio.run`` on the loop the settings ask for."""
    if wants_uvloop(settings):
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
