"""The floor: trivial servers that answer a fixed inference reply without decoding or computing anything.

``python -m benchmarks.floor grpc|http --ports-file F`` serves on a loopback port 0 until SIGTERM. What
they cost per call (server CPU / answers) is the least any Python server built on grpc.aio or aiohttp can
cost here, whatever it does with the request: the gateway's CPU targets are read against it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path


def _announce(ports_file: Path, ports: dict[str, int]) -> None:
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    tmp.replace(ports_file)


async def _grpc(ports_file: Path, stop: asyncio.Event) -> None:
    import grpc

    from benchmarks import wire
    from gateway.grpc.generated import grpc_service_pb2 as pb

    reply = pb.ModelInferResponse(model_name="demo", model_version="1")
    reply.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 10])
    reply.raw_output_contents.append(bytes(40))
    answer = reply.SerializeToString()

    async def infer(request: bytes, context: object) -> bytes:
        return answer

    handler = grpc.method_handlers_generic_handler(
        wire.GRPC_INFER.split("/")[1],
        {wire.GRPC_INFER.split("/")[2]: grpc.unary_unary_rpc_method_handler(infer)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _announce(ports_file, {"grpc": port, "http": 0})
    await stop.wait()
    await server.stop(1)


async def _http(ports_file: Path, stop: asyncio.Event) -> None:
    from aiohttp import web

    body = json.dumps(
        {
            "model_name": "demo",
            "model_version": "1",
            "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}],
        }
    ).encode()

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    _announce(ports_file, {"grpc": 0, "http": port})
    await stop.wait()
    await runner.cleanup()


async def _serve(kind: str, ports_file: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await (_grpc if kind == "grpc" else _http)(ports_file, stop)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor")
    parser.add_argument("kind", choices=("grpc", "http"))
    parser.add_argument("--ports-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.kind, args.ports_file))


if __name__ == "__main__":
    main()
