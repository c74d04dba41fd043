"""A reply's issue_time (spoke/wire.py ``timestamp_now``): now, to the microsecond, as
``commands.to_timestamp(commands.now())`` gave it."""

from __future__ import annotations

from hubspoke import commands
from hubspoke.spoke import wire


def test_timestamp_now_is_now_to_the_microsecond() -> None:
    before = commands.now()
    ts = wire.timestamp_now()
    after = commands.now()
    assert ts.nanos % 1000 == 0
    assert before <= commands.from_timestamp(ts) <= after
    assert commands.to_timestamp(commands.from_timestamp(ts)) == ts
