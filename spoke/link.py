"""A connect-mode spoke's link to its hub: the spoke dials, the hub calls over it.

:class:`HubLink` is one spoke's link (one object per simulated spoke too: the bench runs
many in one process). :meth:`HubLink.run` dials the hub's SpokeLinkService on a channel of
its own (its own TCP connection), opens the Control stream with a hello signed by the
spoke's key, and then, until the session ends:

* sends a heartbeat every ``heartbeat_interval_s``: the status source's signed Reply bound to
  the session nonce the hub's welcome carried (spoke/health.py ``StatusMonitor.signed``);
* for each call the hub announces, opens a Serve stream of its own, names the call, takes
  the SpokeService method and request the hub sends, dispatches it to the spoke's own
  SpokeService implementation in this process, streams back the response message(s) and
  a final status. A call ends early when the hub ends its stream (the caller left).

The control stream only ever carries small messages, so a large reply or a long watch on a
Serve stream (a separate HTTP/2 stream) never delays a heartbeat. A lost session is dialled
again after a wait that doubles from ``reconnect_min_s`` to ``reconnect_max_s``, with jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from hubspoke import errors, version
from hubspoke.gen.federation.v1 import command_pb2, link_service_pb2, link_service_pb2_grpc
from hubspoke.grpc.channel import channel_args
from hubspoke.grpc.peer import TransportPeer, assume_peer
from hubspoke.grpc.server import ServerOptions
from hubspoke.keys import SigningKey
from hubspoke.link_protocol import SpokeMethod, sign_hello, spoke_method, status_of

__all__ = ["HubLink", "HubLinkConfig", "hub_addresses"]

log = structlog.get_logger("hubspoke.spoke.link")

StatusSource = Callable[[bytes], bytes | None]
"""Nonce → the spoke's signed status (a serialized SignedEnvelope), None if it has none yet."""
RpcObserver = Callable[[str, grpc.StatusCode, str, float], None]
ControlIn = link_service_pb2.SpokeLinkServiceControlResponse
SERVE_RPC: Final = "/federation.v1.SpokeService/"
EOF: Final[Any] = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs lag grpcio
"""What a stream's read() returns once the other side has finished writing."""
LINGER_S: Final = 10.0
"""How long a served call waits for the hub to end its stream after the final status."""
STABLE_S: Final = 10.0
"""A session that lasted this long resets the reconnect wait to its minimum."""


@dataclass(frozen=True, slots=True)
class HubLinkConfig:
    """Where the hub is and how to keep the link (SpokeConfig's connect-mode options)."""

    spoke: str
    hub_address: str
    """``host:port`` of the hub, or of several hubds of one hub, comma-separated: a failed or
    lost session moves on to the next one."""
    hub_name: str = "hub"
    tls_server_name: str = ""
    """With TLS: the name the hub's certificate must carry; empty: ``hub_name``."""
    heartbeat_interval_s: float = 5.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_message_bytes: int = 4 * 1024 * 1024


class HubLink:
    """One spoke's link to its hub, dialled again whenever it is lost.

    As a library (many simulated spokes in one process, each with its own key and its own
    TCP connection)::

        link = HubLink(
            HubLinkConfig(spoke="sim-17", hub_address="hub:7100", heartbeat_interval_s=5),
            key,                       # the spoke's SigningKey (its trust entry at the hub)
            status=lambda nonce: ...,  # a signed status Reply bound to nonce (spoke/health.py)
            servicer=my_spoke_service, # SpawnAgent(request, None) -> response, ...
            credentials=channel_credentials,
        )
        task = asyncio.create_task(link.run())   # cancel it to stop
        await link.connected.wait()
    """

    def __init__(
        self,
        cfg: HubLinkConfig,
        key: SigningKey,
        status: StatusSource,
        servicer: object,
        credentials: grpc.ChannelCredentials | None = None,
        observe: RpcObserver | None = None,
    ) -> None:
        """``servicer``: the spoke's SpokeService implementation (its methods take the
        request and a context, which is None here). ``credentials``: TLS (the spoke's
        certificate and the CA the hub's must chain to); None for plaintext."""
        self.cfg = cfg
        self._key = key
        self._status = status
        self._servicer = servicer
        self._credentials = credentials
        self._observe = observe
        self.connected = asyncio.Event()
        """Set while a session is open (after the hub's welcome)."""
        self.sessions = 0
        """Sessions opened so far."""
        self.heartbeats = 0
        """Heartbeats sent so far."""
        self._addresses = hub_addresses(cfg.hub_address)
        self._at = 0

    @property
    def address(self) -> str:
        """The hubd this link dials now (or last dialled)."""
        return self._addresses[self._at]

    async def run(self) -> None:
        """Keep a session open until cancelled, dialling again after each loss: the next of
        several hubds at once, the same one (or the first again) after a wait."""
        wait = self.cfg.reconnect_min_s
        tried = 0
        while True:
            started = time.monotonic()
            try:
                await self.session()
                log.info("link_session_ended", hub=self.address)
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "link_session_failed",
                    hub=self.address,
                    code=exc.code().name,
                    detail=exc.details(),
                )
            except (OSError, errors.HubspokeError) as exc:
                log.warning("link_session_failed", hub=self.address, error=str(exc))
            finally:
                self.connected.clear()
            if time.monotonic() - started >= STABLE_S:
                wait, tried = self.cfg.reconnect_min_s, 0
            self._at = (self._at + 1) % len(self._addresses)
            tried += 1
            if tried < len(self._addresses):
                continue  # another hubd of the hub may hold the spoke at once
            tried = 0
            await asyncio.sleep(wait * random.uniform(0.5, 1.0))  # noqa: S311  # jitter, not a secret
            wait = min(wait * 2, self.cfg.reconnect_max_s)

    def _channel(self) -> grpc.aio.Channel:
        args: list[tuple[str, int | str]] = [
            *channel_args(ServerOptions(max_message_bytes=self.cfg.max_message_bytes)),
            # Its own TCP connection: grpc shares one between like channels otherwise.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if self._credentials is None:
            return grpc.aio.insecure_channel(self.address, options=args)
        args.append(
            ("grpc.ssl_target_name_override", self.cfg.tls_server_name or self.cfg.hub_name)
        )
        return grpc.aio.secure_channel(self.address, self._credentials, options=args)

    async def session(self) -> None:
        """One session: hello, welcome, then heartbeats and calls until it ends."""
        channel = self._channel()
        stub = link_service_pb2_grpc.SpokeLinkServiceStub(channel)
        opener: Any = stub.Control  # a bidirectional call, written and read below
        control = opener(metadata=version.CALL_METADATA)
        serving: set[asyncio.Task[None]] = set()
        beating: asyncio.Task[None] | None = None
        try:
            hello = sign_hello(
                self.cfg.spoke, self.cfg.hub_name, self._key, self.cfg.heartbeat_interval_s
            )
            await control.write(link_service_pb2.SpokeLinkServiceControlRequest(hello=hello))
            first = await control.read()
            if first is EOF or first.WhichOneof("kind") != "welcome":
                raise errors.InvalidCommandError("the hub did not welcome the hello")
            welcome = first.welcome
            interval = welcome.heartbeat_interval.ToMilliseconds() / 1000 or (
                self.cfg.heartbeat_interval_s
            )
            self.sessions += 1
            self.connected.set()
            log.info("link_session_opened", hub=welcome.hub, heartbeat_interval_s=interval)
            beating = asyncio.create_task(
                self._heartbeats(control, welcome.nonce, interval), name="link-heartbeat"
            )
            while True:
                msg = await _read_or_fail(control, beating)
                if msg is None:
                    return
                if msg.WhichOneof("kind") == "call":
                    task = asyncio.create_task(self._serve(stub, msg.call.call_id))
                    serving.add(task)
                    task.add_done_callback(serving.discard)
        finally:
            self.connected.clear()
            tasks = [*serving, *([beating] if beating is not None else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            control.cancel()
            await channel.close(None)

    async def _heartbeats(self, control: Any, nonce: bytes, interval_s: float) -> None:
        """Send the signed status every interval, on a fixed schedule (no drift)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            signed = self._status(nonce)
            if signed is not None:
                beat = link_service_pb2.LinkHeartbeat(
                    status=command_pb2.SignedEnvelope.FromString(signed)
                )
                await control.write(link_service_pb2.SpokeLinkServiceControlRequest(heartbeat=beat))
                self.heartbeats += 1
            next_at += interval_s if signed is not None else min(interval_s, 0.1)
            await asyncio.sleep(max(next_at - loop.time(), 0.0))

    async def _serve(self, stub: link_service_pb2_grpc.SpokeLinkServiceStub, call_id: str) -> None:
        """Serve one announced call on a Serve stream of its own."""
        opener: Any = stub.Serve
        call = opener(metadata=version.CALL_METADATA)
        try:
            await call.write(
                link_service_pb2.SpokeLinkServiceServeRequest(
                    open=link_service_pb2.LinkServeOpen(call_id=call_id, spoke=self.cfg.spoke)
                )
            )
            first = await call.read()
            if first is EOF:
                return
            work = asyncio.create_task(self._dispatch(call, first.call))
            ended = asyncio.create_task(call.read())  # the hub ends the stream: stop serving
            await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
            if work.done():
                # The status is written, not yet delivered: cancelling now could reset the
                # stream before the hub reads it. The hub ends the stream once it has.
                await asyncio.wait({ended}, timeout=LINGER_S)
            for task in (work, ended):
                task.cancel()
            await asyncio.gather(work, ended, return_exceptions=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                log.info("link_serve_failed", call=call_id, code=exc.code().name)
        finally:
            call.cancel()

    async def _dispatch(self, call: Any, asked: link_service_pb2.LinkServeCall) -> None:
        started = time.monotonic()
        if self._credentials is not None and not self.cfg.tls_server_name:
            # This task serves the hub whose certificate named hub_name when we dialled: a
            # relay must be signed by it, as over a server's mutual TLS (bind_signer).
            assume_peer(TransportPeer(tls=True, dns_names=frozenset({self.cfg.hub_name.lower()})))
        failure: BaseException | None = None
        name = asked.method[:64]
        try:
            method = spoke_method(asked.method)
            try:
                request = method.request.FromString(asked.request)
            except DecodeError as exc:
                raise errors.InvalidCommandError("request body is not a valid protobuf") from exc
            timeout = asked.timeout.ToMilliseconds() / 1000 or None
            async with asyncio.timeout(timeout):
                await self._run(call, method, request)
        except (errors.CommandError, TimeoutError) as exc:
            failure = exc
        except Exception as exc:  # the one boundary, as the gRPC server has it
            log.exception("rpc_internal_error", rpc=name)
            failure = exc
        status = status_of(failure)
        log.info(
            "link_call_served",
            rpc=name,
            code=status.code,
            duration_ms=round((time.monotonic() - started) * 1000, 2),
        )
        if self._observe is not None:
            code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
            self._observe(
                SERVE_RPC + name, code, getattr(failure, "reason", ""), time.monotonic() - started
            )
        await call.write(link_service_pb2.SpokeLinkServiceServeRequest(status=status))
        await call.done_writing()

    async def _run(self, call: Any, method: SpokeMethod, request: Message) -> None:
        impl = getattr(self._servicer, method.name)
        if method.streaming:
            async with contextlib.aclosing(impl(request, None)) as responses:
                async for response in responses:
                    await call.write(_response(response))
        else:
            await call.write(_response(await impl(request, None)))


def _response(msg: Message) -> link_service_pb2.SpokeLinkServiceServeRequest:
    return link_service_pb2.SpokeLinkServiceServeRequest(response=msg.SerializeToString())


async def _read_or_fail(control: Any, beating: asyncio.Task[None]) -> ControlIn | None:
    """The next control message; None when the hub ended the stream; a failed heartbeat
    task ends the session with its error."""
    reading = asyncio.ensure_future(control.read())
    await asyncio.wait({reading, beating}, return_when=asyncio.FIRST_COMPLETED)
    if not reading.done():
        reading.cancel()
        beating.result()  # raises its error
        return None
    msg = reading.result()
    return None if msg is EOF else msg


def hub_addresses(text: str) -> list[str]:
    """The hubd addresses of ``hub_address`` (``a:7100`` or ``a:7100,b:7100``), in order."""
    found = [a.strip() for a in text.split(",") if a.strip()]
    if not found:
        raise errors.InvalidCommandError("hub_address names no hub")
    return found
