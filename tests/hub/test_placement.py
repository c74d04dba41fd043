"""Selector placement (hub/placement.py, hub/placement_claim.py): which spokes are screened
out and why, the no-match message, and the claim-and-count script on a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest
import redis.asyncio

from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.hub.drain import DrainStore
from hubspoke.hub.health import SpokeHealth, SpokeState
from hubspoke.hub.placement import Candidate, Screened, no_match, screen
from hubspoke.hub.placement_claim import ClaimStore

LABELS = {
    "a": {"gpu": "yes"},
    "b": {"gpu": "yes"},
    "c": {"gpu": "no"},
    "d": {"gpu": "yes"},
    "e": {"gpu": "yes"},
}


def _health(
    name: str, state: SpokeState = SpokeState.READY, profile: str = "synthetic"
) -> SpokeHealth:
    status = command_pb2.SpokeStatus(spoke=name, redis_ok=True, running=3, queued=1)
    status.profiles.append(command_pb2.ProfileCapacity(profile=profile, max_concurrency=4))
    status.observe_time.FromMilliseconds(1_000)
    return SpokeHealth(
        name, state=state, detail="redis down" if state != SpokeState.READY else "", status=status
    )


def _screen(
    selector: Mapping[str, str],
    *,
    allowed: frozenset[str] = frozenset(LABELS),
    drained: Mapping[str, str] | None = None,
    health: Mapping[str, SpokeHealth] | None = None,
    profile: str = "synthetic",
) -> Screened:
    records = {n: _health(n) for n in LABELS} | dict(health or {})
    return screen(
        list(LABELS),
        labels=lambda n: LABELS[n],
        selector=selector,
        profile=profile,
        allowed=lambda n: n in allowed,
        health=records.get,
        drained=drained or {},
        circuit_open=lambda n: False,
    )


def test_each_refused_spoke_says_why_and_candidates_carry_their_numbers() -> None:
    found = _screen(
        {"gpu": "yes"},
        allowed=frozenset({"a", "b", "d", "e"}) - {"e"},
        drained={"b": "1 operator"},
        health={"d": _health("d", SpokeState.DEGRADED)},
    )
    assert found.candidates == (Candidate("a", base=4, capacity=4, observed_ms=1_000),)
    assert dict(found.refused) == {
        "b": "draining",
        "c": "label gpu=no, not yes",
        "d": "degraded (redis down)",
        "e": "policy does not allow spawning synthetic here",
    }


@pytest.mark.parametrize(
    ("selector", "kw", "missing"),
    [
        ({"gpu": "maybe"}, {}, "no spoke has labels gpu=maybe"),
        ({"zone": "a"}, {}, "no spoke has labels zone=a"),
        ({"gpu": "yes"}, {"allowed": frozenset({"c"})}, "policy allows spawning synthetic on none"),
        (
            {"gpu": "yes"},
            {"drained": dict.fromkeys("abde", "x")},
            "are all unavailable: a (draining)",
        ),
        ({"gpu": "yes"}, {"profile": "nope"}, "offers profile nope"),
    ],
)
def test_no_match_names_what_is_missing(
    selector: dict[str, str], kw: dict[str, object], missing: str
) -> None:
    found = _screen(selector, **kw)  # type: ignore[arg-type]
    assert found.candidates == ()
    assert missing in no_match(found, selector, str(kw.get("profile", "synthetic")))


@pytest.fixture
async def text_redis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_least_loaded_relative_to_size_wins_and_the_claim_sticks(
    text_redis: redis.asyncio.Redis,
) -> None:
    claims = ClaimStore(text_redis, "hub", 2.0)
    small = Candidate("small", base=1, capacity=2, observed_ms=0)  # 0.5
    large = Candidate("large", base=2, capacity=8, observed_ms=0)  # 0.25
    rehearsal = await claims.place("op", "c1", [small, large], claim_ttl_s=60, dry_run=True)
    assert (rehearsal.spoke, rehearsal.already, rehearsal.placed) == ("large", False, (0, 0))
    assert await claims.claimed("op", "c1") == ""  # a dry run claims and counts nothing
    placed = await claims.place("op", "c1", [small, large], claim_ttl_s=60, dry_run=False)
    assert placed.spoke == "large"
    assert await claims.claimed("op", "c1") == "large"
    assert await claims.claimed("other", "c1") == ""  # claims are per issuer
    # The retry goes to the claimed spoke whatever the candidates are now.
    again = await claims.place("op", "c1", [small], claim_ttl_s=60, dry_run=False)
    assert (again.spoke, again.already) == ("large", True)
    # Placements since the status count: one more on large (2+1)/8 < 1/2 takes c2 there too,
    # then (2+2)/8 ties small's 1/2 and the first in the (shuffled) order wins.
    c2 = await claims.place("op", "c2", [small, large], claim_ttl_s=60, dry_run=False)
    assert c2.spoke == "large"
    c3 = await claims.place("op", "c3", [small, large], claim_ttl_s=60, dry_run=False)
    assert (c3.spoke, c3.placed) == ("small", (0, 2))
    nxt = await claims.place("op", "c4", [large, small], claim_ttl_s=60, dry_run=True)
    assert (nxt.spoke, nxt.placed) == ("large", (2, 1))  # 4/8 < 2/2
    # A status observed after those placements already counts them: they no longer add.
    later = Candidate("large", base=5, capacity=8, observed_ms=2**50)
    assert (
        await claims.place("op", "c5", [later, small], claim_ttl_s=60, dry_run=True)
    ).placed == (0, 1)  # small's one still counts


async def test_drains_live_in_redis(text_redis: redis.asyncio.Redis) -> None:
    drains, other_hub_view = DrainStore(text_redis, "hub", 2.0), DrainStore(text_redis, "hub", 2.0)
    await drains.set("a", True, "operator")
    assert list(await other_hub_view.drained()) == ["a"]
    assert (await other_hub_view.drained())["a"].endswith(" operator")
    await drains.set("a", False, "operator")
    assert await other_hub_view.drained() == {}
