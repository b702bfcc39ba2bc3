"""The HTTP routes of the Open Inference Protocol, as Triton serves them: thin handlers over InferenceService.

Rules of this module:
- A handler reads the request, calls the codec and the service, and wraps the result in a Response.
  Errors are raised, never rendered here: ``status.error_middleware`` is the one place that answers them.
- Nothing per request that can be done once: the server metadata body is built at start-up.
- No logging on the request path.
- A body is read against the size limit (413 before reading when Content-Length is already too large) and
  against the clock: after ``BODY_GRACE_S`` the body must keep arriving at ``BODY_MIN_RATE`` bytes/s on
  average, or the request is answered 408 and its connection closed. A client trickling its body byte by
  byte is cut off within seconds; a large upload over a slow link is not. Waiting costs a coroutine, never
  a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.http import codec
from gateway.service import InferenceService
from gateway.settings import Limits
from gateway.tensors import check_label
from runtime.errors import ErrorCode, InvalidArgument, ResourceExhausted, ServingError, Unsupported

_JSON = codec.JSON_TYPE
_ROUTING_HEADER = "x-routing-key"
# Defaults for the body clock; a `Limits` field of the same name (body_grace_s, body_min_rate) wins.
BODY_GRACE_S = 5.0
BODY_MIN_RATE = 16 * 1024  # bytes per second, on average, once the grace period is over


def _body_timeout(limit: int, received: int) -> web.HTTPRequestTimeout:
    return web.HTTPRequestTimeout(
        text=f"request body not received in time ({received} bytes arrived; the body must arrive at "
        f"{limit} bytes/s or faster after the first seconds)"
    )


def _json(doc: Any) -> web.Response:
    return web.Response(body=codec.dumps(doc), content_type=_JSON)


def _status(ok: bool) -> web.Response:
    return web.Response(status=200 if ok else 503)


def _model(request: web.Request) -> tuple[str, str]:
    info = request.match_info
    return info["model"], info.get("version", "")


class HttpEndpoints:
    def __init__(
        self,
        service: InferenceService,
        limits: Limits,
        body_grace_s: float | None = None,
        body_min_rate: int | None = None,
    ) -> None:
        self.service = service
        self.limits = limits
        self.body_grace_s = float(
            body_grace_s if body_grace_s is not None else getattr(limits, "body_grace_s", BODY_GRACE_S)
        )
        self.body_min_rate = int(
            body_min_rate if body_min_rate is not None else getattr(limits, "body_min_rate", BODY_MIN_RATE)
        )
        self._server_metadata = codec.dumps(codec.render_server_metadata(*service.server_metadata()))

    def routes(self) -> list[web.RouteDef]:
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        routes = [
            web.get("/v2", self.server_metadata, allow_head=False),
            web.get("/v2/health/live", self.live, allow_head=False),
            web.get("/v2/health/ready", self.ready, allow_head=False),
            # Before "/v2/models/{model}" so that the plain path wins.
            web.get("/v2/models/stats", self.statistics, allow_head=False),
            web.post("/v2/repository/index", self.repository_index),
            web.post("/v2/repository/models/{model}/load", self.load),
            web.post("/v2/repository/models/{model}/unload", self.unload),
        ]
        for base in (model, versioned):
            routes += [
                web.get(base, self.model_metadata, allow_head=False),
                web.get(base + "/ready", self.model_ready, allow_head=False),
                web.get(base + "/config", self.model_config, allow_head=False),
                web.get(base + "/stats", self.statistics, allow_head=False),
                web.post(base + "/infer", self.infer),
            ]
        return routes

    async def _body(self, request: web.Request) -> bytes:
        """The whole body, within the size limit and the body clock (see the module's rules)."""
        limit = self.limits.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:  # refuse before reading anything
            raise ResourceExhausted(
                f"request body of {length} bytes is larger than the limit of {limit} bytes (max_body_bytes)"
            )
        content = request.content
        if length is not None and content.is_eof():  # all of it came with the headers: no clock needed
            body = content.read_nowait()
            if len(body) == length:
                return body
            return body + await content.read()  # not expected (aiohttp buffers it all), but exact
        loop = asyncio.get_running_loop()
        start = loop.time()
        grace, rate = self.body_grace_s, self.body_min_rate
        chunks: list[bytes] = []
        received = 0
        while not content.at_eof():
            # The deadline moves on with every byte that arrives: grace + received / rate after the start.
            remaining = start + grace + received / rate - loop.time()
            if remaining <= 0:
                raise _body_timeout(rate, received)
            try:
                async with asyncio.timeout(remaining):
                    chunk = await content.readany()
            except TimeoutError:
                raise _body_timeout(rate, received) from None
            except HttpProcessingError as exc:  # e.g. broken chunked encoding
                raise InvalidArgument(f"request body is malformed: {exc.message}") from None
            except ConnectionError:  # the client went away mid-body: nobody to answer, nothing to log
                raise ServingError(
                    "client closed the connection while sending the body", ErrorCode.CANCELLED
                ) from None
            if not chunk:
                break
            received += len(chunk)
            if received > limit:  # chunked bodies have no Content-Length to check up front
                raise ResourceExhausted(
                    f"request body is larger than the limit of {limit} bytes (max_body_bytes)"
                )
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # ------------------------------------------------------------------ health and metadata

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.Response(body=self._server_metadata, content_type=_JSON)

    async def live(self, request: web.Request) -> web.Response:
        return _status(self.service.live())

    async def ready(self, request: web.Request) -> web.Response:
        return _status(self.service.ready())

    async def model_ready(self, request: web.Request) -> web.Response:
        return _status(self.service.model_ready(*_model(request)))

    async def model_metadata(self, request: web.Request) -> web.Response:
        return _json(codec.render_model_metadata(self.service.model_metadata(*_model(request))))

    async def model_config(self, request: web.Request) -> web.Response:
        return _json(codec.render_model_config(self.service.model_config(*_model(request))))

    async def statistics(self, request: web.Request) -> web.Response:
        name = request.match_info.get("model", "")
        version = request.match_info.get("version", "")
        return _json(codec.render_statistics(self.service.model_statistics(name, version)))

    # ------------------------------------------------------------------ inference

    async def infer(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        headers = request.headers
        content_type = headers.get("Content-Type")
        body = await self._body(request)
        infer_request = codec.decode_infer_request(
            body,
            codec.parse_header_length(headers.get(codec.HEADER_LENGTH)),
            content_type,
            name,
            version,
            self.limits,
        )
        if infer_request.routing_key is None:  # the body's routing_key parameter wins over the header
            header = headers.get(_ROUTING_HEADER) or None
            infer_request.routing_key = check_label(header, f"{_ROUTING_HEADER} header") if header else None
        response = await self.service.infer(infer_request)
        use_msgpack = codec.is_msgpack(content_type) or codec.MSGPACK_TYPE in headers.get("Accept", "")
        payload, response_headers = codec.encode_infer_response(
            response, codec.wants_binary_output(infer_request), use_msgpack
        )
        return web.Response(body=payload, headers=response_headers)

    # ------------------------------------------------------------------ repository

    async def repository_index(self, request: web.Request) -> web.Response:
        doc = codec.decode_control_body(await self._body(request), "repository index")
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("repository index: 'ready' must be true or false")
        return _json(codec.render_repository_index(self.service.repository_index(ready)))

    async def _control_parameters(self, request: web.Request, what: str) -> None:
        doc = codec.decode_control_body(await self._body(request), what)
        params = doc.get("parameters")
        if params is None:
            return
        if not isinstance(params, dict):
            raise InvalidArgument(f"{what}: 'parameters' must be an object")
        for key in params:
            if key == "config" or key.startswith("file:"):
                raise Unsupported(
                    f"{what}: overriding the model's configuration or files ('{key}') is not supported"
                )

    async def load(self, request: web.Request) -> web.Response:
        await self._control_parameters(request, "load")
        await self.service.load_model(request.match_info["model"])
        return _json({})

    async def unload(self, request: web.Request) -> web.Response:
        await self._control_parameters(request, "unload")  # unload_dependents: we have no ensembles
        await self.service.unload_model(request.match_info["model"])
        return _json({})
