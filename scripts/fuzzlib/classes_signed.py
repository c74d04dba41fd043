"""The input classes that are correctly signed yet must be refused: ``malformed_signed``,
``signed_out_of_range``, ``expired``, ``future_dated``, ``wrong_audience``, the replay pairs, and
the probes of known gaps across hops (their expected statuses: :mod:`fuzzlib.classes`).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Final

from google.protobuf import duration_pb2, timestamp_pb2

from hubspoke import commands, input_text
from hubspoke.gen.federation.v1 import command_pb2

from .classes import (
    BAD,
    DENIED,
    EXPIRED,
    INVALID,
    NO_SPOKE,
    NONCE,
    NOT_FOUND,
    OK,
    PRIMER_EXPECT,
    SIG,
    UNAUTH,
    WRONG,
    Ctx,
    Probe,
    probe,
    rounds,
)
from .classes import statuses as _s
from .endpoints import Endpoint
from .federation import HUB, MISROUTED, SPOKE
from .forge import (
    AGENT_VERBS,
    HUB_ANSWERED,
    SPOKE_ADDRESSED,
    Built,
    ascii_token,
)

DRAINING_CODE: Final = "FAILED_PRECONDITION"
DRAINING: Final = "SPOKE_DRAINING"

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
    "send_input": ("agent_bad_id", "text_empty", "text_nul", "text_over_max_input_bytes"),
    "approve_agent": ("agent_bad_id", "reason_too_long"),
    "reject_agent": ("agent_bad_id", "reason_too_long"),
    "watch_events": ("feed_cursor_negative",),
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
    elif variant == "feed_cursor_negative":  # any spoke's, not only the one asked
        b["after"] = {rng.choice([SPOKE, "elsewhere"]): rng.choice([-1, -(2**62)])}
    elif variant == "reason_too_long":  # approvals: at most 1,024 characters
        b["reason"] = "r" * rng.choice([1025, 4096])
    elif variant == "text_empty":
        b["text"] = ""
    elif variant == "text_nul":
        b["text"] = "yes\x00no"
    elif variant == "text_over_max_input_bytes":  # the hub's and the spoke's default
        b["text"] = "x" * (input_text.DEFAULT_MAX_INPUT_BYTES + 1)
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
            fan_outs = ("list_agents", "get_queue_stats", "watch_events")
            if variant == "hub_as_audience" and verb in fan_outs:
                variant = "unknown_spoke"  # audience = hub is a valid fan-out for these
            if verb in HUB_ANSWERED:
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
                if verb == "spawn_agent":  # a drained spoke-2 is refused at the hub (DRAINED)
                    expect, reasons = expect | _s(DRAINING_CODE), reasons | _s(DRAINING)
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


# -- replays ----------------------------------------------------------------------------------

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
