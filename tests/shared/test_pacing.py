"""hubspoke.pacing: token buckets, and how a paced stream coalesces what waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from hubspoke.pacing import Pacer, PacingConfig, TokenBucket, Treatment, WatchPacing, paced


@dataclass(frozen=True)
class Msg:
    kind: str
    n: int
    data: str = ""


TREAT = {"state": Treatment.URGENT, "progress": Treatment.LATEST, "beat": Treatment.IDLE}


def treat(m: Msg) -> Treatment:
    return TREAT.get(m.kind, Treatment.ORDERED)


def merge(a: Msg, b: Msg) -> Msg | None:
    return Msg(b.kind, b.n, a.data + b.data) if a.kind == b.kind == "out" else None


async def _source(items: list[Msg], gap_s: float = 0.0) -> AsyncIterator[Msg]:
    for item in items:
        if gap_s:
            await asyncio.sleep(gap_s)
        yield item


def _pacer(rate: float, burst: int) -> Pacer:
    return Pacer((TokenBucket(rate, burst),))


async def _collect(
    items: list[Msg], pacer: Pacer, gap_s: float = 0.0, **kw: object
) -> tuple[list[Msg], float]:
    start = time.monotonic()
    out = [m async for m in paced(_source(items, gap_s), pacer, treat, **kw)]  # type: ignore[arg-type]  # kw: merge, max_held
    return out, time.monotonic() - start


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(4.0, 2, clock=lambda: now[0])
    bucket.take()
    bucket.take()
    assert bucket.delay() == pytest.approx(0.25)
    now[0] = 0.25
    assert bucket.delay() == 0
    now[0] = 100.0
    bucket.take()
    bucket.take()
    assert bucket.delay() > 0  # never more than the burst saved


def test_a_config_needs_positive_values() -> None:
    with pytest.raises(ValueError, match="rate"):
        PacingConfig(rate=0)


async def test_a_flood_of_progress_becomes_its_newest_report_and_states_all_arrive() -> None:
    items = [Msg("state", 0)] + [Msg("progress", i) for i in range(1, 5001)] + [Msg("state", 9)]
    out, _ = await _collect(items, _pacer(20, 2))
    assert [m.n for m in out if m.kind == "state"] == [0, 9]
    assert out[-1] == Msg("state", 9)
    assert len(out) <= 4
    assert Msg("progress", 5000) in out  # the newest report is never lost


async def test_under_the_rate_nothing_is_coalesced() -> None:
    items = [Msg("state", 0)] + [Msg("progress", i) for i in range(1, 30)] + [Msg("state", 30)]
    items += [Msg("out", 31, "a"), Msg("out", 32, "b")]
    out, _ = await _collect(items, _pacer(20, 100), merge=merge)
    assert out == items


async def test_states_keep_their_place_between_progress_reports() -> None:
    items = [Msg("progress", 1), Msg("progress", 2), Msg("state", 3), Msg("progress", 4)]
    out, _ = await _collect(items, _pacer(1000, 1))
    kinds = [m.kind for m in out]
    assert kinds.index("state") > 0  # the progress before it stayed before it
    assert out[-1] == Msg("progress", 4)


async def test_output_is_merged_in_order_and_nothing_is_lost() -> None:
    items = [Msg("out", i, f"{i},") for i in range(500)] + [Msg("state", 500)]
    out, _ = await _collect(items, _pacer(20, 1), merge=merge)
    text = "".join(m.data for m in out if m.kind == "out")
    assert text == "".join(f"{i}," for i in range(500))
    assert len(out) < 10
    assert out[-1].kind == "state"


async def test_unmergeable_output_slows_the_stream_and_keeps_every_message() -> None:
    items = [Msg("out", i) for i in range(40)]
    out, took = await _collect(items, _pacer(200, 10), max_held=4)
    assert out == items
    assert took >= (40 - 10 - 1) / 200


async def test_a_stream_never_exceeds_burst_plus_rate_times_time() -> None:
    rate, burst = 50.0, 3
    items = [Msg("out" if i % 3 else "progress", i, "x") for i in range(120)]
    start = time.monotonic()
    stamps: list[float] = []
    async for _ in paced(_source(items, 0.002), _pacer(rate, burst), treat):
        stamps.append(time.monotonic() - start)
    for i, at in enumerate(stamps, start=1):
        assert i <= burst + rate * at + 1, (i, at)


async def test_heartbeats_go_only_when_nothing_waits_and_a_token_is_free() -> None:
    items = [Msg("beat", 0), Msg("out", 1), Msg("beat", 2), Msg("beat", 3)]
    out, _ = await _collect(items, _pacer(1, 1))
    assert Msg("out", 1) in out
    assert len([m for m in out if m.kind == "beat"]) <= 1


async def test_an_error_of_the_source_comes_after_what_waits() -> None:
    async def failing() -> AsyncIterator[Msg]:
        yield Msg("state", 1)
        yield Msg("out", 2)
        raise RuntimeError("spoke went away")

    got: list[Msg] = []

    async def receive() -> None:
        async for m in paced(failing(), _pacer(100, 1), treat):
            got.append(m)

    with pytest.raises(RuntimeError, match="went away"):
        await receive()
    assert got == [Msg("state", 1), Msg("out", 2)]


async def test_closing_the_stream_closes_its_source() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[Msg]:
        try:
            n = 0
            while True:
                n += 1
                yield Msg("out", n)
                await asyncio.sleep(0)
        finally:
            closed.set()

    stream = paced(endless(), _pacer(1000, 10), treat)
    assert (await anext(stream)).n == 1
    await stream.aclose()
    assert closed.is_set()


def test_a_principals_bucket_is_shared_and_forgotten_with_its_last_stream() -> None:
    pacing = WatchPacing(
        PacingConfig(rate=10, burst=5, rate_per_principal=10, burst_per_principal=2)
    )
    with pacing.stream("alice") as one, pacing.stream("alice") as two, pacing.stream("bob"):
        assert one.buckets[1] is two.buckets[1]
        assert one.buckets[0] is not two.buckets[0]
        one.take()
        two.take()
        assert one.delay() > 0  # alice's shared bucket (burst 2) is empty
        assert pacing.principals() == 2
    assert pacing.principals() == 0
