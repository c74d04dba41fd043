"""hubctl synthetic-all's fixtures and shadow-summary's window, without a federation (the
verbs end to end are tests/e2e/test_modes.py)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest

from hubspoke.client import AgentState
from hubspoke.hub.cli_modes_args import window
from hubspoke.hub.synthetic_fixtures import FixtureError, load_fixtures, select


def test_the_shipped_fixtures_load_and_cover_the_states() -> None:
    fixtures = load_fixtures()
    expected = {f.expect for f in fixtures}
    assert {
        AgentState.SUCCEEDED,
        AgentState.FAILED,
        AgentState.NEEDS_INPUT,
        AgentState.NEEDS_VERIFICATION,
        AgentState.TIMED_OUT,
    } <= expected
    assert [f.name for f in select(fixtures, ["blocked"])] == ["blocked"]
    with pytest.raises(FixtureError, match="no fixture named nope"):
        select(fixtures, ["nope"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no \\[\\[fixture\\]\\] tables"),
        ("[[fixture]]\nname = 'a'\nexpect = 'SUCCEEDED'\n", "task must be"),
        ("[[fixture]]\nname = 'a'\ntask = 't'\nexpect = 'RUNNING'\n", "expect must be one of"),
        ("[[fixture]]\nname = 'a'\ntask = 't'\nexpect = 'FAILED'\ncolour = 1\n", "unknown keys"),
        ("[[fixture]]\nname = 'a b'\ntask = 't'\nexpect = 'FAILED'\n", "name must be"),
        (
            "[[fixture]]\nname = 'a'\ntask = 't'\nexpect = 'FAILED'\ntimeout_seconds = 0\n",
            "timeout_seconds",
        ),
        (
            "[[fixture]]\nname='a'\ntask='t'\nexpect='FAILED'\n" * 2,
            "names used twice: a",
        ),
        ("not toml [", "not TOML"),
    ],
)
def test_a_bad_fixture_file_is_one_line_naming_what(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "f.toml"
    path.write_text(text)
    with pytest.raises(FixtureError, match=message):
        load_fixtures(path)


def test_window_spans() -> None:
    assert window("90s") == 90
    assert window("30m") == 1800
    assert window("24h") == 86400
    assert window("7d") == 7 * 86400
    assert window("120") == 120
    for bad in ("0", "-1h", "1w", "", "h"):
        with pytest.raises(argparse.ArgumentTypeError):
            window(bad)


def test_in_window_counts_created_or_ended() -> None:
    from hubspoke.client import Agent
    from hubspoke.gen.federation.v1 import agent_pb2
    from hubspoke.hub.cli_shadow import in_window

    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(hours=1)
    old = agent_pb2.Agent(agent_id="a")
    old.create_time.FromDatetime(now - dt.timedelta(hours=3))
    assert not in_window(Agent.from_proto(old), start, now)
    old.end_time.FromDatetime(now - dt.timedelta(minutes=5))
    old.state = agent_pb2.Agent.STATE_FAILED
    assert in_window(Agent.from_proto(old), start, now)
