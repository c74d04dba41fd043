"""A connect-mode spoke and several hubds (issue 11, docs/protocol.md "Several hubds"), as real
processes: two hubds of one hub, a spoked in connect mode given both addresses. The hubd that
holds the spoke's session leases it in the hub's Redis; a call made through the other hubd is
forwarded to the holder (spawn, status, watch, kill), whose health view the other shares
(READY via the holder). After SIGKILL of the holder the spoke reconnects to the other hubd and
calls through it work again within 10 s. A hello used at one hubd is refused at the other
(the hello nonce cache is in Redis)."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from hubspoke import commands, envelope, keys, testing, version
from hubspoke import tls as stls
from hubspoke.client import AgentState, CallError, Client, EventKind
from hubspoke.gen.federation.v1 import (
    command_pb2,
    hub_forward_pb2,
    link_service_pb2,
    link_service_pb2_grpc,
)
from hubspoke.hub.forward_service import FORWARD_SERVICE
from hubspoke.hub.forward_wire import PAYLOAD_TYPE_FORWARD
from hubspoke.link_protocol import sign_hello
from hubspoke.testing import Daemon, until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

SPOKE = "spoke-1"
HEARTBEAT_S = 0.5
FAILOVER_LIMIT_S = 10.0
HUB_ENV = {"HUB_LINK_LEASE_POLL_S": "0.3", "HUB_RATE_PER_PRINCIPAL": "0"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[testing.Federation]:
    federation = testing.Federation(tmp_path_factory.mktemp("forward"), [SPOKE], hub_env=HUB_ENV)
    second = f"127.0.0.1:{testing.pick_free_port()}"
    hub_env, spoke_env = testing.connect_env(
        federation,
        heartbeat_interval_s=HEARTBEAT_S,
        hub_addresses=[federation.hub_address, second],
    )
    federation.hub_env.update(hub_env)
    federation.spoke_env.update(spoke_env)
    try:
        await federation.start()
        await federation.start_hub("hub-2", listen=second)
        yield federation
    finally:
        await federation.stop()


def hubds(fed: testing.Federation) -> dict[str, Daemon]:
    """Listen address → hubd, of the hubds still running."""
    return {d.address: d for d in fed.hubs.values() if d.running}


async def view(fed: testing.Federation, address: str) -> tuple[str, str]:
    """The spoke's health and its detail as the hubd at ``address`` sees it."""
    try:
        async with fed.client(timeout_s=3, hub=address) as client:
            rows = {s.name: s for s in await client.spokes()}
    except CallError:
        return "", ""
    row = rows[SPOKE]
    return row.health.name, row.health_detail


async def holder(fed: testing.Federation) -> str | None:
    """The address of the hubd holding the spoke, when the others all see it READY via it."""
    running = hubds(fed)
    for address in running:
        others = [a for a in running if a != address]
        health, _ = await view(fed, address)
        if health != "READY" or not others:
            continue
        seen = [await view(fed, a) for a in others]
        if all(h == "READY" and d == f"via hubd {address}" for h, d in seen):
            return address
    return None


async def _held(fed: testing.Federation) -> str:
    found: list[str] = []

    async def check() -> bool:
        address = await holder(fed)
        if address is not None:
            found.append(address)
        return address is not None

    await until(check, 20, "one hubd holding the spoke, READY via it at the other")
    return found[-1]


async def _open(address: str, hello: Any) -> grpc.aio.AioRpcError | None:
    """Open a Control stream with ``hello``: None when welcomed (then closed), else the
    error the hubd refused it with."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = link_service_pb2_grpc.SpokeLinkServiceStub(channel)
        opener: Any = stub.Control
        call = opener(metadata=version.CALL_METADATA)
        await call.write(link_service_pb2.SpokeLinkServiceControlRequest(hello=hello))
        try:
            async with asyncio.timeout(10):
                first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return exc
        finally:
            call.cancel()
    assert first.WhichOneof("kind") == "welcome"
    return None


async def test_a_hello_used_at_one_hubd_is_refused_at_the_other(fed: testing.Federation) -> None:
    first = await _held(fed)
    (other,) = (a for a in hubds(fed) if a != first)
    hello = sign_hello(SPOKE, fed.hub_name, fed.key(SPOKE), HEARTBEAT_S)
    assert await _open(first, hello) is None
    for address in (other, first):  # replayed to another hubd, or to the same: NONCE_REUSED
        refused = await _open(address, hello)
        assert refused is not None
        assert refused.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "already used" in (refused.details() or "")


def _forward(
    key: keys.SigningKey, *, hub: str, method: str = "GetAgent", age_s: float = 0.0
) -> command_pb2.SignedEnvelope:
    """A HubForward signed by ``key`` (the hub's, or a forger's)."""
    issued = commands.now() - dt.timedelta(seconds=age_s)
    fwd = hub_forward_pb2.HubForward(
        hub=hub,
        spoke=SPOKE,
        method=method,
        request=b"",
        issue_time=commands.to_timestamp(issued),
        nonce=secrets.token_bytes(24),
    )
    fwd.timeout.FromSeconds(5)
    return envelope.sign(fwd.SerializeToString(), PAYLOAD_TYPE_FORWARD, key)


async def _forward_call(
    address: str, raw: bytes, tls: tuple[grpc.ChannelCredentials, str] | None = None
) -> tuple[grpc.StatusCode, str, list[Any]]:
    """Send ``raw`` to ForwardCall (over TLS: credentials and the name the server's
    certificate must carry): its code, details and the messages it streamed."""
    if tls is None:
        opened = grpc.aio.insecure_channel(address)
    else:
        opened = grpc.aio.secure_channel(
            address, tls[0], options=[("grpc.ssl_target_name_override", tls[1])]
        )
    async with opened as channel:
        call = channel.unary_stream(
            f"/{FORWARD_SERVICE.full_name}/ForwardCall",
            response_deserializer=hub_forward_pb2.HubForwardServiceForwardCallResponse.FromString,
        )(raw, timeout=10, metadata=version.CALL_METADATA)
        got: list[Any] = []
        try:
            got.extend([m async for m in call])
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", got
        return grpc.StatusCode.OK, "", got


async def test_every_forward_method_has_its_refusals_in_this_module() -> None:
    assert [m.name for m in FORWARD_SERVICE.methods] == ["ForwardCall"], (
        "a new HubForwardService method needs its refusal cases below"
    )


async def test_the_forward_service_takes_only_the_hubs_own_fresh_forwards(
    fed: testing.Federation,
) -> None:
    """Unsigned, forged (a spoke's key), for another hub, stale or malformed: refused before
    any spoke is called; a good forward for a spoke this hubd does not hold ends
    UNAVAILABLE (SPOKE_DISCONNECTED) in its status message."""
    held_by = await _held(fed)
    (other,) = (a for a in hubds(fed) if a != held_by)
    hub_key = fed.key(fed.hub_name)
    good = _forward(hub_key, hub=fed.hub_name)
    unsigned = command_pb2.SignedEnvelope(payload=good.payload, payload_type=good.payload_type)
    cases = {
        "garbage": (b"\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),
        "unsigned": (unsigned, grpc.StatusCode.UNAUTHENTICATED),
        "forged": (_forward(fed.key(SPOKE), hub=fed.hub_name), grpc.StatusCode.UNAUTHENTICATED),
        "other hub": (_forward(hub_key, hub="another-hub"), grpc.StatusCode.PERMISSION_DENIED),
        "stale": (_forward(hub_key, hub=fed.hub_name, age_s=3600), grpc.StatusCode.UNAUTHENTICATED),
        "no method": (
            _forward(hub_key, hub=fed.hub_name, method="Shutdown"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    }
    for name, (signed, code) in cases.items():
        raw = signed if isinstance(signed, bytes) else _request(signed)
        got, details, streamed = await _forward_call(held_by, raw)
        assert (got, streamed) == (code, []), (name, got, details)
    code, _, streamed = await _forward_call(other, _request(good))
    assert code is grpc.StatusCode.OK
    (end,) = streamed
    assert end.status.code == grpc.StatusCode.UNAVAILABLE.value[0], end
    assert "not connected" in end.status.message


def _request(signed: command_pb2.SignedEnvelope) -> bytes:
    return hub_forward_pb2.HubForwardServiceForwardCallRequest(forward=signed).SerializeToString()


async def _state_is(client: Client, agent: str, state: AgentState) -> bool:
    return (await client.get(agent, SPOKE)).state is state


async def test_calls_through_the_other_hubd_reach_the_spoke_and_survive_its_holder(
    fed: testing.Federation,
) -> None:
    held_by = await _held(fed)
    (other,) = (a for a in hubds(fed) if a != held_by)
    async with fed.client(timeout_s=5, hub=other) as client:
        quick = await client.spawn(SPOKE, "synthetic", "duration=0.1")
        await until(lambda: _state_is(client, quick.agent_id, AgentState.SUCCEEDED), 20, "done")

        long = await client.spawn(SPOKE, "synthetic", "duration=30 steps=30")
        states: list[AgentState] = []

        async def watch() -> None:
            async for event in client.watch(long.agent_id, SPOKE):
                if event.kind is EventKind.STATE:
                    states.append(event.state)
                    if event.state.final:
                        return

        watching = asyncio.create_task(watch())
        await until(lambda: _state_is(client, long.agent_id, AgentState.RUNNING), 20, "running")
        killed = await client.kill(long.agent_id, SPOKE)
        assert killed.state is AgentState.KILLED
        async with asyncio.timeout(20):
            await watching
        assert AgentState.RUNNING in states, states
        assert states[-1] is AgentState.KILLED, states

        hubds(fed)[held_by].signal(signal.SIGKILL)
        killed_at = time.monotonic()
        spawned, failures = [], []
        while True:  # until a spawn reaches the spoke (not held in the outbox meanwhile)
            try:
                again = await client.spawn(SPOKE, "synthetic", "duration=0.1")
                spawned.append(again.agent_id)
                if again.state is not AgentState.PENDING_DELIVERY:
                    break
            except CallError as exc:
                failures.append(exc.code)
            assert time.monotonic() - killed_at < FAILOVER_LIMIT_S, "not reachable in time"
            await asyncio.sleep(0.1)
        took = time.monotonic() - killed_at
        print(f"reachable through the other hubd {took:.2f} s after SIGKILL of the holder")
        assert took < FAILOVER_LIMIT_S
        assert set(failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
        for agent in spawned:  # those held meanwhile are delivered once it is back
            await until(lambda a=agent: _state_is(client, a, AgentState.SUCCEEDED), 20, "ran")
        health, detail = await view(fed, other)
        assert (health, detail) == ("READY", ""), (health, detail)  # held here now


async def test_over_mutual_tls_a_call_is_forwarded_and_a_dead_holders_lease_is_not_trusted(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With TLS the forwarding hubd dials the holder with the hub's certificate (the holder
    requires it to name the hub) and checks the holder's: a spawn through the other hubd
    runs on the spoke. A holder SIGKILLed while the spoke is stopped leaves a lease the other
    hubd stops trusting within seconds (DISCONNECTED, not READY via a dead hubd)."""
    federation = testing.Federation(
        tmp_path_factory.mktemp("forward-tls"), [SPOKE], hub_env=HUB_ENV, tls=True
    )
    second = f"127.0.0.1:{testing.pick_free_port()}"
    hub_env, spoke_env = testing.connect_env(
        federation, heartbeat_interval_s=HEARTBEAT_S, hub_addresses=[federation.hub_address, second]
    )
    federation.hub_env.update(hub_env)
    federation.spoke_env.update(spoke_env)
    try:
        await federation.start()
        await federation.start_hub("hub-2", listen=second)
        held_by = await _held(federation)
        (other,) = (a for a in hubds(federation) if a != held_by)
        async with federation.client(timeout_s=5, hub=other) as client:
            agent = await client.spawn(SPOKE, "synthetic", "duration=0.1")
            assert agent.state is not AgentState.PENDING_DELIVERY
            done = AgentState.SUCCEEDED
            await until(lambda: _state_is(client, agent.agent_id, done), 20, "done")
        # A forward signed with the hub's key, sent with the spoke's certificate: refused.
        tls_dir = federation.files.tls_dir
        assert tls_dir is not None
        for peer, want in ((SPOKE, grpc.StatusCode.UNAUTHENTICATED), (federation.hub_name, None)):
            creds = stls.channel_credentials(
                stls.TlsConfig(
                    tls_dir / f"{peer}.crt", tls_dir / f"{peer}.tls.key", tls_dir / "ca.crt"
                )
            )
            got = await _forward_call(
                held_by,
                _request(_forward(federation.key(federation.hub_name), hub=federation.hub_name)),
                (creds, federation.hub_name),
            )
            if want is None:  # the hub's own certificate: carried (request b"" refused by it)
                assert got[0] is grpc.StatusCode.OK, got
            else:
                assert got[0] is want, got
                assert "certificate" in got[1], got

        # The holder dies while the spoke cannot reconnect: the other hubd stops trusting the
        # lease once it is not renewed (3 heartbeats + a poll), well before its 15 s TTL.
        spoked = federation.spoked(SPOKE)
        spoked.signal(signal.SIGSTOP)
        hubds(federation)[held_by].signal(signal.SIGKILL)
        stopped_at = time.monotonic()

        async def disconnected() -> bool:
            return (await view(federation, other))[0] == "DISCONNECTED"

        await until(disconnected, 10, "the spoke DISCONNECTED at the other hubd")
        assert time.monotonic() - stopped_at < 8
        _, detail = await view(federation, other)
        assert "stopped renewing" in detail, detail
        spoked.signal(signal.SIGCONT)
        await until(lambda: _ready_here(federation, other), 20, "the spoke back, held here")
    finally:
        if federation.spoked(SPOKE).running:
            federation.spoked(SPOKE).signal(signal.SIGCONT)
        await federation.stop()


async def _ready_here(fed: testing.Federation, address: str) -> bool:
    return await view(fed, address) == ("READY", "")
