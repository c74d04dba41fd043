"""Run modes (spoke/runmode.py, spoke/modes.py): parsing, the more-cautious rule, the config
and profile keys, what shadow mode records and what synthetic mode keeps of a profile.
The end-to-end behaviour (a shadow spoke starts nothing) is tests/e2e/test_modes.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hubspoke.spoke.config import SpokeConfig, SpokeConfigError
from hubspoke.spoke.modes import ShadowPlan, shadow_plan, synthetic_stand_in
from hubspoke.spoke.profiles import Profile, ProfileConfigError, profile_from_mapping
from hubspoke.spoke.runmode import Mode, effective_mode, parse_mode


def test_parse_mode_takes_the_three_names_in_any_case() -> None:
    assert parse_mode("live") is Mode.LIVE
    assert parse_mode(" Shadow ") is Mode.SHADOW
    assert parse_mode("SYNTHETIC") is Mode.SYNTHETIC
    for bad in ("", "dry", 1, None):
        with pytest.raises(ValueError, match="live, shadow, synthetic"):
            parse_mode(bad)


@pytest.mark.parametrize(
    ("spoke", "profile", "result"),
    [
        (Mode.LIVE, None, Mode.LIVE),
        (Mode.LIVE, Mode.SHADOW, Mode.SHADOW),
        (Mode.LIVE, Mode.SYNTHETIC, Mode.SYNTHETIC),
        (Mode.SHADOW, Mode.LIVE, Mode.SHADOW),  # never live on a shadow spoke
        (Mode.SHADOW, Mode.SYNTHETIC, Mode.SHADOW),
        (Mode.SYNTHETIC, Mode.LIVE, Mode.SYNTHETIC),
        (Mode.SYNTHETIC, Mode.SHADOW, Mode.SHADOW),
    ],
)
def test_a_profile_only_makes_the_spoke_more_cautious(
    spoke: Mode, profile: Mode | None, result: Mode
) -> None:
    assert effective_mode(spoke, profile) is result


def test_the_spoke_config_mode_defaults_live_and_is_checked() -> None:
    assert SpokeConfig().run_mode is Mode.LIVE
    assert SpokeConfig(mode="Shadow").mode == "shadow"
    with pytest.raises(SpokeConfigError, match="mode must be one of"):
        SpokeConfig(mode="half")
    loaded = SpokeConfig.load(None, {"SPOKE_MODE": "synthetic"})
    assert loaded.run_mode is Mode.SYNTHETIC


def test_the_profile_key_mode() -> None:
    assert profile_from_mapping("p", {"argv": ["x"]}).mode is None
    assert profile_from_mapping("p", {"argv": ["x"], "mode": "shadow"}).mode is Mode.SHADOW
    with pytest.raises(ProfileConfigError, match="profile 'p': key 'mode'"):
        profile_from_mapping("p", {"argv": ["x"], "mode": "later"})


def test_a_shadow_plan_places_the_task_and_names_but_never_reads_secrets(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"  # a shadow plan must not even open it
    profile = Profile(
        name="deploy",
        argv=("deployer", "--", "{task}"),
        cwd="/srv/app",
        env={"REGION": "eu"},
        secrets={"TOKEN": str(missing)},
    )
    plan = shadow_plan(profile, task="release 7", agent_id="a1", attempt=1)
    assert plan.argv == ("deployer", "--", "release 7")
    assert plan.cwd == "/srv/app"
    assert {"REGION", "TOKEN", "HUBSPOKE_TASK", "HUBSPOKE_AGENT_ID"} <= set(plan.env_names)
    assert list(plan.env_names) == sorted(plan.env_names)
    assert ShadowPlan.from_json(plan.to_json()) == plan
    assert ShadowPlan.from_json("") is None
    assert ShadowPlan.from_json("[1]") is None


def test_synthetic_mode_keeps_the_limits_and_drops_the_program() -> None:
    profile = Profile(
        name="deploy",
        argv=("deployer", "--", "{task}"),
        cwd="/srv/app",
        env={"REGION": "eu"},
        secrets={"TOKEN": "/etc/token"},
        timeout_s=30.0,
        max_attempts=3,
        max_concurrency=2,
        task_pattern="[a-z ]+",
        mode=Mode.SYNTHETIC,
    )
    stand_in = synthetic_stand_in(profile)
    assert stand_in.argv == (sys.executable, "-m", "hubspoke.spoke.synthetic")
    assert stand_in.name == "deploy"
    assert (stand_in.timeout_s, stand_in.max_attempts, stand_in.max_concurrency) == (30.0, 3, 2)
    assert stand_in.task_pattern == "[a-z ]+"
    assert stand_in.cwd is None
    assert not stand_in.env
    assert not stand_in.secrets
