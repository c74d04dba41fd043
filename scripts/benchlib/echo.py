"""The gRPC floor: a unary echo of raw bytes, served directly or through a relay process.

Run as ``python -m benchlib.echo [--forward HOST:PORT]``. Without ``--forward`` it answers
each call with the request bytes; with it, it forwards each call to that echo server and
returns its answer, like the hub's hop. No proto: generic handlers, bytes in and out.
Prints ``serving <port>`` once it accepts calls.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"
_OPTIONS = [("grpc.so_reuseport", 0)]


def _handler(fn: object) -> grpc.GenericRpcHandler[bytes, bytes]:
    method = grpc.unary_unary_rpc_method_handler(fn)  # type: ignore[arg-type]  # generic bytes handler
    return grpc.method_handlers_generic_handler(SERVICE, {"Echo": method})


async def serve(listen: str, forward: str | None) -> None:
    server = grpc.aio.server(options=_OPTIONS)
    channel: grpc.aio.Channel | None = None
    if forward is None:

        async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return request

        server.add_generic_rpc_handlers([_handler(echo)])
    else:
        channel = grpc.aio.insecure_channel(forward)
        # No serializers: the bytes pass through untouched.
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

        async def relay(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            answer: bytes = await call(request, timeout=10)
            return answer

        server.add_generic_rpc_handlers([_handler(relay)])
    try:
        await serve_until_signalled(server, server.add_insecure_port(listen))
    finally:
        if channel is not None:
            await channel.close(None)


async def serve_until_signalled(server: grpc.aio.Server, port: int) -> None:
    """Start ``server`` (bound to ``port``), print ``serving <port>`` once it accepts calls,
    and stop it on SIGINT or SIGTERM (the floor servers' shared life cycle)."""
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"serving {port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchlib.echo", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--forward", default=None, help="relay each call to this echo server")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.forward))


if __name__ == "__main__":
    main()
