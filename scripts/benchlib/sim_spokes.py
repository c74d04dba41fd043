"""Simulated connect-mode spokes for the federation bench: many real HubLink sessions in one
process, each with its own key, its own TLS certificate and its own TCP connection.

Run as ``python scripts/benchlib/sim_spokes.py SPEC.json`` (the parent is
:mod:`benchlib.federation`). The spec::

    {"heartbeat_interval_s": 5.0, "mode": "hublink",
     "links": [{"spoke": "sim-0001", "hub_address": "127.0.0.1:7100", "hub_name": "hub",
                "key_file": ".../keys/sim-0001.key", "cert_file": ".../tls/sim-0001.crt",
                "tls_key_file": ".../tls/sim-0001.tls.key", "ca_file": ".../tls/ca.crt"}]}

Each link is the real :class:`hubspoke.spoke.link.HubLink` with

* a status source that signs a small status (Redis up, profile ``synthetic`` with 8 free
  slots: what the selector screens on), bound to the session nonce, fresh each heartbeat;
* :class:`SimSpokeService`, a minimal SpokeService: ListAgents answers an empty page,
  SpawnAgent a QUEUED agent, each a Reply signed by the spoke's key and bound to the command
  exactly as spoked binds it (responder, command_id, request_digest over the client's
  envelope payload). It stores nothing and does not check the hub's signature: the bench
  measures the hub, and a spoke's own checks are other arms'.

With ``"mode": "floor"`` each link is a :class:`FloorLink` instead: the bare stream of the
floor (benchlib/floor_server.py).

The links start spread over one heartbeat interval (the heartbeats arrive evenly). Prints
``ready N`` once every session is open, and ``lost N`` whenever some are not; on SIGTERM,
``final links=N sessions=S heartbeats=H`` (sessions opened, so S - N reconnects) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import structlog

from hubspoke import commands, envelope, keys, version
from hubspoke import tls as stls
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, spoke_service_pb2
from hubspoke.spoke.link import HubLink, HubLinkConfig

FLOOR_METHOD = "/floor.Floor/Stream"
PROFILE = "synthetic"
SLOTS = 8


class SimSpokeService:
    """The two SpokeService methods the bench calls, answered with signed replies."""

    def __init__(self, name: str, key: keys.SigningKey) -> None:
        self._name = name
        self._key = key

    def _sign(self, env: command_pb2.SignedEnvelope, **result: Any) -> command_pb2.SignedEnvelope:
        """A Reply bound to the client's command inside the hub's relay (or a direct one)."""
        client_env = env
        if env.payload_type == envelope.PAYLOAD_TYPE_RELAY:
            client_env = commands.parse_relay(env.payload).command
        cmd = commands.parse_command(client_env.payload)
        reply = command_pb2.Reply(
            command_id=cmd.command_id,
            responder=self._name,
            request_digest=commands.digest(client_env.payload),
            issue_time=commands.to_timestamp(commands.now()),
            **result,
        )
        return envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, self._key)

    async def ListAgents(
        self, request: spoke_service_pb2.SpokeServiceListAgentsRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceListAgentsResponse:
        reply = self._sign(request.command, agent_page=command_pb2.AgentPage())
        return spoke_service_pb2.SpokeServiceListAgentsResponse(reply=reply)

    async def SpawnAgent(
        self, request: spoke_service_pb2.SpokeServiceSpawnAgentRequest, context: Any
    ) -> spoke_service_pb2.SpokeServiceSpawnAgentResponse:
        env = request.command
        inner = env
        if env.payload_type == envelope.PAYLOAD_TYPE_RELAY:
            inner = commands.parse_relay(env.payload).command
        cmd = commands.parse_command(inner.payload)
        body = cmd.spawn_agent
        agent = agent_pb2.Agent(
            name=f"spokes/{self._name}/agents/{cmd.command_id}",
            agent_id=cmd.command_id,
            spoke=self._name,
            profile=body.profile,
            state=agent_pb2.Agent.State.STATE_QUEUED,
            issuer=cmd.issuer,
            task=body.task,
            labels=dict(body.labels),
        )
        agent.create_time.CopyFrom(commands.to_timestamp(commands.now()))
        reply = self._sign(env, agent=agent)
        return spoke_service_pb2.SpokeServiceSpawnAgentResponse(reply=reply)


def status_source(name: str, key: keys.SigningKey) -> Any:
    """Nonce → a signed status Reply (as spoke/health.py's ``StatusMonitor.signed``), its
    observe and issue times fresh on each call."""

    def signed(nonce: bytes) -> bytes:
        now = commands.to_timestamp(commands.now())
        status = command_pb2.SpokeStatus(
            spoke=name,
            protocol_version=version.PROTOCOL_VERSION,
            max_queue_depth=10_000,
            redis_ok=True,
            observe_time=now,
            profiles=[
                command_pb2.ProfileCapacity(
                    profile=PROFILE, max_concurrency=SLOTS, free_slots=SLOTS
                )
            ],
        )
        reply = command_pb2.Reply(
            responder=name,
            request_digest=commands.digest(nonce),
            issue_time=now,
            spoke_status=status,
        )
        env = envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, key)
        return env.SerializeToString()

    return signed


def make_link(spec: dict[str, str], heartbeat_s: float) -> HubLink:
    name = spec["spoke"]
    key = keys.load_private(Path(spec["key_file"]), name)
    tls = stls.TlsConfig(
        Path(spec["cert_file"]), Path(spec["tls_key_file"]), Path(spec["ca_file"]), True
    )
    cfg = HubLinkConfig(
        spoke=name,
        hub_address=spec["hub_address"],
        hub_name=spec["hub_name"],
        heartbeat_interval_s=heartbeat_s,
        reconnect_min_s=0.5,
        reconnect_max_s=5.0,
    )
    return HubLink(
        cfg,
        key,
        status_source(name, key),
        SimSpokeService(name, key),
        stls.channel_credentials(tls),
    )


class FloorLink:
    """The floor's client (``"mode": "floor"``): one bare bidirectional stream over TLS on
    its own connection, the spoke's name, then its signed status every interval; no
    session, no calls (benchlib/floor_server.py)."""

    def __init__(self, spec: dict[str, str], heartbeat_s: float) -> None:
        self._name = spec["spoke"]
        key = keys.load_private(Path(spec["key_file"]), self._name)
        self._status = status_source(self._name, key)
        tls = stls.TlsConfig(
            Path(spec["cert_file"]), Path(spec["tls_key_file"]), Path(spec["ca_file"]), True
        )
        self._creds = stls.channel_credentials(tls)
        self._address = spec["hub_address"]
        self._server_name = spec["hub_name"]
        self._interval = heartbeat_s
        self.connected = asyncio.Event()

    async def run(self) -> None:
        options = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.ssl_target_name_override", self._server_name),
        ]
        async with grpc.aio.secure_channel(self._address, self._creds, options=options) as ch:
            raw: Any = ch  # raw bytes both ways: no serializers (grpc-stubs want them)
            call = raw.stream_stream(FLOOR_METHOD)()
            await call.write(self._name.encode())
            self.connected.set()
            while True:
                await call.write(self._status(os.urandom(32)))
                await asyncio.sleep(self._interval)


async def main(spec: dict[str, Any]) -> None:
    heartbeat_s = float(spec["heartbeat_interval_s"])
    floor = spec.get("mode") == "floor"
    links: list[HubLink | FloorLink] = [
        FloorLink(s, heartbeat_s) if floor else make_link(s, heartbeat_s) for s in spec["links"]
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    tasks: list[asyncio.Task[None]] = []
    gap = heartbeat_s / max(len(links), 1)
    for link in links:
        tasks.append(asyncio.create_task(link.run()))
        await asyncio.sleep(gap)
    said = -1
    while not stop.is_set():
        up = sum(link.connected.is_set() for link in links)
        if up != said:
            print(f"{'ready' if up == len(links) else 'lost'} {up}", flush=True)
            said = up
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    sessions = sum(getattr(link, "sessions", 1) for link in links)
    beats = sum(getattr(link, "heartbeats", 0) for link in links)
    print(f"final links={len(links)} sessions={sessions} heartbeats={beats}", flush=True)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
