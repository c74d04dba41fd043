"""Approval rules in the policy (shared/policy.py): their validation names the rule, and the
rule asking for the most approvals among those that allow a spawn decides."""

from __future__ import annotations

from typing import Any

import pytest

from hubspoke.policy import Policy, PolicyConfigError, Request


def rule(name: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "principals": ["*"],
        "verbs": ["spawn"],
        "scope": "own",
        "spokes": ["*"],
    }
    return base | fields


def spawn(profile: str = "deploy", principal: str = "ci") -> Request:
    return Request(principal=principal, verb="spawn", spoke="s1", profile=profile, priority=5)


def test_the_strictest_allowing_rule_decides() -> None:
    policy = Policy.from_mapping(
        {
            "rule": [
                rule("everything", verbs=["*"], scope="any"),
                rule("deploy-two", profiles=["deploy"], approvals=2, approvers=["a", "b", "c"]),
                rule(
                    "deploy-one",
                    profiles=["deploy"],
                    approvals=1,
                    approvers=["a"],
                    approval_window_seconds=60,
                ),
            ]
        }
    )
    found = policy.approval_rule(spawn())
    assert found is not None
    assert (found.name, found.approvals, found.approvers) == (
        "deploy-two",
        2,
        frozenset({"a", "b", "c"}),
    )
    assert found.approval_window_s is None  # the spoke's approval_window_s then
    assert policy.approval_rule(spawn("pytest")) is None  # only the broad rule allows it


def test_a_rule_that_does_not_allow_the_spawn_asks_nothing() -> None:
    policy = Policy.from_mapping(
        {
            "rule": [
                rule("ci", principals=["ci"]),
                rule("others-need-one", principals=["bob"], approvals=1, approvers=["a"]),
            ]
        }
    )
    assert policy.approval_rule(spawn()) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"approvals": -1, "approvers": ["a"]}, "approvals must be a whole number"),
        ({"approvals": True, "approvers": ["a"]}, "approvals must be a whole number"),
        ({"approvals": 2, "approvers": ["a"]}, "approvals = 2 needs at least 2 approvers, got 1"),
        ({"approvals": 1}, "approvals = 1 needs at least 1 approvers, got 0"),
        ({"approvals": 1, "approvers": ["*"]}, 'approvers must name principals, not "*"'),
        ({"approvers": ["a"]}, "approvers and approval_window_seconds need approvals"),
        ({"approval_window_seconds": 5}, "approvers and approval_window_seconds need approvals"),
        (
            {"approvals": 1, "approvers": ["a"], "approval_window_seconds": 0},
            "approval_window_seconds must be positive",
        ),
        (
            {"approvals": 1, "approvers": ["a"], "verbs": ["read"]},
            "approvals apply to spawns: the rule must allow spawn",
        ),
        (
            {"approvals": 1, "approvers": [f"p{i}" for i in range(65)]},
            "at most 64 approvers",
        ),
    ],
)
def test_bad_approval_fields_name_the_rule(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyConfigError) as exc:
        Policy.from_mapping({"rule": [rule("deploys", **fields)]}, "policy.toml")
    assert "rule #1 (deploys)" in str(exc.value)
    assert message in str(exc.value)


def test_approve_and_reject_are_verbs_of_the_operate_group() -> None:
    policy = Policy.from_mapping({"rule": [rule("ops", verbs=["operate"], scope="own")]})
    for verb in ("approve", "reject"):
        assert policy.allows(Request(principal="x", verb=verb, spoke="s1"))
        # No owner scope: an own rule covers approving someone else's agent (the spoke
        # checks the approvers stored with the agent instead).
        assert policy.allows(Request(principal="x", verb=verb, spoke="s1", owner="y"))
