"""The client announces its protocol version (``hubspoke-protocol``) on every call, unary and
streaming, as docs/protocol.md §1 asks, so a hub of another major can refuse it clearly.

The peer is a real grpc.aio server that records each call's metadata and fails it (INTERNAL,
which the client does not retry): the client is the thing under test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from hubspoke import keys, version
from hubspoke.client import CallError, Client
from hubspoke.trust import TrustStore


class _Recorder(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]  # grpc-stubs omit the fields
        metadata = {k: v for k, v in details.invocation_metadata if isinstance(v, str)}  # type: ignore[attr-defined]  # as above
        self.calls.append((method, metadata))

        async def refuse(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            await context.abort(grpc.StatusCode.INTERNAL, "recorded")
            raise AssertionError("abort returns no value")

        if method.endswith("/WatchAgent"):

            async def refuse_stream(
                request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
            ) -> AsyncIterator[bytes]:
                await context.abort(grpc.StatusCode.INTERNAL, "recorded")
                yield b""  # pragma: no cover - abort raises

            return grpc.unary_stream_rpc_method_handler(refuse_stream)
        return grpc.unary_unary_rpc_method_handler(refuse)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[_Recorder, str]]:
    handler = _Recorder()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield handler, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_every_call_announces_the_protocol_version(
    recorder: tuple[_Recorder, str],
) -> None:
    handler, address = recorder
    key = keys.generate("operator")
    async with Client(address, "operator", key, TrustStore([]), timeout_s=5) as client:
        with pytest.raises(CallError):
            await client.spawn("spoke-1", "synthetic", "duration=1")
        with pytest.raises(CallError):
            await client.get("agent-1")
        with pytest.raises(CallError):
            async for _ in client.watch("agent-1"):
                pass

    methods = [m.rsplit("/", 1)[1] for m, _ in handler.calls]
    assert methods == ["SpawnAgent", "GetAgent", "WatchAgent"]
    for _, metadata in handler.calls:
        assert metadata.get(version.PROTOCOL_METADATA_KEY) == str(version.PROTOCOL_VERSION)
