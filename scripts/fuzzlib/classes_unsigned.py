"""The input classes whose bytes or signatures are broken: ``fuzzed``, ``forged``, ``unsigned``,
``oversized`` and ``unknown_method`` (their expected statuses: :mod:`fuzzlib.classes`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Final

from hubspoke import commands, envelope
from hubspoke.gen.federation.v1 import command_pb2

from .classes import (
    BAD,
    EXHAUSTED,
    INVALID,
    NO_REASON,
    SIG,
    UNAUTH,
    UNIMPLEMENTED,
    Ctx,
    Probe,
    probe,
    rounds,
)
from .classes import statuses as _s
from .endpoints import Endpoint
from .forge import (
    COMMAND,
    RELAY,
    Forge,
    ascii_token,
    env_raw,
    envelope_bytes,
    equivalent,
    flip,
    request_bytes,
    unknown_field,
)

# -- fuzzed -----------------------------------------------------------------------------------

FUZZ_EXPECT: Final = _s(INVALID, UNAUTH)
FUZZ_REASONS: Final = _s(BAD, SIG)


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos] = rng.randrange(256)
        elif op == 2:
            b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and b:
            del b[pos : pos + rng.randint(1, 8)]
        elif b:
            j = rng.randrange(len(b))
            b[pos:pos] = b[j : j + rng.randint(1, 32)]
    return bytes(b)


def _random_bytes(rng: random.Random) -> bytes:
    r = rng.random()
    n = (
        rng.randint(1, 64)
        if r < 0.7
        else rng.randint(65, 2048)
        if r < 0.95
        else rng.randint(2049, 65536)
    )
    return rng.randbytes(n)


def _proto_garbage(ctx: Ctx, ep: Endpoint, mode: str) -> bytes:
    """Well-framed protobuf with random contents: gets past the parser to the verifier."""
    f, rng = ctx.forge, ctx.rng
    k = f.keys
    if rng.random() < 0.3:  # a real, well-formed command that nobody signed
        payload = f.command(ep).SerializeToString()
    else:
        payload = rng.randbytes(rng.randint(0, 512))
    ptype = rng.choice(
        [COMMAND, RELAY, envelope.PAYLOAD_TYPE_REPLY, "", ascii_token(rng, 12), COMMAND + " "]
    ).encode()
    kids = [
        k.operator.key_id,
        k.hub.key_id,
        k.spoke.key_id,
        k.intruder.key_id,
        "",
        "/",
        f"operator/{rng.getrandbits(64):016x}",
        ascii_token(rng, 40),
        "x" * 300,
    ]
    sigs = [
        (rng.randbytes(rng.choice([0, 1, 32, 63, 64, 64, 64, 65, 128])), rng.choice(kids).encode())
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3, 4, 5, 6]))
    ]
    return request_bytes(envelope_bytes(payload, ptype, sigs))


def _signed_garbage(ctx: Ctx, mode: str) -> bytes:
    """Random bytes, correctly signed by a trusted key: verification passes, parsing fails."""
    f, rng = ctx.forge, ctx.rng
    payload = rng.randbytes(rng.randint(1, 512))
    env = f.sign(payload, f.keys.hub, RELAY) if mode == "relay" else f.sign(payload)
    return request_bytes(env.SerializeToString())


def fuzzed(ctx: Ctx, n: int) -> Iterator[Probe]:
    rng, f = ctx.rng, ctx.forge
    e = len(ctx.endpoints)
    for i, _r, ep, mode in rounds(ctx, n):
        if i < e:
            yield probe(ep, b"", "empty", FUZZ_EXPECT, FUZZ_REASONS)
            continue
        x = rng.random()
        if x < 0.30:
            yield probe(ep, _random_bytes(rng), "random_bytes", FUZZ_EXPECT, FUZZ_REASONS)
        elif x < 0.45:
            b = f.valid(ep, mode)
            raw = b.raw[: rng.randint(1, len(b.raw) - 1)]
            if equivalent(ep, raw, b.outer):  # pragma: no cover - a cut can not keep it
                ctx.skipped["fuzzed/truncated"] += 1
                continue
            yield probe(ep, raw, "truncated", FUZZ_EXPECT, FUZZ_REASONS)
        elif x < 0.75:
            b = f.valid(ep, mode)
            for _ in range(5):
                raw = mutate(rng, b.raw)
                if not equivalent(ep, raw, b.outer):
                    yield probe(ep, raw, "mutated", FUZZ_EXPECT, FUZZ_REASONS)
                    break
                ctx.skipped["fuzzed/mutated_equivalent"] += 1
            else:
                yield probe(ep, _random_bytes(rng), "random_bytes", FUZZ_EXPECT, FUZZ_REASONS)
        elif x < 0.89:
            yield probe(
                ep, _proto_garbage(ctx, ep, mode), "proto_garbage", FUZZ_EXPECT, FUZZ_REASONS
            )
        else:
            yield probe(ep, _signed_garbage(ctx, mode), "signed_garbage", FUZZ_EXPECT, FUZZ_REASONS)


# -- forged -----------------------------------------------------------------------------------

FORGED: Final[dict[str, frozenset[str]]] = {
    "flip_payload": _s(UNAUTH),
    "flip_type": _s(INVALID),
    "flip_sig": _s(UNAUTH),
    "flip_key_id_fingerprint": _s(UNAUTH, INVALID),  # INVALID: the flip made invalid UTF-8
    "unknown_key": _s(UNAUTH),
    "unknown_key_id": _s(UNAUTH),
    "trusted_key_id_other_sig": _s(UNAUTH),
    "wrong_role": _s(UNAUTH),
}


def _tamper(ctx: Ctx, variant: str, env: command_pb2.SignedEnvelope, signer_name: str) -> bytes:
    """The envelope's bytes with one forgery applied."""
    rng, k = ctx.rng, ctx.forge.keys
    payload, ptype, sigs = env_raw(env)
    sig, kid = sigs[0]
    if variant == "flip_payload":
        payload = flip(payload, rng.randrange(len(payload) * 8))
    elif variant == "flip_type":
        ptype = flip(ptype, rng.randrange(len(ptype) * 8))
    elif variant == "flip_sig":
        sig = flip(sig, rng.randrange(len(sig) * 8))
    elif variant == "flip_key_id_fingerprint":
        start = kid.rfind(b"/") + 1
        kid = flip(kid, start * 8 + rng.randrange((len(kid) - start) * 8))
    elif variant == "unknown_key":
        sig = k.intruder.private.sign(envelope.pae(env.payload_type, payload))
        kid = k.intruder.key_id.encode()
    elif variant == "unknown_key_id":
        kid = f"{signer_name}/{rng.getrandbits(64):016x}".encode()
    elif variant == "trusted_key_id_other_sig":
        sig = k.intruder.private.sign(envelope.pae(env.payload_type, payload))
    else:  # pragma: no cover
        raise ValueError(variant)
    return envelope_bytes(payload, ptype, [(sig, kid)])


def _forged_one(ctx: Ctx, ep: Endpoint, mode: str, variant: str) -> tuple[bytes, str]:
    f, rng, k = ctx.forge, ctx.rng, ctx.forge.keys
    layer = rng.choice(("outer", "inner")) if mode == "relay" else "outer"
    if variant == "wrong_role":
        if layer == "outer" and mode == "relay":
            inner = f.sign(f.command(ep).SerializeToString())
            signer = rng.choice([k.operator, k.spoke])  # a client or a spoke posing as a hub
            return f.request(ep, f.relay(inner, key=signer)), layer
        signer = rng.choice([k.hub, k.spoke])  # a hub or spoke key posing as a client
        client = f.sign(f.command(ep, issuer=signer.name).SerializeToString(), signer)
        return f.wrap(ep, mode, client).raw, layer
    client = f.sign(f.command(ep).SerializeToString())
    if layer == "inner":
        inner_raw = _tamper(ctx, variant, client, "operator")
        return f.request(ep, f.relay(client, inner_raw=inner_raw)), layer
    outer = f.relay(client) if mode == "relay" else client
    return request_bytes(_tamper(ctx, variant, outer, "hub" if mode == "relay" else "operator")), (
        layer
    )


def forged(ctx: Ctx, n: int) -> Iterator[Probe]:
    names = list(FORGED)
    for _i, r, ep, mode in rounds(ctx, n):
        variant = names[r % len(names)]
        raw, layer = _forged_one(ctx, ep, mode, variant)
        label = variant if mode != "relay" else f"{variant}@{layer}_relay"
        yield probe(ep, raw, label, FORGED[variant], _s(SIG, BAD))


# -- unsigned ---------------------------------------------------------------------------------

UNSIGNED: Final[dict[str, frozenset[str]]] = {
    "no_signatures": _s(UNAUTH),
    "empty_sig": _s(UNAUTH),
    "empty_key_id": _s(UNAUTH),
    "short_sig": _s(UNAUTH),
    "long_sig": _s(UNAUTH),
    "no_envelope": _s(INVALID),
    "five_signatures": _s(INVALID),
}


def _unsign(variant: str, env: command_pb2.SignedEnvelope, rng: random.Random) -> bytes:
    """The envelope's bytes with its signatures stripped or spoiled (b"" = no envelope)."""
    payload, ptype, sigs = env_raw(env)
    sig, kid = sigs[0]
    if variant == "no_envelope":
        return b""
    if variant == "no_signatures":
        sigs = []
    elif variant == "empty_sig":
        sigs = [(b"", kid)]
    elif variant == "empty_key_id":
        sigs = [(sig, b"")]
    elif variant == "short_sig":
        sigs = [(sig[:63], kid)]
    elif variant == "long_sig":
        sigs = [(sig + b"\x00", kid)]
    else:  # five signatures, one of them valid: more than MAX_SIGNATURES is refused
        sigs = [(rng.randbytes(64), kid) for _ in range(4)] + [(sig, kid)]
    return envelope_bytes(payload, ptype, sigs)


def unsigned(ctx: Ctx, n: int) -> Iterator[Probe]:
    f, rng = ctx.forge, ctx.rng
    names = list(UNSIGNED)
    for _i, r, ep, mode in rounds(ctx, n):
        variant = names[r % len(names)]
        layer = rng.choice(("outer", "inner")) if mode == "relay" else "outer"
        client = f.sign(f.command(ep).SerializeToString())
        if layer == "inner":
            inner = _unsign(variant, client, rng)
            relay = f.relay(client, inner_raw=inner) if inner else _relay_without_command(f, client)
            raw = f.request(ep, relay)
        else:
            outer = f.relay(client) if mode == "relay" else client
            env = _unsign(variant, outer, rng)
            raw = request_bytes(env) if env else b""
        label = variant if mode != "relay" else f"{variant}@{layer}_relay"
        yield probe(ep, raw, label, UNSIGNED[variant], _s(SIG, BAD))


def _relay_without_command(
    f: Forge, client: command_pb2.SignedEnvelope
) -> command_pb2.SignedEnvelope:
    relay = f.relay(client)
    parsed = commands.parse_relay(relay.payload)
    parsed.ClearField("command")
    return f.sign(parsed.SerializeToString(), f.keys.hub, RELAY)


# -- oversized --------------------------------------------------------------------------------

OVERSIZED: Final = ("raw_over_limit", "signed_over_limit", "near_limit_task", "task_over_max")


def oversized(ctx: Ctx, n: int) -> Iterator[Probe]:
    f, rng = ctx.forge, ctx.rng
    limit = ctx.max_message_bytes
    for _i, r, ep, mode in rounds(ctx, n):
        variant = OVERSIZED[r % 2]
        if ep.verb == "spawn_agent":
            variant = OVERSIZED[r % 4]
        if variant == "raw_over_limit":
            raw = rng.randbytes(limit + rng.randint(1, 65536))
            yield probe(ep, raw, variant, _s(EXHAUSTED), _s(NO_REASON))
        elif variant == "signed_over_limit":
            # a correctly signed command, padded past the limit with an unknown field
            payload = f.command(ep).SerializeToString() + unknown_field(limit)
            built = f.wrap(ep, mode, f.sign(payload))
            yield probe(ep, built.raw, f"{variant}@{mode}", _s(EXHAUSTED), _s(NO_REASON))
        elif variant == "near_limit_task":
            # under the transport limit, far over max_task_bytes; through the hub the relay
            # wrapper may push it over the hub->spoke limit instead
            task = "x" * (limit - 2048)
            built = f.valid(ep, mode, body=f.body("spawn_agent", task=task))
            yield probe(
                ep, built.raw, f"{variant}@{mode}", _s(INVALID, EXHAUSTED), _s(BAD, EXHAUSTED)
            )
        else:
            task = "x" * (ctx.max_task_bytes + 1)
            built = f.valid(ep, mode, body=f.body("spawn_agent", task=task))
            yield probe(ep, built.raw, f"{variant}@{mode}", _s(INVALID), _s(BAD))


# -- unknown methods --------------------------------------------------------------------------

UNKNOWN_METHOD: Final = (
    "unknown_rpc",
    "other_service_rpc",
    "unknown_service",
    "case_mangled",
    "garbage_path",
)
_OTHER: Final = {"hub": "federation.v1.SpokeService", "spoke": "federation.v1.HubService"}


def unknown_method(ctx: Ctx, n: int) -> Iterator[Probe]:
    f, rng = ctx.forge, ctx.rng
    for _i, r, ep, mode in rounds(ctx, n):
        variant = UNKNOWN_METHOD[r % len(UNKNOWN_METHOD)]
        if variant == "unknown_rpc":
            path = f"/{ep.service}/{ep.method}{ascii_token(rng, 4)}"
        elif variant == "other_service_rpc":
            path = f"/{_OTHER[ep.server]}/{ep.method}"
        elif variant == "unknown_service":
            path = rng.choice(
                [
                    f"/federation.v1.AdminService/{ep.method}",
                    f"/federation.v2.{ep.service.rsplit('.', 1)[1]}/{ep.method}",
                    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                    "/grpc.channelz.v1.Channelz/GetServers",
                ]
            )
        elif variant == "case_mangled":
            path = f"/{ep.service.lower()}/{ep.method.lower()}"
        else:
            path = "/" + "/".join(ascii_token(rng, rng.randint(1, 12)) for _ in range(2))
        raw = f.valid(ep, mode).raw if rng.random() < 0.5 else _random_bytes(rng)
        yield Probe(ep.server, path, False, raw, variant, _s(UNIMPLEMENTED), ep.server + ":?")
