"""The default-deny policy: matching, limits, groups, selectors, and clear denials."""

from __future__ import annotations

import pytest

from hubspoke.policy import Policy, PolicyConfigError, PolicyDeniedError, Request

POLICY = Policy.from_mapping(
    {
        "rule": [
            {
                "name": "ci",
                "principals": ["ci-bot"],
                "verbs": ["spawn", "read"],
                "spokes": ["build-1", "build-2"],
                "scope": "any",
                "profiles": ["pytest"],
                "max_priority": 5,
                "max_runtime_seconds": 600,
                "max_attempts": 2,
            },
            {
                "name": "gpu-team",
                "principals": ["alice"],
                "verbs": ["operate"],
                "spokes": ["*"],
                "scope": "any",
                "spoke_labels": {"gpu": "yes"},
            },
            {"name": "nobody", "principals": ["*"], "verbs": ["*"], "spokes": [], "scope": "any"},
        ]
    }
)


def spawn(**kw: object) -> Request:
    base: dict[str, object] = {
        "principal": "ci-bot",
        "verb": "spawn",
        "spoke": "build-1",
        "profile": "pytest",
        "priority": 5,
        "runtime_s": 600.0,
        "attempts": 2,
    }
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


def test_allowed_within_limits() -> None:
    assert POLICY.check(spawn()).name == "ci"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (spawn(principal="mallory"), "no policy rule lets mallory spawn on spoke build-1"),
        (spawn(spoke="gpu-1"), "no policy rule lets ci-bot spawn on spoke gpu-1"),
        (spawn(verb="kill"), "no policy rule lets ci-bot kill"),
        (spawn(profile="claude"), "run profile claude"),
        (spawn(priority=9), "rule 'ci' allows priority up to 5, got 9"),
        (spawn(runtime_s=601.0), "rule 'ci' allows a runtime up to 600 s"),
        (spawn(attempts=3), "rule 'ci' allows up to 2 attempts"),
    ],
)
def test_denials_name_what_failed(request_: Request, message: str) -> None:
    with pytest.raises(PolicyDeniedError, match=message) as err:
        POLICY.check(request_)
    assert err.value.code.name == "PERMISSION_DENIED"
    assert err.value.reason == "KEY_NOT_AUTHORIZED"


def test_groups_expand() -> None:
    assert POLICY.allows(Request("ci-bot", "watch", "build-2"))
    assert not POLICY.allows(Request("ci-bot", "drain", "build-2"))


def test_label_selector_must_match_every_label() -> None:
    assert POLICY.allows(Request("alice", "kill", "any", {"gpu": "yes", "zone": "a"}))
    assert not POLICY.allows(Request("alice", "kill", "any", {"gpu": "no"}))
    assert not POLICY.allows(Request("alice", "kill", "any", {}))


def test_an_empty_spoke_list_allows_nothing() -> None:
    assert not POLICY.allows(Request("anyone", "get", "build-1"))


def test_empty_policy_denies_everything() -> None:
    assert not Policy.from_mapping({}).allows(Request("operator", "get", "s"))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"name": "x", "verbs": ["get"], "spokes": ["*"], "scope": "any"},
            "principals is required",
        ),
        (
            {"name": "x", "principals": ["a"], "verbs": ["fly"], "spokes": ["*"], "scope": "any"},
            "unknown verb",
        ),
        (
            {"name": "x", "principals": ["a"], "verbs": ["get"], "scope": "any"},
            "spokes is required",
        ),
        (
            {"principals": ["a"], "verbs": ["get"], "spokes": ["*"], "scope": "any"},
            "name is required",
        ),
        (
            {
                "name": "x",
                "principals": ["a"],
                "verbs": ["get"],
                "spokes": ["*"],
                "scope": "any",
                "max_priority": 11,
            },
            "max_priority",
        ),
        (
            {
                "name": "x",
                "principals": ["a"],
                "verbs": ["get"],
                "spokes": ["*"],
                "scope": "any",
                "bogus": 1,
            },
            "unknown keys",
        ),
    ],
)
def test_bad_rules_fail_with_one_clear_line(table: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyConfigError, match=message):
        Policy.from_mapping({"rule": [table]})


# -- scopes: every agent has an owner (issue 9) -------------------------------------------------

SCOPED = Policy.from_mapping(
    {
        "rule": [
            {
                "name": "team",
                "principals": ["alice", "bob"],
                "verbs": ["*"],
                "spokes": ["*"],
                "scope": "own",
            },
            {
                "name": "ops",
                "principals": ["operator"],
                "verbs": ["*"],
                "spokes": ["*"],
                "scope": "any",
            },
            {
                "name": "auditor-reads",
                "principals": ["auditor"],
                "verbs": ["read"],
                "spokes": ["*"],
                "scope": "any",
            },
        ]
    }
)


@pytest.mark.parametrize("verb", ["get", "kill", "watch", "replay"])
def test_own_scope_covers_only_the_principals_agents(verb: str) -> None:
    assert SCOPED.allows(Request("alice", verb, "s", owner="alice"))
    assert not SCOPED.allows(Request("alice", verb, "s", owner="bob"))
    assert SCOPED.allows(Request("operator", verb, "s", owner="bob"))
    # Before the owner is known, only the verb itself is judged (the spoke asks again).
    assert SCOPED.allows(Request("alice", verb, "s"))


def test_queue_wide_verbs_need_any() -> None:
    for verb in ("pause", "resume", "drain"):
        assert not SCOPED.allows(Request("alice", verb, "s"))
        assert SCOPED.allows(Request("operator", verb, "s"))
    for verb in ("spawn", "queue_stats", "spokes", "list", "dead_letters"):
        assert SCOPED.allows(Request("alice", verb, "s"))


def test_scope_of_a_listing() -> None:
    assert SCOPED.scope_of(Request("alice", "list", "s")) == "own"
    assert SCOPED.scope_of(Request("operator", "list", "s")) == "any"
    assert SCOPED.scope_of(Request("auditor", "dead_letters", "s")) == "any"
    with pytest.raises(PolicyDeniedError):
        SCOPED.scope_of(Request("mallory", "list", "s"))


def test_an_any_rule_after_an_own_rule_still_widens() -> None:
    both = Policy.from_mapping(
        {
            "rule": [
                {
                    "name": "mine",
                    "principals": ["a"],
                    "verbs": ["*"],
                    "spokes": ["*"],
                    "scope": "own",
                },
                {
                    "name": "read-all",
                    "principals": ["a"],
                    "verbs": ["get", "list"],
                    "spokes": ["s"],
                    "scope": "any",
                },
            ]
        }
    )
    assert both.scope_of(Request("a", "list", "s")) == "any"
    assert both.scope_of(Request("a", "list", "t")) == "own"
    assert both.allows(Request("a", "get", "s", owner="b"))
    assert not both.allows(Request("a", "kill", "s", owner="b"))


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        (None, r"rule #1 \(legacy\): scope is required: \"own\" .* or \"any\""),
        ("everyone", r"rule #1 \(legacy\): scope must be \"own\" or \"any\""),
    ],
)
def test_a_rule_without_a_valid_scope_is_refused_by_name(scope: str | None, message: str) -> None:
    table: dict[str, object] = {
        "name": "legacy",
        "principals": ["a"],
        "verbs": ["*"],
        "spokes": ["*"],
    }
    if scope is not None:
        table["scope"] = scope
    with pytest.raises(PolicyConfigError, match=message):
        Policy.from_mapping({"rule": [table]})
