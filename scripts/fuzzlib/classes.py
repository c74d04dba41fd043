"""The input classes: how each is made, and which statuses docs/protocol.md promises for it.

Every generator walks the endpoints round by round (round ``r`` gives every endpoint the
same variant), so even the reduced scale sends every variant to every RPC. SpokeService
requests go either straight from a client (``direct``) or inside a Relay signed by the hub
key (``relay``), chosen at random; in ``relay`` mode the tampering hits the relay (outer)
or the client's command inside it (inner), also at random.

Expected statuses (docs/protocol.md §3.3, §4.1, §5, §6, §10):

========================  ==========================================================
class                     statuses
========================  ==========================================================
fuzzed                    INVALID_ARGUMENT (unparseable, bad type) or UNAUTHENTICATED
forged                    UNAUTHENTICATED SIGNATURE_INVALID; a flipped payload_type
                          INVALID_ARGUMENT
malformed_signed          INVALID_ARGUMENT (or UNAUTHENTICATED / PERMISSION_DENIED where
                          §4.1 says so: issuer ≠ signer, empty audience at a spoke)
signed_out_of_range       INVALID_ARGUMENT: times, durations and page tokens out of range
replayed                  UNAUTHENTICATED NONCE_REUSED (same RPC), INVALID_ARGUMENT
                          (the envelope sent to another RPC: the body check comes first)
expired, future_dated     UNAUTHENTICATED COMMAND_EXPIRED
wrong_audience            spoke: PERMISSION_DENIED WRONG_SPOKE; hub: NOT_FOUND
                          SPOKE_NOT_FOUND, INVALID_ARGUMENT (§5 table), or the spoke's
                          PERMISSION_DENIED when the hub misroutes
unsigned                  UNAUTHENTICATED SIGNATURE_INVALID; no envelope or > 4
                          signatures INVALID_ARGUMENT
oversized                 RESOURCE_EXHAUSTED (gRPC's own limit, no reason); a task over
                          max_task_bytes INVALID_ARGUMENT
unknown_method            UNIMPLEMENTED
within_skew               OK (the only positive class; see run.py)
========================  ==========================================================
"""

from __future__ import annotations

import base64
import datetime as dt
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from google.protobuf import duration_pb2, timestamp_pb2

from hubspoke import commands, envelope
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.trust import TrustStore

from .endpoints import Endpoint
from .federation import HUB, MISROUTED, SPOKE
from .forge import (
    AGENT_VERBS,
    COMMAND,
    RELAY,
    SPOKE_ADDRESSED,
    Built,
    Forge,
    ascii_token,
    env_raw,
    envelope_bytes,
    equivalent,
    flip,
    request_bytes,
    unknown_field,
)

OK: Final = "OK"
INVALID: Final = "INVALID_ARGUMENT"
UNAUTH: Final = "UNAUTHENTICATED"
DENIED: Final = "PERMISSION_DENIED"
NOT_FOUND: Final = "NOT_FOUND"
EXHAUSTED: Final = "RESOURCE_EXHAUSTED"
UNIMPLEMENTED: Final = "UNIMPLEMENTED"

SIG: Final = "SIGNATURE_INVALID"
BAD: Final = "INVALID_COMMAND"
EXPIRED: Final = "COMMAND_EXPIRED"
NONCE: Final = "NONCE_REUSED"
WRONG: Final = "WRONG_SPOKE"
NO_SPOKE: Final = "SPOKE_NOT_FOUND"
NO_REASON: Final = ""


@dataclass(frozen=True, slots=True)
class Probe:
    """One request to send, and what must come back."""

    server: str
    path: str
    streaming: bool
    raw: bytes
    variant: str
    expect: frozenset[str]
    """Allowed gRPC status code names."""
    endpoint: str
    reasons: frozenset[str] | None = None
    """Allowed ErrorInfo reasons for a failure ("" = none); None: not checked."""
    before: Probe | None = None
    """Sent first, by the same worker (a primer); its answer is recorded apart."""


@dataclass
class Ctx:
    forge: Forge
    endpoints: list[Endpoint]
    rng: random.Random
    max_message_bytes: int
    max_task_bytes: int
    max_skew: dt.timedelta
    trust: TrustStore
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def by_key(self) -> dict[str, Endpoint]:
        return {e.key: e for e in self.endpoints}


def probe(
    ep: Endpoint,
    raw: bytes,
    variant: str,
    expect: frozenset[str],
    reasons: frozenset[str] | None = None,
    before: Probe | None = None,
) -> Probe:
    return Probe(ep.server, ep.path, ep.streaming, raw, variant, expect, ep.key, reasons, before)


def rounds(ctx: Ctx, n: int) -> Iterator[tuple[int, int, Endpoint, str]]:
    """(i, round, endpoint, mode) for n probes spread over every endpoint."""
    e = len(ctx.endpoints)
    for i in range(n):
        ep = ctx.endpoints[i % e]
        mode = "hub" if ep.server == "hub" else ctx.rng.choice(("direct", "relay"))
        yield i, i // e, ep, mode


def _s(*codes: str) -> frozenset[str]:
    return frozenset(codes)


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


# -- malformed but correctly signed -----------------------------------------------------------

MALFORMED_HEADER: Final = (
    "command_id_empty",
    "command_id_bad",
    "nonce_size",
    "issue_unset",
    "expire_unset",
    "expire_before_issue",
    "validity_too_long",
    "negative_times",
    "body_missing",
    "body_other_verb",
    "issuer_mismatch",
    "audience_empty",
)
MALFORMED_BODY: Final[dict[str, tuple[str, ...]]] = {
    "spawn_agent": (
        "unknown_profile",
        "task_nul",
        "priority_out_of_range",
        "timeout_negative",
        "timeout_over_profile",
        "attempts_out_of_range",
        "labels_too_many",
        "label_too_long",
        "task_over_max_task_bytes",
    ),
    "list_agents": ("page_size_negative", "page_token_garbage"),
    "list_dead_letters": ("page_size_negative", "page_token_garbage"),
    "watch_agent": ("after_sequence_negative", "agent_bad_id"),
    "get_agent": ("agent_bad_id",),
    "kill_agent": ("agent_bad_id",),
    "replay_agent": ("agent_bad_id",),
    "verify_agent": ("agent_bad_id",),
}
MALFORMED_EXPECT: Final = _s(INVALID, UNAUTH, DENIED)


def _malformed_cmd(
    ctx: Ctx, ep: Endpoint, variant: str
) -> tuple[command_pb2.Command, frozenset[str]]:
    f, rng = ctx.forge, ctx.rng
    now = commands.now()
    verb = ep.verb
    inv = _s(INVALID)
    if variant == "command_id_empty":
        return f.command(ep, command_id=""), inv
    if variant == "command_id_bad":
        bad = rng.choice(["a b", "../etc", "-lead", "é", "a/b", "x" * 129, "a\x00b"])
        return f.command(ep, command_id=bad), inv
    if variant == "nonce_size":
        return f.command(ep, nonce=rng.randbytes(rng.choice([0, 1, 15, 65, 1000]))), inv
    if variant == "issue_unset":
        return f.command(ep, issue=timestamp_pb2.Timestamp()), inv
    if variant == "expire_unset":
        return f.command(ep, expire=timestamp_pb2.Timestamp()), inv
    if variant == "expire_before_issue":
        return f.command(ep, issue=_ts(now), expire=_ts(now - dt.timedelta(seconds=1))), inv
    if variant == "validity_too_long":
        return f.command(ep, validity=dt.timedelta(hours=1, seconds=60)), inv
    if variant == "negative_times":
        neg = timestamp_pb2.Timestamp(seconds=-100), timestamp_pb2.Timestamp(seconds=-50)
        return f.command(ep, issue=neg[0], expire=neg[1]), _s(UNAUTH)
    if variant == "body_missing":
        return f.command(ep, verb=None), inv
    if variant == "body_other_verb":
        others = sorted(b for b in _verbs(ctx) if b != verb)
        return f.command(ep, verb=rng.choice(others)), inv
    if variant == "issuer_mismatch":
        return f.command(ep, issuer=rng.choice(["mallory", "hub", SPOKE, ""])), _s(UNAUTH)
    if variant == "audience_empty":
        return f.command(ep, audience=""), _s(INVALID) if ep.server == "hub" else _s(DENIED)
    assert verb is not None
    b: dict[str, object] = {}
    expect = inv
    if variant == "unknown_profile":
        b["profile"] = rng.choice(["shell", "no-such-profile", "", "SYNTHETIC", "synthetic "])
    elif variant == "task_nul":
        b["task"] = "duration=0\x00rm"
    elif variant == "priority_out_of_range":
        b["priority"] = rng.choice([11, -1, 2**31 - 1])
        expect = _s(INVALID, DENIED)  # the hub's policy caps priority at 10 first
    elif variant == "timeout_negative":
        b["timeout"] = duration_pb2.Duration(seconds=-1)
    elif variant == "timeout_over_profile":
        b["timeout"] = duration_pb2.Duration(seconds=601)
    elif variant == "attempts_out_of_range":
        b["max_attempts"] = rng.choice([11, -1])
    elif variant == "labels_too_many":
        b["labels"] = {f"k{j}": "v" for j in range(33)}
    elif variant == "label_too_long":
        b["labels"] = {"k" * 257: "v"}
    elif variant == "task_over_max_task_bytes":
        b["task"] = "x" * (ctx.max_task_bytes + 1)
    elif variant == "page_size_negative":
        b["page_size"] = -1
    elif variant == "page_token_garbage":
        b["page_token"] = rng.choice(["!!", "bm9wZQ", "o:-1", ascii_token(rng, 30), "x" * 5000])
    elif variant == "after_sequence_negative":
        b["after_sequence"] = -1
    elif variant == "agent_bad_id":
        b["agent"] = rng.choice(
            ["a b", "../x", "", "spokes/x", f"spokes/{SPOKE}/agents/a b", "spokes//agents/x"]
        )
        expect = _s(INVALID, DENIED)  # spokes//agents/x names spoke "": another spoke
    else:  # pragma: no cover
        raise ValueError(variant)
    return f.command(ep, body=f.body(verb, **b)), expect


def _verbs(ctx: Ctx) -> set[str]:
    return {e.verb for e in ctx.endpoints if e.verb}


def _ts(t: dt.datetime) -> timestamp_pb2.Timestamp:
    return commands.to_timestamp(t)


def malformed_signed(ctx: Ctx, n: int) -> Iterator[Probe]:
    f = ctx.forge
    for _i, r, ep, mode in rounds(ctx, n):
        own = MALFORMED_BODY.get(ep.verb or "", ())
        names = (*MALFORMED_HEADER, *own)
        variant = names[r % len(names)]
        cmd, expect = _malformed_cmd(ctx, ep, variant)
        built = f.wrap(ep, mode, f.sign(cmd.SerializeToString()))
        reasons = _s(BAD, SIG, EXPIRED, WRONG, "UNKNOWN_PROFILE", "KEY_NOT_AUTHORIZED")
        yield probe(ep, built.raw, f"{variant}@{mode}", expect, reasons)


# -- signed, in range for protobuf, out of range for the server ---------------------------------

OUT_OF_RANGE: Final = (
    "issue_year_10000",
    "times_2_pow_62",
    "nanos_out_of_range",
    "negative_nanos",
    "spawn_timeout_2_pow_62",
    "page_token_huge_offset",
    "relay_time_out_of_range",
)


def signed_out_of_range(ctx: Ctx, n: int) -> Iterator[Probe]:
    """Values protobuf accepts but ``datetime``/Redis do not: must be INVALID_ARGUMENT."""
    f = ctx.forge
    for _i, r, ep, mode in rounds(ctx, n):
        variant = OUT_OF_RANGE[r % len(OUT_OF_RANGE)]
        if variant == "spawn_timeout_2_pow_62" and ep.verb != "spawn_agent":
            variant = "issue_year_10000"
        if variant == "page_token_huge_offset" and "page_token" not in _fields(ep):
            variant = "times_2_pow_62"
        if variant == "relay_time_out_of_range" and mode != "relay":
            variant = "nanos_out_of_range"
        now = commands.now()
        sec = int(now.timestamp())
        relay_kw: dict[str, object] = {}
        if variant == "issue_year_10000":
            s = 253_402_300_800
            cmd = f.command(
                ep,
                issue=timestamp_pb2.Timestamp(seconds=s),
                expire=timestamp_pb2.Timestamp(seconds=s + 300),
            )
        elif variant == "times_2_pow_62":
            cmd = f.command(
                ep,
                issue=timestamp_pb2.Timestamp(seconds=2**62),
                expire=timestamp_pb2.Timestamp(seconds=2**62 + 300),
            )
        elif variant == "nanos_out_of_range":
            cmd = f.command(ep, issue=timestamp_pb2.Timestamp(seconds=sec, nanos=2_000_000_000))
        elif variant == "negative_nanos":
            cmd = f.command(ep, issue=timestamp_pb2.Timestamp(seconds=sec, nanos=-1))
        elif variant == "spawn_timeout_2_pow_62":
            cmd = f.command(
                ep, body=f.body("spawn_agent", timeout=duration_pb2.Duration(seconds=2**62))
            )
        elif variant == "page_token_huge_offset":
            token = base64.urlsafe_b64encode(b"o:" + b"9" * 25).decode().rstrip("=")
            cmd = f.command(ep, body=f.body(ep.verb or "", page_token=token))
        else:
            cmd = f.command(ep)
            relay_kw = {
                "issue": timestamp_pb2.Timestamp(seconds=2**62),
                "expire": timestamp_pb2.Timestamp(seconds=2**62 + 60),
            }
        client = f.sign(cmd.SerializeToString())
        outer = f.relay(client, **relay_kw) if mode == "relay" else client  # type: ignore[arg-type]
        yield probe(ep, f.request(ep, outer), f"{variant}@{mode}", _s(INVALID), _s(BAD))


def _fields(ep: Endpoint) -> set[str]:
    if not ep.verb:
        return set()
    desc = command_pb2.Command.DESCRIPTOR.fields_by_name[ep.verb].message_type
    return set(desc.fields_by_name)


# -- expired and future-dated -----------------------------------------------------------------


def _dated(
    ctx: Ctx, n: int, variants: tuple[str, ...], when: Callable[[str], dt.datetime]
) -> Iterator[Probe]:
    """Commands (or relays) whose issue time is ``when(variant)``."""
    f, rng = ctx.forge, ctx.rng
    for _i, r, ep, mode in rounds(ctx, n):
        variant = variants[r % len(variants)]
        issued = when(variant)
        layer = rng.choice(("outer", "inner")) if mode == "relay" else "outer"
        if layer == "outer" and mode == "relay":
            client = f.sign(f.command(ep).SerializeToString())
            outer = f.relay(client, at=issued)
        else:
            client = f.sign(f.command(ep, at=issued).SerializeToString())
            outer = f.relay(client) if mode == "relay" else client
        label = variant if mode != "relay" else f"{variant}@{layer}_relay"
        yield probe(ep, f.request(ep, outer), label, _s(UNAUTH), _s(EXPIRED))


def expired(ctx: Ctx, n: int) -> Iterator[Probe]:
    skew, rng = ctx.max_skew, ctx.rng

    def when(variant: str) -> dt.datetime:
        now = commands.now()
        if variant == "just_beyond_skew":  # expire_time + skew is 1-120 s in the past
            # validity: 5 min for commands, 60 s for relays; use the shorter one
            return now - skew - dt.timedelta(minutes=5, seconds=rng.randint(1, 120))
        return now - dt.timedelta(days=rng.randint(1, 365))

    return _dated(ctx, n, ("just_beyond_skew", "long_ago"), when)


def future_dated(ctx: Ctx, n: int) -> Iterator[Probe]:
    skew, rng = ctx.max_skew, ctx.rng

    def when(variant: str) -> dt.datetime:
        now = commands.now()
        if variant == "beyond_skew":
            return now + skew + dt.timedelta(seconds=rng.randint(2, 600))
        return now + dt.timedelta(days=rng.randint(1, 365))

    return _dated(ctx, n, ("beyond_skew", "far_future"), when)


# -- wrong audience ---------------------------------------------------------------------------

HUB_AUDIENCE: Final = ("unknown_spoke", "misrouted_by_hub", "other_hub", "hub_as_audience")
DIRECT_AUDIENCE: Final = ("other_spoke", "hub_name", "foreign_resource")
RELAY_AUDIENCE: Final = (
    "relay_for_other_spoke",
    "inner_for_other_spoke",
    "spoke_verb_addressed_to_hub",
    "foreign_resource",
)


def wrong_audience(ctx: Ctx, n: int) -> Iterator[Probe]:
    f, rng = ctx.forge, ctx.rng
    for _i, r, ep, mode in rounds(ctx, n):
        verb = ep.verb or ""
        if mode == "hub":
            variant = HUB_AUDIENCE[r % len(HUB_AUDIENCE)]
            if variant == "hub_as_audience" and verb in ("list_agents", "get_queue_stats"):
                variant = "unknown_spoke"  # audience = hub is a valid fan-out for these
            if verb == "list_spokes":
                # list_spokes is the hub's: any spoke as audience is INVALID_ARGUMENT (§5)
                aud = {"hub_as_audience": SPOKE, "misrouted_by_hub": MISROUTED}.get(
                    variant, f"spoke-{ascii_token(rng, 6)}"
                )
                cmd, expect, reasons = f.command(ep, audience=aud), _s(INVALID), _s(BAD)
            elif variant == "unknown_spoke":
                cmd = f.command(ep, audience=f"spoke-{ascii_token(rng, 6)}")
                expect, reasons = _s(NOT_FOUND), _s(NO_SPOKE)
            elif variant == "other_hub":
                cmd = f.command(ep, audience=f"{HUB}-2")
                expect, reasons = _s(NOT_FOUND), _s(NO_SPOKE)
            elif variant == "misrouted_by_hub":
                # the hub's config sends spoke-2 to spoke-1's address: spoke-1 must refuse
                cmd, expect, reasons = f.command(ep, audience=MISROUTED), _s(DENIED), _s(WRONG)
            elif verb in AGENT_VERBS:
                body = f.body(verb, agent=f"spokes/spoke-{ascii_token(rng, 6)}/agents/x")
                cmd = f.command(ep, audience=HUB, body=body)
                expect, reasons = _s(NOT_FOUND), _s(NO_SPOKE)
            else:  # spawn and queue verbs need a spoke as audience
                cmd, expect, reasons = f.command(ep, audience=HUB), _s(INVALID), _s(BAD)
            yield probe(
                ep, f.request(ep, f.sign(cmd.SerializeToString())), variant, expect, reasons
            )
            continue
        names = DIRECT_AUDIENCE if mode == "direct" else RELAY_AUDIENCE
        variant = names[r % len(names)]
        other = rng.choice([MISROUTED, f"spoke-{ascii_token(rng, 6)}"])
        relay_aud = None
        if variant == "foreign_resource" and verb not in AGENT_VERBS:
            variant = "other_spoke" if mode == "direct" else "inner_for_other_spoke"
        if variant == "spoke_verb_addressed_to_hub" and verb not in SPOKE_ADDRESSED:
            variant = "inner_for_other_spoke"
        if variant in ("other_spoke", "inner_for_other_spoke"):
            cmd = f.command(ep, audience=other)
        elif variant in ("hub_name", "spoke_verb_addressed_to_hub"):
            cmd = f.command(ep, audience=HUB)
        elif variant == "foreign_resource":
            cmd = f.command(ep, body=f.body(verb, agent=f"spokes/{other}/agents/x"))
        else:  # relay_for_other_spoke
            cmd, relay_aud = f.command(ep), other
        client = f.sign(cmd.SerializeToString())
        outer = f.relay(client, audience=relay_aud) if mode == "relay" else client
        yield probe(ep, f.request(ep, outer), f"{variant}@{mode}", _s(DENIED), _s(WRONG))


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


# -- replays ----------------------------------------------------------------------------------

PRIMER_EXPECT: Final = _s(OK, NOT_FOUND, INVALID)
"""A primer is a valid command that changes nothing: reads, and verbs on missing agents or
an unknown profile (UNKNOWN_PROFILE comes after the nonce is claimed)."""
REPLAY_VALIDITY: Final = dt.timedelta(minutes=30)


def replay_pairs(ctx: Ctx, n: int) -> list[tuple[Probe, Probe]]:
    """(primer, replay): the replay is the primer's exact bytes again, or (cross_rpc) its
    envelope sent to another RPC of the same server."""
    f, rng = ctx.forge, ctx.rng
    out: list[tuple[Probe, Probe]] = []
    for _i, _r, ep, mode in rounds(ctx, n):
        body = None
        if ep.verb == "spawn_agent":
            body = f.body("spawn_agent", profile="no-such-profile")
        built = f.valid(ep, mode, body=body, validity=REPLAY_VALIDITY)
        primer = probe(ep, built.raw, f"primer@{mode}", PRIMER_EXPECT)
        same = [e for e in ctx.endpoints if e.server == ep.server and e.verb != ep.verb]
        if rng.random() < 0.15 and same:
            other = rng.choice(same)
            raw = f.request(other, built.outer)
            out.append((primer, probe(other, raw, f"cross_rpc@{mode}", _s(INVALID), _s(BAD))))
        else:
            out.append((primer, probe(ep, built.raw, f"same_rpc@{mode}", _s(UNAUTH), _s(NONCE))))
    return out


# -- probes of known gaps (not part of the pass/fail verdict) ---------------------------------

HOP_VERBS: Final = (
    "list_agents",
    "get_queue_stats",
    "list_dead_letters",
    "pause_queue",
    "resume_queue",
    "drain_queue",
)


def _hop_pairs(ctx: Ctx, n: int) -> Iterator[tuple[Endpoint, Endpoint, Built]]:
    by = ctx.by_key
    pairs = [
        (by[f"hub:{e.method}"], e)
        for e in ctx.endpoints
        if e.server == "spoke" and e.verb in HOP_VERBS and f"hub:{e.method}" in by
    ]
    for i in range(n):
        hub_ep, spoke_ep = pairs[i % len(pairs)]
        yield hub_ep, spoke_ep, ctx.forge.valid(hub_ep, "hub")


def cross_hop(ctx: Ctx, n: int) -> Iterator[Probe]:
    """A command the hub accepted and relayed, sent again straight to the spoke."""
    f = ctx.forge
    for hub_ep, spoke_ep, built in _hop_pairs(ctx, n):
        primer = probe(hub_ep, built.raw, "via_hub", _s(OK))
        raw = f.request(spoke_ep, built.client)
        yield probe(spoke_ep, raw, "direct_after_hub", _s(UNAUTH), _s(NONCE), before=primer)


def re_relay(ctx: Ctx, n: int) -> Iterator[Probe]:
    """A command the hub accepted and relayed, relayed again in a fresh hub-signed Relay."""
    f = ctx.forge
    for hub_ep, spoke_ep, built in _hop_pairs(ctx, n):
        primer = probe(hub_ep, built.raw, "via_hub", _s(OK))
        assert built.client is not None
        raw = f.request(spoke_ep, f.relay(built.client))
        yield probe(spoke_ep, raw, "fresh_relay_same_command", _s(UNAUTH), _s(NONCE), before=primer)
