"""Default-deny authorization: which principal may use which verb on which spokes and profiles.

The policy is a TOML file of rules; a command is allowed only if some rule allows it::

    [[rule]]
    name = "ci-runs-tests"            # named in every PERMISSION_DENIED it causes
    principals = ["ci-bot"]           # peer names from the trust store, or "*"
    verbs = ["spawn", "read"]         # verbs or groups (below), or "*"
    scope = "own"                     # required: "own" (its own agents) or "any"
    spokes = ["build-1", "build-2"]   # spoke names, or "*"; an empty list matches nothing
    spoke_labels = { pool = "ci" }    # optional selector: every label must match
    profiles = ["pytest"]             # for spawn: profile names, or "*"
    max_priority = 5                  # for spawn: 1-10
    max_runtime_seconds = 1800        # for spawn: the agent's timeout
    max_attempts = 2                  # for spawn
    approvals = 2                     # for spawn: held AWAITING_APPROVAL until 2 approve
    approvers = ["alice", "bob"]      # who may approve or reject those spawns
    approval_window_seconds = 3600    # optional; else the spoke's approval_window_s (24 h)

Verbs: spawn, get, kill, list, watch, replay, verify, send, spokes, queue_stats, dead_letters,
pause, resume, drain, approve, reject, audit, outbox. Groups: ``read`` (get, list, watch,
spokes, queue_stats, dead_letters, events, outbox: the hub's held commands), ``operate``
(spawn, kill, replay, verify, send, approve, reject), ``admin`` (pause, resume, drain, audit:
reading the hub's audit log). Under scope own, audit and outbox show one's own entries only.

Approvals (spoke/approvals.py): a spawn that a rule with ``approvals = N`` allows is held
AWAITING_APPROVAL until N distinct principals of that rule's ``approvers`` (never the
requester) approve it; one reject, or the approval window closing, ends it REJECTED. When
several rules allow a spawn, the one asking for the most approvals decides (a rule without
approvals cannot waive another's). ``approve`` and ``reject`` take no owner scope: the
approvers stored with the agent are the authority, and the principal also needs a rule
allowing the verb on the spoke.

Every agent has an owner: the principal that spawned it (its record's ``issuer``; a replay
keeps it). Every rule states its ``scope``, and a rule without one is refused at start-up
with an error naming it (there is no default: docs/security.md shows the migration):

============================  ===========================  ===============================
verb                          ``own``                      ``any``
============================  ===========================  ===============================
get, kill, watch, replay,     the principal's own agents   every agent
verify, send
list, dead_letters            lists only its own agents    lists every agent
spawn, spokes, queue_stats    allowed (spawn: the new agent's owner is the principal)
pause, resume, drain          never (they act on           allowed
                              everyone's agents)
============================  ===========================  ===============================

An agent the principal may not act on is answered exactly as an unknown one (NOT_FOUND);
only the spoke, which holds the record, knows the owner, so it is the authority. Replay is
also authorized as a spawn of the agent's profile by the replaying principal (with the
record's priority, timeout and attempts), and the agent keeps its owner. Verbs of other
open issues (events, audit) will take a scope when they are added.

The hub and every spoke enforce the policy they are configured with, each for itself; the
spoke judges the original client (chain of custody), with the values it resolved (its own
default priority and the profile's timeout). There is no implicit target: a rule with no
spokes, or a selector no spoke matches, allows nothing.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import errors

VERBS = frozenset(
    {
        "spawn",
        "get",
        "kill",
        "list",
        "watch",
        "replay",
        "spokes",
        "queue_stats",
        "dead_letters",
        "pause",
        "resume",
        "drain",
        "verify",
        "send",
        "approve",
        "reject",
        "events",
        # enrolment (hub-level, admin, scope any only): hubctl spoke enroll|remove
        "enroll",
        "unenroll",
        # reading the hub's audit log (hub-level; scope own: only one's own entries)
        "audit",
        # reading the hub's outbox (hubctl outbox list; scope own: only one's own entries)
        "outbox",
    }
)
GROUPS: Mapping[str, frozenset[str]] = {
    "read": frozenset(
        {"get", "list", "watch", "spokes", "queue_stats", "dead_letters", "events", "outbox"}
    ),
    "operate": frozenset({"spawn", "kill", "replay", "verify", "send", "approve", "reject"}),
    "admin": frozenset({"pause", "resume", "drain", "audit", "enroll", "unenroll"}),
    "*": VERBS,
}
BODY_VERBS: Mapping[str, str] = {
    "spawn_agent": "spawn",
    "get_agent": "get",
    "kill_agent": "kill",
    "list_agents": "list",
    "watch_agent": "watch",
    "replay_agent": "replay",
    "list_spokes": "spokes",
    "get_queue_stats": "queue_stats",
    "list_dead_letters": "dead_letters",
    "pause_queue": "pause",
    "resume_queue": "resume",
    "drain_queue": "drain",
    # hubctl spoke drain|undrain stop or restart placements on a whole spoke: the verb drain,
    # which only a rule of scope any covers (QUEUE_WIDE_VERBS).
    "drain_spoke": "drain",
    "undrain_spoke": "drain",
    "verify_agent": "verify",
    "send_input": "send",
    "approve_agent": "approve",
    "reject_agent": "reject",
    "watch_events": "events",
    "read_audit_log": "audit",
    "list_outbox": "outbox",
    # enrolment: a token, a removal (admin verbs), the membership list (read, as spokes)
    "enroll_spoke": "enroll",
    "remove_spoke": "unenroll",
    "get_membership": "spokes",
}
"""Command body case → policy verb."""

SCOPES = frozenset({"own", "any"})
AGENT_VERBS = frozenset({"get", "kill", "watch", "replay", "verify", "send"})
"""Verbs on one agent: an ``own`` rule covers them only on the principal's own agents."""
LISTING_VERBS = frozenset({"list", "dead_letters", "events"})
"""Verbs that list agents: an ``own`` rule lets the principal list only its own agents."""
QUEUE_WIDE_VERBS = frozenset({"pause", "resume", "drain", "enroll", "unenroll"})
"""Verbs that act on everyone's agents at once, or on the federation's membership (enroll,
unenroll): only an ``any`` rule covers them."""


class PolicyConfigError(errors.ConfigError):
    """The policy file is missing or malformed."""


class PolicyDeniedError(errors.KeyNotAuthorizedError):
    """PERMISSION_DENIED / KEY_NOT_AUTHORIZED; the message (and ``rule`` metadata) says why."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    principals: frozenset[str]
    verbs: frozenset[str]
    spokes: frozenset[str]
    scope: str
    """``own`` or ``any`` (module docstring)."""
    spoke_labels: Mapping[str, str] = field(default_factory=dict)
    profiles: frozenset[str] = frozenset({"*"})
    max_priority: int = 10
    max_runtime_s: float | None = None
    max_attempts: int | None = None
    approvals: int = 0
    """For spawn: distinct approvals a spawn this rule allows waits for (0: none)."""
    approvers: frozenset[str] = frozenset()
    """Who may approve or reject those spawns (never the requester itself)."""
    approval_window_s: float | None = None
    """How long such a spawn waits for its approvals; None: the spoke's approval_window_s."""

    def covers(
        self,
        principal: str,
        verb: str,
        spoke: str | None,
        labels: Mapping[str, str],
        owner: str | None = None,
    ) -> bool:
        if verb not in self.verbs or not (principal in self.principals or "*" in self.principals):
            return False
        if self.scope != "any":
            if verb in QUEUE_WIDE_VERBS:
                return False
            if verb in AGENT_VERBS and owner is not None and owner != principal:
                return False
        if spoke is None:  # a hub-level verb (spokes): no spoke to match
            return True
        if not (spoke in self.spokes or "*" in self.spokes):
            return False
        return all(labels.get(k) == v for k, v in self.spoke_labels.items())


@dataclass(frozen=True, slots=True)
class Request:
    """What is asked, as the enforcing side sees it."""

    principal: str
    verb: str
    spoke: str | None
    spoke_labels: Mapping[str, str] = field(default_factory=dict)
    profile: str | None = None
    priority: int | None = None
    runtime_s: float | None = None
    attempts: int | None = None
    owner: str | None = None
    """For an agent verb, the agent's owner (its record's issuer). ``None`` asks only whether
    some rule of either scope lets the principal use the verb at all (a hub, which does not
    know owners, or a spoke before it has read the record): the spoke must ask again with
    the owner before it acts or answers."""


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]

    def allows(self, req: Request) -> bool:
        try:
            self.check(req)
        except PolicyDeniedError:
            return False
        return True

    def check(self, req: Request) -> Rule:
        """The first rule that allows ``req``; PolicyDeniedError naming why none does."""
        rules = self._covering(req)
        if not rules:
            raise PolicyDeniedError(
                f"no policy rule lets {req.principal} {req.verb}{_where(req)}", verb=req.verb
            )
        if req.profile is not None:
            rules = [r for r in rules if req.profile in r.profiles or "*" in r.profiles]
            if not rules:
                raise PolicyDeniedError(
                    f"no policy rule lets {req.principal} run profile {req.profile}{_where(req)}",
                    verb=req.verb,
                )
        first_problem = ""
        for r in rules:
            problem = _limit_problem(r, req)
            if not problem:
                return r
            first_problem = first_problem or problem
        raise PolicyDeniedError(first_problem, rule=rules[0].name, verb=req.verb)

    def approval_rule(self, req: Request) -> Rule | None:
        """For an allowed spawn: the rule that asks for the most approvals among those that
        allow it, or None when none asks for any (module docstring, Approvals)."""
        rules = [
            r
            for r in self._covering(req)
            if (req.profile is None or req.profile in r.profiles or "*" in r.profiles)
            and not _limit_problem(r, req)
        ]
        strictest = max(rules, key=lambda r: r.approvals, default=None)
        return strictest if strictest is not None and strictest.approvals > 0 else None

    def scope_of(self, req: Request) -> str:
        """``any`` if some rule with that scope allows ``req``, else ``own`` if some rule
        allows it, else PolicyDeniedError: how much of a listing the principal may see."""
        rule = self.check(req)
        if rule.scope == "any":
            return "any"
        wide = [r for r in self._covering(req) if r.scope == "any"]
        return "any" if Policy(tuple(wide)).allows(req) else "own"

    def _covering(self, req: Request) -> list[Rule]:
        return [
            r
            for r in self.rules
            if r.covers(req.principal, req.verb, req.spoke, req.spoke_labels, req.owner)
        ]

    @classmethod
    def from_file(cls, path: Path) -> Policy:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise PolicyConfigError(f"policy file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise PolicyConfigError(f"policy file {path} is not valid TOML: {exc}") from exc
        return cls.from_mapping(raw, str(path))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object], source: str = "policy") -> Policy:
        unknown = set(raw) - {"rule"}
        if unknown:
            raise PolicyConfigError(f"{source}: unknown keys {sorted(unknown)}")
        tables = raw.get("rule", [])
        if not isinstance(tables, list):
            raise PolicyConfigError(f"{source}: [[rule]] must be an array of tables")
        rules = tuple(_rule(t, f"{source}: rule #{i + 1}") for i, t in enumerate(tables))
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise PolicyConfigError(f"{source}: rule names must be unique")
        return cls(rules)


def _where(req: Request) -> str:
    return f" on spoke {req.spoke}" if req.spoke else ""


def _limit_problem(r: Rule, req: Request) -> str:
    if req.priority is not None and req.priority > r.max_priority:
        return f"rule {r.name!r} allows priority up to {r.max_priority}, got {req.priority}"
    if (
        r.max_runtime_s is not None
        and req.runtime_s is not None
        and req.runtime_s > r.max_runtime_s
    ):
        return (
            f"rule {r.name!r} allows a runtime up to {r.max_runtime_s:g} s, got {req.runtime_s:g} s"
        )
    if r.max_attempts is not None and req.attempts is not None and req.attempts > r.max_attempts:
        return f"rule {r.name!r} allows up to {r.max_attempts} attempts, got {req.attempts}"
    return ""


_RULE_KEYS = frozenset(
    {
        "name",
        "principals",
        "verbs",
        "spokes",
        "scope",
        "spoke_labels",
        "profiles",
        "max_priority",
        "max_runtime_seconds",
        "max_attempts",
        "approvals",
        "approvers",
        "approval_window_seconds",
    }
)


def _names(
    t: Mapping[str, object], key: str, where: str, default: Iterable[str] | None
) -> frozenset[str]:
    value = t.get(key)
    if value is None:
        if default is None:
            raise PolicyConfigError(f'{where}: {key} is required (a list; ["*"] for any)')
        return frozenset(default)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyConfigError(f"{where}: {key} must be a list of names")
    return frozenset(value)


def _rule(t: object, where: str) -> Rule:
    if not isinstance(t, dict):
        raise PolicyConfigError(f"{where} must be a table")
    unknown = set(t) - _RULE_KEYS
    if unknown:
        raise PolicyConfigError(f"{where}: unknown keys {sorted(unknown)}")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyConfigError(f"{where}: name is required")
    where = f"{where} ({name})"
    verbs: set[str] = set()
    for v in _names(t, "verbs", where, None):
        if v in GROUPS:
            verbs |= GROUPS[v]
        elif v in VERBS:
            verbs.add(v)
        else:
            raise PolicyConfigError(f"{where}: unknown verb {v!r}")
    scope = t.get("scope")
    if scope is None:
        raise PolicyConfigError(
            f'{where}: scope is required: "own" (the principal\'s own agents) or "any" '
            '(every agent); rules written before scopes existed meant "any" '
            "(docs/security.md, Scopes)"
        )
    if scope not in SCOPES:
        raise PolicyConfigError(f'{where}: scope must be "own" or "any", got {scope!r}')
    labels = t.get("spoke_labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise PolicyConfigError(f"{where}: spoke_labels must be a table of strings")
    prio = t.get("max_priority", 10)
    if not isinstance(prio, int) or not 1 <= prio <= 10:
        raise PolicyConfigError(f"{where}: max_priority must be 1-10")
    runtime = t.get("max_runtime_seconds")
    if runtime is not None and (not isinstance(runtime, int | float) or runtime <= 0):
        raise PolicyConfigError(f"{where}: max_runtime_seconds must be positive")
    attempts = t.get("max_attempts")
    if attempts is not None and (not isinstance(attempts, int) or attempts < 1):
        raise PolicyConfigError(f"{where}: max_attempts must be at least 1")
    approvals, approvers, window = _approval(t, where, verbs)
    return Rule(
        name=name,
        principals=_names(t, "principals", where, None),
        verbs=frozenset(verbs),
        spokes=_names(t, "spokes", where, None),
        scope=str(scope),
        spoke_labels=dict(labels),
        profiles=_names(t, "profiles", where, ["*"]),
        max_priority=prio,
        max_runtime_s=float(runtime) if runtime is not None else None,
        max_attempts=attempts,
        approvals=approvals,
        approvers=approvers,
        approval_window_s=window,
    )


MAX_APPROVERS = 64
"""The most approvers one rule may name (each approval's envelope is kept with the agent)."""


def _approval(
    t: Mapping[str, object], where: str, verbs: set[str]
) -> tuple[int, frozenset[str], float | None]:
    """A rule's approval fields, checked: approvals 0-64 with at least that many approvers
    (named, no "*"), only on a rule that allows spawn."""
    approvals = t.get("approvals", 0)
    if not isinstance(approvals, int) or isinstance(approvals, bool) or approvals < 0:
        raise PolicyConfigError(f"{where}: approvals must be a whole number, 0 or more")
    approvers = _names(t, "approvers", where, [])
    window = t.get("approval_window_seconds")
    if window is not None and (
        not isinstance(window, int | float) or isinstance(window, bool) or window <= 0
    ):
        raise PolicyConfigError(f"{where}: approval_window_seconds must be positive")
    if not approvals:
        if approvers or window is not None:
            raise PolicyConfigError(
                f"{where}: approvers and approval_window_seconds need approvals = N (N >= 1)"
            )
        return 0, frozenset(), None
    if "spawn" not in verbs:
        raise PolicyConfigError(f"{where}: approvals apply to spawns: the rule must allow spawn")
    if "*" in approvers:
        raise PolicyConfigError(f'{where}: approvers must name principals, not "*"')
    if len(approvers) > MAX_APPROVERS:
        raise PolicyConfigError(f"{where}: at most {MAX_APPROVERS} approvers")
    if len(approvers) < approvals:
        raise PolicyConfigError(
            f"{where}: approvals = {approvals} needs at least {approvals} approvers, "
            f"got {len(approvers)}"
        )
    return approvals, approvers, float(window) if window is not None else None


ALLOW_OPERATOR_EVERYTHING = """\
# Written by Hubspoke for a local federation: the operator may do everything.
# Policies are default-deny: anything no rule allows is refused (docs/security.md).
[[rule]]
name = "operator-all"
principals = ["operator"]
verbs = ["*"]
scope = "any"
spokes = ["*"]
profiles = ["*"]
"""
