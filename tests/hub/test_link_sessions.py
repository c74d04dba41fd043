"""The hub's side of connect mode without a network: a spoke's session, calls announced on
it, and the bounds (hub/link_sessions.py). The Serve side is played by the test, as a spoke
would: it takes the announced call id, claims the call and hands back what a spoke sends."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from hubspoke.gen.federation.v1 import link_service_pb2, spoke_service_pb2
from hubspoke.hub.link_sessions import ConnectStub, LinkConfig, LinkSessions
from hubspoke.link_protocol import LinkBusyError, LinkRefusedError, SpokeDisconnectedError

SPOKE = "spoke-1"
REQUEST = spoke_service_pb2.SpokeServiceGetAgentRequest()


async def announced(sessions: LinkSessions) -> str:
    session = sessions.get(SPOKE)
    assert session is not None
    out = await asyncio.wait_for(session.next_outgoing(), 5)
    assert out is not None
    return out.call.call_id


async def test_a_spoke_without_a_session_fails_at_once() -> None:
    stub = ConnectStub(LinkSessions(LinkConfig()), SPOKE)
    started = time.monotonic()
    with pytest.raises(SpokeDisconnectedError) as caught:
        await stub.GetAgent(REQUEST, timeout=30)
    assert time.monotonic() - started < 0.5
    assert caught.value.reason == "SPOKE_DISCONNECTED"
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


async def test_a_call_travels_as_announcement_claim_response_and_status() -> None:
    sessions = LinkSessions(LinkConfig())
    sessions.open(SPOKE, 1.0)
    call = asyncio.create_task(ConnectStub(sessions, SPOKE).GetAgent(REQUEST, timeout=5))
    call_id = await announced(sessions)
    with pytest.raises(LinkRefusedError):
        sessions.claim(call_id, "spoke-2")  # another spoke's stream
    pending = sessions.claim(call_id, SPOKE)
    with pytest.raises(LinkRefusedError):
        sessions.claim(call_id, SPOKE)  # served once
    assert pending.method == "GetAgent"
    answer = spoke_service_pb2.SpokeServiceGetAgentResponse()
    answer.reply.payload = b"signed elsewhere"
    await pending.inbox.put(answer.SerializeToString())
    await pending.inbox.put(link_service_pb2.LinkServeStatus(code=0))
    assert await call == answer
    assert pending.abandoned.is_set()
    assert not sessions.get(SPOKE).pending  # type: ignore[union-attr]


async def test_a_spoke_error_status_becomes_the_rpc_error_dial_mode_raises() -> None:
    sessions = LinkSessions(LinkConfig())
    sessions.open(SPOKE, 1.0)
    call = asyncio.create_task(ConnectStub(sessions, SPOKE).GetAgent(REQUEST, timeout=5))
    pending = sessions.claim(await announced(sessions), SPOKE)
    await pending.inbox.put(
        link_service_pb2.LinkServeStatus(
            code=grpc.StatusCode.NOT_FOUND.value[0], message="no such agent"
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no such agent"


async def test_deadline_session_end_and_the_pending_bound() -> None:
    sessions = LinkSessions(LinkConfig(max_pending_calls=1))
    session = sessions.open(SPOKE, 1.0)
    stub = ConnectStub(sessions, SPOKE)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub.GetAgent(REQUEST, timeout=0.2)  # nobody serves it
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not session.pending

    first = asyncio.create_task(stub.GetAgent(REQUEST, timeout=5))
    await announced(sessions)
    await announced(sessions)
    with pytest.raises(LinkBusyError):
        await stub.GetAgent(REQUEST, timeout=5)  # over link_max_pending_calls, at once
    sessions.close(session, "test")
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await first
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(SpokeDisconnectedError):
        await stub.GetAgent(REQUEST, timeout=5)


async def test_heartbeats_must_be_newer_and_a_new_session_replaces_the_old() -> None:
    sessions = LinkSessions(LinkConfig(min_heartbeat_s=0.5, max_heartbeat_s=2.0))
    old = sessions.open(SPOKE, 0.01)
    assert old.interval_s == 0.5  # clamped
    assert old.heartbeat((10, 0)) == 0.0
    with pytest.raises(Exception, match="not newer"):
        old.heartbeat((10, 0))
    new = sessions.open(SPOKE, 99)
    assert new.interval_s == 2.0
    assert old.closed.is_set()
    assert sessions.get(SPOKE) is new
    sessions.claim_nonce(SPOKE, b"n" * 24)
    with pytest.raises(Exception, match="already used"):
        sessions.claim_nonce(SPOKE, b"n" * 24)


async def test_idle_waits_for_calls_in_flight_then_returns_at_once() -> None:
    sessions = LinkSessions(LinkConfig())
    sessions.open(SPOKE, 1.0)
    await asyncio.wait_for(sessions.idle(5), 1)  # nothing in flight
    call = asyncio.create_task(ConnectStub(sessions, SPOKE).GetAgent(REQUEST, timeout=5))
    pending = sessions.claim(await announced(sessions), SPOKE)
    started = time.monotonic()
    await sessions.idle(0.2)  # the call is still in flight: the whole wait
    assert time.monotonic() - started >= 0.2
    await pending.inbox.put(link_service_pb2.LinkServeStatus(code=0))
    with pytest.raises(grpc.aio.AioRpcError):
        await call  # OK without a message: INTERNAL
    await asyncio.wait_for(sessions.idle(5), 1)
