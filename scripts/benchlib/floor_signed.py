"""The design floor of a signed spawn (issue 13): only the work a signed, stored spawn cannot
avoid on this stack, as a grpc.aio server and the client op that drives it.

The server (``python -m benchlib.floor_signed``; prints ``serving PORT``) answers
``/bench.FloorSigned/Spawn``, raw bytes in and out (no service proto, no interceptors,
logging, metrics, policy or records), with exactly:

1. parse the request: a serialized ``SignedEnvelope`` whose payload is a ``Command``;
2. Ed25519 verify of its one signature over the DSSE PAE bytes, with the client key its
   key id names (looked up in a dict built from the trust store at start-up), and the
   command's expire time against the clock;
3. one EVALSHA of a small script on the spoke's Redis through ``hubspoke.redis_mux``: claim
   the nonce (SET NX PX) and store the signed payload under the command id (both expire
   after ``TTL_MS``, so the floor leaves nothing behind);
4. a ``Reply`` (command id, responder, SHA-256 of the payload), Ed25519-signed as the spoke.

The client op signs a fresh ``Command`` (new id, nonce, times) with the operator's key and
verifies the reply: the spoke's signature, the responder, the command id and the digest.

Environment of the server: ``FLOOR_REDIS_URL`` (with its password), ``FLOOR_KEY_FILE`` (the
spoke's private key), ``FLOOR_NAME`` (the spoke's name), ``FLOOR_TRUST_FILE``. The loop is
spoked's default (``hubspoke.event_loop``: uvloop where installed).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis.asyncio as aioredis
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hubspoke import envelope, event_loop, keys
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.redis_mux import RedisMux, ScriptRef
from hubspoke.trust import Role, TrustStore

from .echo import serve_until_signalled

SERVICE = "bench.FloorSigned"
METHOD = f"/{SERVICE}/Spawn"
TTL_MS = 60_000
"""How long the floor's nonce claims and stored commands live in the spoke's Redis."""
OP_TIMEOUT_S = 10.0
_OPTIONS = [("grpc.so_reuseport", 0)]

SCRIPT_TEXT = """\
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
  return 1
end
return 0
"""
SCRIPT = ScriptRef(hashlib.sha1(SCRIPT_TEXT.encode()).hexdigest(), SCRIPT_TEXT)  # noqa: S324 - Redis names scripts by SHA-1

_PAE_COMMAND = b"DSSEv1 %d %b " % (
    len(envelope.PAYLOAD_TYPE_COMMAND),
    envelope.PAYLOAD_TYPE_COMMAND.encode(),
)
_PAE_REPLY = b"DSSEv1 %d %b " % (
    len(envelope.PAYLOAD_TYPE_REPLY),
    envelope.PAYLOAD_TYPE_REPLY.encode(),
)


def _verifies(public: Ed25519PublicKey, sig: bytes, prefix: bytes, payload: bytes) -> bool:
    try:
        public.verify(sig, b"%b%d %b" % (prefix, len(payload), payload))
    except InvalidSignature:
        return False
    return True


class FloorError(RuntimeError):
    """A request or reply of the floor failed its check."""


@dataclass(frozen=True, slots=True)
class Server:
    """The floor server's constant state: keys, the spoke's identity and its Redis."""

    name: str
    key: keys.SigningKey
    clients: dict[str, Ed25519PublicKey]
    """Client keys by key-id fingerprint (the trust store's ``client`` peers)."""
    mux: RedisMux

    async def spawn(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        env = command_pb2.SignedEnvelope.FromString(request)
        if env.payload_type != envelope.PAYLOAD_TYPE_COMMAND or len(env.signatures) != 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a signed command")
        sig = env.signatures[0]
        public = self.clients.get(sig.key_id.rpartition("/")[2])
        payload = env.payload
        if public is None or not _verifies(public, sig.sig, _PAE_COMMAND, payload):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad signature")
        cmd = command_pb2.Command.FromString(payload)
        if cmd.expire_time.seconds <= time.time():
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "command expired")
        [fresh] = await self.mux.checked_script(
            SCRIPT,
            (f"floor:nonce:{cmd.nonce.hex()}", f"floor:cmd:{cmd.command_id}"),
            (TTL_MS, payload),
        )
        if not fresh:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "nonce replayed")
        reply = command_pb2.Reply(
            command_id=cmd.command_id,
            responder=self.name,
            request_digest=hashlib.sha256(payload).digest(),
        ).SerializeToString()
        signature = self.key.private.sign(b"%b%d %b" % (_PAE_REPLY, len(reply), reply))
        return command_pb2.SignedEnvelope(
            payload=reply,
            payload_type=envelope.PAYLOAD_TYPE_REPLY,
            signatures=[command_pb2.Signature(sig=signature, key_id=self.key.key_id)],
        ).SerializeToString()


def client_keys(trust: TrustStore) -> dict[str, Ed25519PublicKey]:
    return {
        k.fingerprint: k.public for peer in trust.peers(Role.CLIENT) for k in trust.keys_of(peer)
    }


async def serve() -> None:
    name = os.environ["FLOOR_NAME"]
    key = keys.load_private(Path(os.environ["FLOOR_KEY_FILE"]), name)
    trust = TrustStore.from_file(Path(os.environ["FLOOR_TRUST_FILE"]))
    client = aioredis.Redis.from_url(os.environ["FLOOR_REDIS_URL"])
    mux = RedisMux.of(client, OP_TIMEOUT_S)
    floor = Server(name, key, client_keys(trust), mux)
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Spawn": grpc.unary_unary_rpc_method_handler(floor.spawn)}
    )
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers([handler])
    try:
        await serve_until_signalled(server, server.add_insecure_port("127.0.0.1:0"))
    finally:
        await mux.close()
        await client.aclose()


@dataclass(frozen=True, slots=True)
class Client:
    """The floor's client: signs each command, verifies each reply."""

    key: keys.SigningKey
    audience: str
    spoke: Ed25519PublicKey
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]

    def request(self) -> tuple[str, bytes, bytes]:
        """A fresh signed command: (command id, payload, the request bytes)."""
        now = time.time_ns()
        seconds, nanos = divmod(now, 1_000_000_000)
        command_id = secrets.token_hex(16)
        cmd = command_pb2.Command(
            command_id=command_id,
            issuer=self.key.name,
            audience=self.audience,
            nonce=secrets.token_bytes(24),
            spawn_agent=command_pb2.SpawnAgentBody(profile="ready", task=command_id),
        )
        cmd.issue_time.seconds, cmd.issue_time.nanos = seconds, nanos
        cmd.expire_time.seconds, cmd.expire_time.nanos = seconds + 300, nanos
        payload = cmd.SerializeToString()
        sig = self.key.private.sign(b"%b%d %b" % (_PAE_COMMAND, len(payload), payload))
        env = command_pb2.SignedEnvelope(
            payload=payload,
            payload_type=envelope.PAYLOAD_TYPE_COMMAND,
            signatures=[command_pb2.Signature(sig=sig, key_id=self.key.key_id)],
        )
        return command_id, payload, env.SerializeToString()

    def check(self, command_id: str, payload: bytes, answer: bytes) -> None:
        """FloorError unless ``answer`` is the spoke's signed reply to this command."""
        env = command_pb2.SignedEnvelope.FromString(answer)
        if env.payload_type != envelope.PAYLOAD_TYPE_REPLY or len(env.signatures) != 1:
            raise FloorError("not a signed reply")
        reply_bytes = env.payload
        if not _verifies(self.spoke, env.signatures[0].sig, _PAE_REPLY, reply_bytes):
            raise FloorError("the reply's signature does not verify")
        reply = command_pb2.Reply.FromString(reply_bytes)
        if (
            reply.responder != self.audience
            or reply.command_id != command_id
            or reply.request_digest != hashlib.sha256(payload).digest()
        ):
            raise FloorError("the reply does not answer the command sent")

    async def spawn(self, timeout_s: float = OP_TIMEOUT_S) -> None:
        command_id, payload, request = self.request()
        answer = await self.call(request, timeout=timeout_s)
        self.check(command_id, payload, answer)


def open_client(
    channel: grpc.aio.Channel, key: keys.SigningKey, spoke: str, trust: TrustStore
) -> Client:
    """A floor client of ``spoke`` (its public key from ``trust``) on ``channel``."""
    [spoke_key] = trust.keys_of(spoke)
    call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    return Client(key, spoke, spoke_key.public, call)


def main() -> None:
    event_loop.run(serve(), event_loop.DEFAULT_EVENT_LOOP)


if __name__ == "__main__":
    main()
