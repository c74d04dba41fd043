"""The server wrapper's protocol check remembers accepted announcements (issue 13), and still
refuses every call that announces another major version, however often it comes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message

from hubspoke.gen.federation.v1 import spoke_service_pb2
from hubspoke.grpc import server as grpc_server
from hubspoke.grpc.server import BuiltServer, ServerOptions, Service, build_server

_SERVICE = spoke_service_pb2.DESCRIPTOR.services_by_name["SpokeService"]
_METHOD = f"/{_SERVICE.full_name}/GetQueueStats"


class _Servicer:
    def __getattr__(self, name: str) -> Any:
        out = message_factory.GetMessageClass(_SERVICE.methods_by_name[name].output_type)

        async def impl(request: Message, context: object) -> Message:
            return out()

        return impl


@pytest.fixture
async def server() -> AsyncIterator[BuiltServer]:
    built = build_server([Service(_SERVICE, _Servicer())], "127.0.0.1:0", ServerOptions())
    await built.server.start()
    yield built
    await built.server.stop(None)


async def _code(channel: grpc.aio.Channel, announced: str | None) -> grpc.StatusCode:
    metadata = () if announced is None else (("hubspoke-protocol", announced),)
    try:
        await channel.unary_unary(_METHOD)(b"", timeout=10, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_other_majors_are_refused_every_time_and_the_memory_is_bounded(
    server: BuiltServer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for announced in ("1", "1", None, "2", "2", "garbage", "1", "2"):
            expected = (
                grpc.StatusCode.FAILED_PRECONDITION
                if announced in ("2", "garbage")
                else grpc.StatusCode.OK
            )
            assert await _code(channel, announced) == expected, announced
        for minor in range(40):  # distinct accepted announcements: remembered up to a bound
            assert await _code(channel, f"1.{minor}") == grpc.StatusCode.OK
        assert await _code(channel, "2.0") == grpc.StatusCode.FAILED_PRECONDITION
    assert {"1", None} <= grpc_server._accepted
    assert not {"2", "garbage", "2.0"} & grpc_server._accepted
    assert len(grpc_server._accepted) <= grpc_server._ACCEPTED_MAX
