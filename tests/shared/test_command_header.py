"""A command's header as ``commands.build_command`` writes it, and the client's Timestamp
conversion: the fast paths (issue 13, the caller's CPU per call) write and read exactly what
the ``uuid``/``datetime``/protobuf helpers they replace did."""

from __future__ import annotations

import datetime as dt
import random
import uuid

import pytest
from google.protobuf import timestamp_pb2

from hubspoke import commands
from hubspoke.client._types import _time


def test_a_new_command_id_is_a_random_uuid4_in_its_usual_text() -> None:
    ids = [commands.new_command_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
        commands.check_command_id(text)


@pytest.mark.parametrize(
    "at",
    [
        dt.datetime(2026, 11, 30, 11, 42, 7, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 30, 13, 42, 7, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(2026, 11, 30, 11, 42, 7, 999999),  # naive: taken as UTC, as FromDatetime does
        dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=dt.UTC),
    ],
)
def test_the_times_of_a_command_built_at_a_given_instant(at: dt.datetime) -> None:
    validity = dt.timedelta(minutes=7, microseconds=3)
    cmd = commands.build_command(issuer="operator", audience="spoke-1", validity=validity, at=at)
    assert cmd.issue_time == commands.to_timestamp(at)
    assert cmd.expire_time == commands.to_timestamp(at + validity)


def test_a_command_built_now_is_issued_now_and_valid_for_its_window() -> None:
    before = dt.datetime.now(dt.UTC)
    cmd = commands.build_command(issuer="operator", audience="spoke-1")
    after = dt.datetime.now(dt.UTC)
    issued = commands.from_timestamp(cmd.issue_time)
    assert before - dt.timedelta(microseconds=1) <= issued <= after
    assert cmd.issue_time.nanos % 1000 == 0  # microseconds, as a datetime has
    assert commands.from_timestamp(cmd.expire_time) - issued == commands.DEFAULT_VALIDITY
    commands.check_window(cmd.issue_time, cmd.expire_time, cmd.nonce, commands.Window())


def test_the_client_reads_a_timestamp_as_todatetime_does() -> None:
    rng = random.Random(13)
    lo, hi = -62_135_596_800, 253_402_300_799
    cases = [(0, 0), (1, 999), (-1, 1), (lo, 0), (hi, 999_999_999), (1_764_460_800, 123_456_789)]
    cases += [(rng.randint(lo, hi), rng.randint(0, 999_999_999)) for _ in range(5000)]
    for seconds, nanos in cases:
        ts = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
        got, want = _time(ts, True), ts.ToDatetime(tzinfo=dt.UTC)
        assert (got, got and got.tzinfo) == (want, want.tzinfo), (seconds, nanos)
    assert _time(timestamp_pb2.Timestamp(seconds=5), False) is None
    for seconds, nanos in ((lo - 1, 0), (hi + 1, 0), (0, -1), (0, 1_000_000_000)):
        with pytest.raises(ValueError, match="Timestamp is not valid"):
            _time(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos), True)
