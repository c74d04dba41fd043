"""Clients the arms drive: signed commands straight to a spoke, and the agents' ready signal.

``DirectClient`` does what a client of one spoke does (the idea of tests/spoke/conftest.py):
build a Command and sign it as ``operator`` with the client library's code
(``hubspoke.commands``), call SpokeService, and believe the spoke's signed reply only after
the very checks ``hubspoke.client.Client`` makes of every reply (its ``_reply_check``: the
signature by this spoke, the responder, the command id and digest, the result, and the
agent's spoke and id), returning the library's own types, as ``Client`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf.message import Message

from hubspoke import commands, keys
from hubspoke.client import Agent, AgentPage, CallError
from hubspoke.client._reply_check import check_reply, checked_agent
from hubspoke.client._rpc import Result
from hubspoke.gen.federation.v1 import (
    command_pb2,
    spoke_service_pb2,
    spoke_service_pb2_grpc,
)
from hubspoke.grpc import open_channel
from hubspoke.trust import Role, TrustStore

CALL_TIMEOUT_S = 20.0

# The benchmark's agent: it tells the harness it runs (one datagram with its tag on a unix
# socket), then optionally sleeps. The same program is the bare-spawn floor, so the spoke's
# overhead is the only difference between the two.
READY_CODE = (
    "import socket,sys,time\n"
    "a=sys.argv[1].split()\n"
    "s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n"
    "s.sendto(a[0].encode(),sys.argv[2])\n"
    "if len(a)>1: time.sleep(float(a[1]))\n"
)


class ReplyError(RuntimeError):
    """The spoke's reply did not verify or did not answer the command sent."""


class DirectClient:
    """Signed commands to one spoke over one channel. Open inside the running loop."""

    def __init__(self, address: str, spoke: str, key: keys.SigningKey, trust: TrustStore) -> None:
        self.address = address
        self.spoke = spoke
        self._key = key
        self._trust = trust
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    async def __aenter__(self) -> Self:
        self._channel = open_channel(self.address)
        self._stub = spoke_service_pb2_grpc.SpokeServiceStub(self._channel)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._channel is not None:
            await self._channel.close(None)

    def signed(self, body: str, msg: Message, command_id: str | None = None) -> Any:
        """A signed envelope carrying ``msg`` as the command's ``body``."""
        return self._sign(body, msg, command_id)[1]

    def _sign(
        self, body: str, msg: Message, command_id: str | None = None
    ) -> tuple[str, command_pb2.SignedEnvelope]:
        cmd = commands.build_command(
            issuer=self._key.name, audience=self.spoke, command_id=command_id
        )
        getattr(cmd, body).CopyFrom(msg)
        return cmd.command_id, commands.sign_command(cmd, self._key)

    def spawn_request(self, profile: str, task: str, priority: int = 0) -> Message:
        """The SpawnAgent request as sent (its size sets the echo floor's message size)."""
        body = command_pb2.SpawnAgentBody(profile=profile, task=task, priority=priority)
        return spoke_service_pb2.SpokeServiceSpawnAgentRequest(
            command=self.signed("spawn_agent", body)
        )

    async def spawn(
        self, profile: str, task: str, *, priority: int = 0, command_id: str | None = None
    ) -> Agent:
        body = command_pb2.SpawnAgentBody(profile=profile, task=task, priority=priority)
        cid, env = self._sign("spawn_agent", body, command_id)
        resp = await self._stub.SpawnAgent(
            spoke_service_pb2.SpokeServiceSpawnAgentRequest(command=env), timeout=CALL_TIMEOUT_S
        )
        return self._agent(cid, env, resp.reply, cid)

    async def get(self, agent_id: str) -> Agent:
        cid, env = self._sign("get_agent", command_pb2.GetAgentBody(agent=agent_id))
        resp = await self._stub.GetAgent(
            spoke_service_pb2.SpokeServiceGetAgentRequest(command=env), timeout=CALL_TIMEOUT_S
        )
        return self._agent(cid, env, resp.reply, agent_id)

    async def list(self, page_size: int, page_token: str = "") -> AgentPage:
        """One signed ListAgents page, newest first (no filters)."""
        body = command_pb2.ListAgentsBody(page_size=page_size, page_token=page_token)
        cid, env = self._sign("list_agents", body)
        resp = await self._stub.ListAgents(
            spoke_service_pb2.SpokeServiceListAgentsRequest(command=env), timeout=CALL_TIMEOUT_S
        )
        page = self._verified(cid, env, resp.reply, "agent_page").agent_page
        try:
            for agent in page.agents:
                checked_agent(agent, self.spoke, None)
        except CallError as exc:
            raise ReplyError(exc.message) from exc
        return AgentPage.from_proto(page)

    async def kill(self, agent_id: str) -> Agent:
        cid, env = self._sign("kill_agent", command_pb2.KillAgentBody(agent=agent_id))
        resp = await self._stub.KillAgent(
            spoke_service_pb2.SpokeServiceKillAgentRequest(command=env), timeout=CALL_TIMEOUT_S
        )
        return self._agent(cid, env, resp.reply, agent_id)

    def _verified(
        self, command_id: str, sent: command_pb2.SignedEnvelope, reply_env: Any, result: Result
    ) -> command_pb2.Reply:
        """The reply, once the client library's checks prove it is this spoke's answer."""
        try:
            _, reply = check_reply(
                command_id, sent.payload, reply_env, self._trust, Role.SPOKE, self.spoke, result
            )
        except CallError as exc:
            raise ReplyError(exc.message) from exc
        return reply

    def _agent(
        self, command_id: str, sent: command_pb2.SignedEnvelope, reply_env: Any, agent_id: str
    ) -> Agent:
        reply = self._verified(command_id, sent, reply_env, "agent")
        try:
            return checked_agent(reply.agent, self.spoke, agent_id)
        except CallError as exc:
            raise ReplyError(exc.message) from exc


class ReadySocket:
    """A unix datagram socket agents report to; ``expect(tag)`` gives a future per agent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._waiting: dict[str, asyncio.Future[float]] = {}
        self.seen: dict[str, int] = {}
        """How many datagrams each tag sent (an agent run twice sends twice)."""
        self.wall: dict[str, float] = {}
        """Wall-clock time (time.time) each expected tag arrived, to compare with records."""

    def open(self) -> None:
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)

    def expect(self, tag: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[tag] = fut
        return fut

    def _readable(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = self._sock.recv(256)
            except (BlockingIOError, InterruptedError):
                return
            tag = data.decode(errors="replace")
            self.seen[tag] = self.seen.get(tag, 0) + 1
            fut = self._waiting.pop(tag, None)
            if fut is not None and not fut.done():
                self.wall[tag] = time.time()
                fut.set_result(loop.time())
