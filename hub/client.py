"""The client library ``hubctl`` uses: sign commands, call HubService, verify replies end to end.

Every reply is checked before it is believed: agent replies must be signed by a spoke (by
the addressed spoke, when the command named one), spoke listings by the hub; each must
answer exactly the command sent (same command_id, request_digest over the signed bytes).

Only UNAVAILABLE is retried (3 attempts, 0.2 s then 0.4 s apart). A retry signs the command
again with a fresh nonce and the same command_id, which is the spoke's idempotency key.

Exception hierarchy::

    Exception
     ├── HubCallError        a call failed: gRPC code, ErrorInfo reason, message, metadata
     └── ValueError
          └── ClientConfigError   the hubctl config file is missing or invalid

The hubctl config (TOML; relative paths resolve against the file's directory)::

    hub = "127.0.0.1:7100"      # HUBCTL_HUB overrides it, an explicit address both
    hub_name = "hub"
    principal = "operator"
    key_file = "keys/operator.key"
    trust_file = "trust.toml"   # the hub (role hub) and spokes (role spoke)
    [tls]                       # required unless the hub is on loopback
    ca_file = "tls/ca.crt"
    cert_file = "tls/operator.crt"
    key_file = "tls/operator.tls.key"
    server_name = "hub"         # the name the hub's certificate carries (default: hub_name)

``HUBCTL_TLS_CA_FILE``, ``HUBCTL_TLS_CERT_FILE`` and ``HUBCTL_TLS_KEY_FILE`` override the
``[tls]`` options one by one.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import os
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import grpc

from hubspoke import commands, envelope, errors, fanout, keys
from hubspoke import grpc as sgrpc
from hubspoke import tls as stls
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, hub_service_pb2, hub_service_pb2_grpc
from hubspoke.trust import Role, TrustConfigError, TrustStore

__all__ = [
    "FINAL_STATES",
    "ClientConfig",
    "ClientConfigError",
    "HubCallError",
    "HubClient",
    "ListResult",
    "client_from_config",
    "load_client_config",
    "parse_state",
    "state_name",
]

Agent = agent_pb2.Agent
Spoke = command_pb2.Spoke
AgentEvent = agent_pb2.AgentEvent
QueueStats = command_pb2.QueueStats
_T = TypeVar("_T")

FINAL_STATES: Final = frozenset(
    {
        Agent.STATE_SUCCEEDED,
        Agent.STATE_FAILED,
        Agent.STATE_KILLED,
        Agent.STATE_TIMED_OUT,
        Agent.STATE_DEAD_LETTERED,
    }
)
"""States an agent never leaves."""

_ATTEMPTS: Final = 3
_BACKOFF_S: Final = (0.2, 0.4)
_REPLY_INVALID: Final = "REPLY_INVALID"


class HubCallError(Exception):
    """A call to the hub failed, or its reply could not be verified."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    @classmethod
    def from_failure(cls, failure: sgrpc.CallFailure) -> HubCallError:
        return cls(failure.code, failure.message, failure.reason, failure.metadata)

    @classmethod
    def invalid_reply(cls, message: str) -> HubCallError:
        return cls(grpc.StatusCode.INTERNAL, message, _REPLY_INVALID)

    def __str__(self) -> str:
        return f"{self.message} [{self.reason or self.code.name}]"


class ClientConfigError(ValueError):
    """The hubctl config is missing or invalid; the message is one line."""


@dataclass(frozen=True, slots=True)
class ListResult:
    """Agents from every spoke that answered, and the spokes that did not."""

    agents: list[agent_pb2.Agent] = field(default_factory=list)
    unreachable_spokes: list[str] = field(default_factory=list)
    next_page_tokens: dict[str, str] = field(default_factory=dict)
    """Per spoke, the token for its next page (only spokes with more agents)."""


@dataclass(frozen=True, slots=True)
class _Sent:
    """A signed command as sent: what its reply must be bound to."""

    command: command_pb2.Command
    envelope: command_pb2.SignedEnvelope


class HubClient:
    """An async client of one hub. Use ``async with``; the channel opens in the running loop."""

    def __init__(
        self,
        address: str,
        principal: str,
        key: keys.SigningKey,
        trust: TrustStore,
        hub_name: str = "hub",
        timeout_s: float = 15.0,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        """``credentials``: dial over TLS, checking the hub's certificate carries
        ``server_name`` (default: ``hub_name``). Without them only a loopback hub is dialled.

        Raises:
            ClientConfigError: no credentials and ``address`` is not on loopback.
        """
        if credentials is None and not stls.is_loopback(address):
            raise ClientConfigError(f"hub {address}: {stls.PLAINTEXT_REFUSED}")
        self._credentials = credentials
        self._server_name = server_name or hub_name
        self.address = address
        self.principal = principal
        self.hub_name = hub_name
        self.timeout_s = timeout_s
        self._key = key
        self._trust = trust
        self._channel: grpc.aio.Channel | None = None
        self._stub: hub_service_pb2_grpc.HubServiceAsyncStub | None = None

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _open(self) -> hub_service_pb2_grpc.HubServiceAsyncStub:
        if self._stub is None:
            self._channel = sgrpc.open_channel(
                self.address, None, self._credentials, self._server_name
            )
            self._stub = hub_service_pb2_grpc.HubServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    # -- verbs ------------------------------------------------------------------------------

    async def spawn(
        self,
        spoke: str,
        profile: str,
        task: str,
        *,
        priority: int = 0,
        timeout_s: float | None = None,
        command_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        max_attempts: int = 0,
        delay_s: float | None = None,
    ) -> agent_pb2.Agent:
        """Start an agent on ``spoke``; returns it as the spoke stored it (normally QUEUED)."""
        body = command_pb2.SpawnAgentBody(
            profile=profile,
            task=task,
            priority=priority,
            labels=dict(labels or {}),
            max_attempts=max_attempts,
        )
        if timeout_s is not None:
            body.timeout.FromTimedelta(dt.timedelta(seconds=timeout_s))
        if delay_s is not None:
            body.delay.FromTimedelta(dt.timedelta(seconds=delay_s))
        sent, resp = await self._unary(
            spoke, lambda cmd: cmd.spawn_agent.CopyFrom(body), "SpawnAgent", command_id
        )
        return self._agent_reply(sent, resp.reply, spoke)

    async def get(self, agent: str, spoke: str | None = None) -> agent_pb2.Agent:
        """Read one agent, by id or resource name; ``spoke`` skips the hub's lookup."""
        return await self._agent_verb("get_agent", "GetAgent", agent, spoke)

    async def kill(self, agent: str, spoke: str | None = None) -> agent_pb2.Agent:
        """Stop one agent; returns it, in its final state if the kill completed in time."""
        return await self._agent_verb("kill_agent", "KillAgent", agent, spoke)

    async def replay(self, agent: str, spoke: str | None = None) -> agent_pb2.Agent:
        """Run a dead-lettered, failed, timed-out or lost agent again with fresh attempts."""
        return await self._agent_verb("replay_agent", "ReplayAgent", agent, spoke)

    async def queue_stats(self, spoke: str) -> command_pb2.QueueStats:
        """One spoke's queue counts."""
        return await self._queue_verb("get_queue_stats", "GetQueueStats", spoke)

    async def pause(self, spoke: str) -> command_pb2.QueueStats:
        """Stop a spoke's workers from taking new agents (running ones go on)."""
        return await self._queue_verb("pause_queue", "PauseQueue", spoke)

    async def resume(self, spoke: str) -> command_pb2.QueueStats:
        return await self._queue_verb("resume_queue", "ResumeQueue", spoke)

    async def drain(self, spoke: str) -> command_pb2.QueueStats:
        """Cancel every agent still waiting on a spoke; ``drained`` says how many."""
        return await self._queue_verb("drain_queue", "DrainQueue", spoke)

    async def dead_letters(
        self, spoke: str, page_size: int = 50, page_token: str = ""
    ) -> command_pb2.AgentPage:
        """A page of one spoke's dead-letter set."""

        def fill(cmd: command_pb2.Command) -> None:
            cmd.list_dead_letters.page_size = page_size
            cmd.list_dead_letters.page_token = page_token

        sent, resp = await self._unary(spoke, fill, "ListDeadLetters")
        _, reply = self._verify(sent, resp.reply, Role.SPOKE, spoke, "agent_page")
        return reply.agent_page

    async def watch(
        self,
        agent: str,
        spoke: str | None = None,
        after: int = 0,
        max_s: float = 24 * 3600.0,
    ) -> AsyncIterator[agent_pb2.AgentEvent]:
        """Follow an agent's signed events until it ends, resuming after a dropped stream.

        Each event is verified end to end (signed by the spoke, bound to this command).
        Heartbeats are yielded too, so a caller can tell a quiet agent from a dead link.
        """
        last = after
        for attempt in range(_ATTEMPTS):
            cmd = self._command(spoke or self.hub_name, commands.new_command_id())
            cmd.watch_agent.agent = agent
            cmd.watch_agent.after_sequence = last
            sent = _Sent(cmd, commands.sign_command(cmd, self._key))
            call = self._open().WatchAgent(
                hub_service_pb2.HubServiceWatchAgentRequest(command=sent.envelope), timeout=max_s
            )
            try:
                async for resp in call:
                    _, reply = self._verify(sent, resp.reply, Role.SPOKE, spoke, "agent_event")
                    event = reply.agent_event
                    if event.kind != agent_pb2.AgentEvent.Kind.KIND_HEARTBEAT:
                        last = event.sequence
                    yield event
            except grpc.aio.AioRpcError as exc:
                failure = sgrpc.from_rpc_error(exc)
                if failure.code != grpc.StatusCode.UNAVAILABLE or attempt + 1 == _ATTEMPTS:
                    raise HubCallError.from_failure(failure) from exc
            else:
                return
            finally:
                call.cancel()
            await asyncio.sleep(_BACKOFF_S[attempt])

    async def _agent_verb(
        self, body: str, rpc: str, agent: str, spoke: str | None
    ) -> agent_pb2.Agent:
        def fill(cmd: command_pb2.Command) -> None:
            getattr(cmd, body).agent = agent

        sent, resp = await self._unary(spoke or self.hub_name, fill, rpc)
        return self._agent_reply(sent, resp.reply, spoke)

    async def _queue_verb(self, body: str, rpc: str, spoke: str) -> command_pb2.QueueStats:
        def fill(cmd: command_pb2.Command) -> None:
            getattr(cmd, body).SetInParent()

        sent, resp = await self._unary(spoke, fill, rpc)
        _, reply = self._verify(sent, resp.reply, Role.SPOKE, spoke, "queue_stats")
        return reply.queue_stats

    async def _unary(
        self,
        audience: str,
        fill: Callable[[command_pb2.Command], None],
        rpc: str,
        command_id: str | None = None,
    ) -> tuple[_Sent, Any]:
        """Build, sign and send one command to HubService.<rpc>, retrying UNAVAILABLE with a
        fresh nonce and the same command id."""
        cid = command_id or commands.new_command_id()
        request_cls = getattr(hub_service_pb2, f"HubService{rpc}Request")

        def build() -> command_pb2.Command:
            cmd = self._command(audience, cid)
            fill(cmd)
            return cmd

        async def call(env: command_pb2.SignedEnvelope) -> Any:
            return await getattr(self._open(), rpc)(
                request_cls(command=env), timeout=self.timeout_s
            )

        return await self._retrying(build, call)

    async def list(
        self,
        spoke: str | None = None,
        page_size: int = 50,
        states: Collection[agent_pb2.Agent.State.ValueType] = (),
        page_token: str = "",
    ) -> ListResult:
        """A page of agents from one spoke, or from every spoke when ``spoke`` is None."""

        def fill(cmd: command_pb2.Command) -> None:
            cmd.list_agents.page_size = page_size
            cmd.list_agents.page_token = page_token
            cmd.list_agents.states.extend(states)

        sent, resp = await self._unary(spoke or self.hub_name, fill, "ListAgents")
        result = ListResult(unreachable_spokes=list(resp.unreachable_spokes))
        signers: builtins.list[str] = []
        for reply_env in resp.replies:
            signer, reply = self._verify(sent, reply_env, Role.SPOKE, spoke, "agent_page")
            signers.append(signer)
            result.agents.extend(reply.agent_page.agents)
            if reply.agent_page.next_page_token:
                result.next_page_tokens[signer] = reply.agent_page.next_page_token
        if spoke is None:  # a fan-out: the hub signs which spokes answered and which did not
            try:
                fanout.verify_fan_out(
                    resp.hub_reply if resp.HasField("hub_reply") else None,
                    trust=self._trust,
                    hub_name=self.hub_name,
                    command_id=sent.command.command_id,
                    command_payload=sent.envelope.payload,
                    reply_signers=signers,
                    unreachable_spokes=resp.unreachable_spokes,
                )
            except fanout.FanOutInvalidError as exc:
                raise HubCallError.invalid_reply(exc.message) from exc
        return result

    async def spokes(self) -> builtins.list[command_pb2.Spoke]:
        """The hub's spokes and their health, as the hub signed them."""
        sent, resp = await self._unary(
            self.hub_name, lambda cmd: cmd.list_spokes.SetInParent(), "ListSpokes"
        )
        _, reply = self._verify(sent, resp.reply, Role.HUB, self.hub_name, "spoke_page")
        return list(reply.spoke_page.spokes)

    # -- plumbing ---------------------------------------------------------------------------

    def _command(self, audience: str, command_id: str) -> command_pb2.Command:
        return commands.build_command(
            issuer=self.principal, audience=audience, command_id=command_id
        )

    async def _retrying(
        self,
        build: Callable[[], command_pb2.Command],
        call: Callable[[command_pb2.SignedEnvelope], Awaitable[_T]],
    ) -> tuple[_Sent, _T]:
        """Sign and send; on UNAVAILABLE sign again (fresh nonce, same command_id) and retry."""
        for attempt in range(_ATTEMPTS):
            cmd = build()
            sent = _Sent(cmd, commands.sign_command(cmd, self._key))
            try:
                return sent, await call(sent.envelope)
            except grpc.aio.AioRpcError as exc:
                failure = sgrpc.from_rpc_error(exc)
                if failure.code != grpc.StatusCode.UNAVAILABLE or attempt + 1 == _ATTEMPTS:
                    raise HubCallError.from_failure(failure) from exc
            await asyncio.sleep(_BACKOFF_S[attempt])
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _verify(
        self,
        sent: _Sent,
        reply_env: command_pb2.SignedEnvelope,
        role: Role,
        signer: str | None,
        result: str,
    ) -> tuple[str, command_pb2.Reply]:
        try:
            verified = envelope.verify(
                reply_env, payload_type=envelope.PAYLOAD_TYPE_REPLY, trust=self._trust, roles={role}
            )
            reply = commands.parse_reply(verified.payload)
        except errors.CommandError as exc:
            raise HubCallError.invalid_reply(f"reply failed verification: {exc.message}") from exc
        if signer is not None and verified.peer != signer:
            raise HubCallError.invalid_reply(f"reply is signed by {verified.peer}, not by {signer}")
        if reply.responder != verified.peer:
            raise HubCallError.invalid_reply("reply's responder is not its signer")
        if reply.command_id != sent.command.command_id or reply.request_digest != commands.digest(
            sent.envelope.payload
        ):
            raise HubCallError.invalid_reply("reply does not answer the command sent")
        if reply.WhichOneof("result") != result:
            raise HubCallError.invalid_reply(f"reply carries no {result}")
        return verified.peer, reply

    def _agent_reply(
        self, sent: _Sent, reply_env: command_pb2.SignedEnvelope, spoke: str | None
    ) -> agent_pb2.Agent:
        signer, reply = self._verify(sent, reply_env, Role.SPOKE, spoke, "agent")
        if reply.agent.spoke and reply.agent.spoke != signer:
            raise HubCallError.invalid_reply(f"spoke {signer} answered for {reply.agent.spoke}")
        return reply.agent


# -- config ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What ``hubctl`` needs to reach and trust a hub."""

    hub: str = "127.0.0.1:7100"
    """The hub's host:port."""
    hub_name: str = "hub"
    """The hub's peer name: the audience of commands for the hub itself."""
    principal: str = "operator"
    """The name this client signs as, as the hub's trust store knows it."""
    key_file: Path = field(default_factory=Path)
    """The principal's Ed25519 private key (mode 0600)."""
    trust_file: Path = field(default_factory=Path)
    """Trust store with the hub (role hub) and the spokes (role spoke)."""
    tls: stls.TlsConfig | None = None
    """Transport TLS (``[tls]``); without it only a loopback hub is dialled."""
    tls_server_name: str = ""
    """The name the hub's certificate must carry; empty means ``hub_name``."""


_CONFIG_KEYS: Final = frozenset({"hub", "hub_name", "principal", "key_file", "trust_file", "tls"})


def load_client_config(
    path: Path, env: Mapping[str, str] | None = None, hub: str | None = None
) -> ClientConfig:
    """Read a hubctl TOML file; ``HUBCTL_HUB`` then ``hub`` override its address."""
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ClientConfigError(f"config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientConfigError(f"config file {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ClientConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - _CONFIG_KEYS)
    if unknown:
        raise ClientConfigError(f"{path}: unknown option {unknown[0]!r}")
    tls_cfg, server_name = _client_tls(raw.pop("tls", None), path, env)
    for k, v in raw.items():
        if not isinstance(v, str) or not v:
            raise ClientConfigError(f"{path}: {k} must be a non-empty string")
    for k in ("key_file", "trust_file"):
        if k not in raw:
            raise ClientConfigError(f"{path}: {k} is required")

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else path.parent / q

    address = hub or env.get("HUBCTL_HUB") or raw.get("hub", "127.0.0.1:7100")
    return ClientConfig(
        hub=address,
        hub_name=raw.get("hub_name", "hub"),
        principal=raw.get("principal", "operator"),
        key_file=resolve(raw["key_file"]),
        trust_file=resolve(raw["trust_file"]),
        tls=tls_cfg,
        tls_server_name=server_name,
    )


def _client_tls(
    table: object, path: Path, env: Mapping[str, str]
) -> tuple[stls.TlsConfig | None, str]:
    """The ``[tls]`` table (``HUBCTL_TLS_*`` win option by option) and its ``server_name``."""
    server_name: object = ""
    if isinstance(table, dict):
        table = dict(table)
        server_name = table.pop("server_name", "")
    if not isinstance(server_name, str):
        raise ClientConfigError(f"{path}: tls.server_name must be a string")
    opts = stls.CLIENT_OPTIONS
    try:
        fields = {} if table is None else stls.tls_fields(table, path.parent, f"{path}: tls", opts)
        env_table = stls.env_table(env, "HUBCTL_TLS_", opts)
        fields.update(stls.tls_fields(env_table, None, "HUBCTL_TLS_*", opts))
        return (stls.tls_config(fields, f"{path}: tls") if fields else None), server_name
    except stls.TlsError as exc:
        raise ClientConfigError(str(exc)) from exc


def client_from_config(
    path: Path,
    *,
    hub: str | None = None,
    timeout_s: float = 15.0,
    env: Mapping[str, str] | None = None,
) -> HubClient:
    """A ``HubClient`` from a hubctl config file (key and trust store loaded now).

    Raises:
        ClientConfigError: the file, the key, the trust store or a TLS file is missing or
            invalid, or the config has no ``[tls]`` and the hub is not on loopback.
    """
    cfg = load_client_config(path, env, hub)
    try:
        key = keys.load_private(cfg.key_file, cfg.principal)
        trust = TrustStore.from_file(cfg.trust_file)
        credentials = None if cfg.tls is None else stls.channel_credentials(cfg.tls)
    except (keys.KeyFileError, TrustConfigError, stls.TlsError) as exc:
        raise ClientConfigError(str(exc)) from exc
    return HubClient(
        cfg.hub,
        cfg.principal,
        key,
        trust,
        cfg.hub_name,
        timeout_s,
        credentials=credentials,
        server_name=cfg.tls_server_name or None,
    )


def state_name(state: agent_pb2.Agent.State.ValueType) -> str:
    """``STATE_RUNNING`` → ``RUNNING``."""
    return agent_pb2.Agent.State.Name(state).removeprefix("STATE_")


def parse_state(text: str) -> agent_pb2.Agent.State.ValueType:
    """``running`` or ``STATE_RUNNING`` → the enum value; ValueError if unknown."""
    name = text.strip().upper()
    name = name if name.startswith("STATE_") else f"STATE_{name}"
    if name == "STATE_UNSPECIFIED":
        raise ValueError(text)
    return agent_pb2.Agent.State.Value(name)
