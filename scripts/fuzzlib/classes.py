"""The input classes: how each is made, and which statuses docs/protocol.md promises for it.

Every generator walks the endpoints round by round (round ``r`` gives every endpoint the
same variant), so even the reduced scale sends every variant to every RPC. SpokeService
requests go either straight from a client (``direct``) or inside a Relay signed by the hub
key (``relay``), chosen at random; in ``relay`` mode the tampering hits the relay (outer)
or the client's command inside it (inner), also at random.

The generators live by family: :mod:`fuzzlib.classes_unsigned` (broken bytes and signatures)
and :mod:`fuzzlib.classes_signed` (signed but refused, replays, hops); this module holds the
probe model, the statuses and the rounds they share.

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

import datetime as dt
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from hubspoke.trust import TrustStore

from .endpoints import Endpoint
from .forge import (
    Forge,
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


def statuses(*codes: str) -> frozenset[str]:
    return frozenset(codes)


PRIMER_EXPECT: Final = statuses(OK, NOT_FOUND, INVALID)
"""A primer is a valid command that changes nothing: reads, and verbs on missing agents or
an unknown profile (UNKNOWN_PROFILE comes after the nonce is claimed)."""
