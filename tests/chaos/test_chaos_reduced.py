"""Issue #5 chaos scenarios at reduced scale: real SIGKILL/SIGSTOP, Redis and hubd crashes, a
partition and an overload against a real federation, judged by the agents' own ledger.

Each test asserts the issue's expectations: nothing acknowledged is lost, no duplicate run
that the retry policy does not allow, no agent process left behind, no OK answered during
an outage, and, where the issue promises it, live agents within the limit. Known defects
that the scenarios expose are reported as xfail with the evidence (see docs/reliability.md);
``scripts/chaos --scale full`` runs the same scenarios bigger.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "scripts")]

from chaoslib import ledger, scenarios  # noqa: E402 - after the path set-up above

pytestmark = pytest.mark.slow


async def _run(name: str, tmp_path: Path) -> scenarios.Outcome:
    outcome = await scenarios.run_scenario(name, scenarios.REDUCED, tmp_path)
    print(json.dumps(outcome.as_dict(), indent=1, default=str)[:6000])
    return outcome


def _expected(outcome: scenarios.Outcome, *, check_limit: bool) -> ledger.Verdict:
    """The issue's Expected line; returns the verdict for scenario-specific checks."""
    v = outcome.verdict
    assert v is not None, outcome.skipped
    assert v.acked > 0, "the stream must have been acknowledged at least once"
    assert v.lost_count == 0, f"acknowledged but lost: {v.lost}"
    assert v.duplicated_unallowed == 0, f"duplicates the policy forbids: {v.unallowed}"
    assert v.overlapping_count == 0, f"runs of one command alive at once: {v.overlapping}"
    assert v.orphans == [], "agent processes outlived the scenario"
    assert v.outage_ok == 0, f"OK answered during an outage: {v.outage_codes}"
    assert v.unfinished_count == 0, f"agents never reached a final state: {v.unfinished}"
    if check_limit:
        assert v.max_concurrent <= v.limit
    failed = [k for k, ok in outcome.expectations.items() if not ok]
    assert not failed, failed
    return v


@pytest.mark.timeout(150)
async def test_spoked_sigkill_every_10s(tmp_path: Path) -> None:
    outcome = await _run("spoked-sigkill", tmp_path)
    v = _expected(outcome, check_limit=False)
    # While no spoked runs, the hub holds spawns in its outbox (HELD) or, before it knows the
    # spoke is down, a call may still fail UNAVAILABLE; never OK from the spoke.
    assert set(v.outage_codes) <= {"UNAVAILABLE", "HELD"}
    if v.max_concurrent > v.limit:
        pytest.xfail(
            f"finding: {v.max_concurrent} agents alive with concurrency {v.limit} for "
            f"{v.over_limit_s} s: a killed spoked's agents run on until stall recovery, "
            "uncounted by its restarted successor"
        )


@pytest.mark.timeout(120)
async def test_spoke_sigstop_past_its_lease(tmp_path: Path) -> None:
    outcome = await _run("spoke-sigstop", tmp_path)
    v = _expected(outcome, check_limit=True)
    # Found by this scenario and fixed: the SIGCONTed spoked used to write its stale
    # attempt's exit over the record of the attempt another spoked was running. Every
    # worker transition is now guarded by (worker, attempt).
    assert v.misreported_count == 0, (
        f"{v.misreported} ran to success but is reported {outcome.extra['finals_of_flagged']}"
    )


@pytest.mark.timeout(90)
async def test_redis_sigkill_and_aof_restart(tmp_path: Path) -> None:
    v = _expected(await _run("redis-sigkill", tmp_path), check_limit=True)
    # Spawns in flight during a 2 s Redis outage mostly complete once it is back (the
    # spoke's Redis clients reconnect and retry; clients retry UNAVAILABLE), so few or none
    # are answered wholly inside it; those that are must not be OK (checked above).
    assert v.acked == v.sent
    assert v.duplicated == 0


@pytest.mark.timeout(90)
async def test_hubd_sigkill_with_same_command_id_resends(tmp_path: Path) -> None:
    outcome = await _run("hubd-sigkill", tmp_path)
    v = _expected(outcome, check_limit=True)
    assert v.outage_ops > 0, "no spawn fell inside the outage: the fault did not bite"
    assert v.duplicated == 0


@pytest.mark.timeout(90)
async def test_partition_via_proxy(tmp_path: Path) -> None:
    v = _expected(await _run("partition", tmp_path), check_limit=True)
    assert v.outage_ops > 0
    # Re-sends that outrun the hub's per-principal rate limit are refused RATE_LIMITED.
    # A spawn the hub holds in its outbox (the spoke unreachable) is answered HELD.
    assert set(v.outage_codes) <= {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "HELD"}
    assert v.outage_codes.get("UNAVAILABLE", 0) + v.outage_codes.get("HELD", 0) > 0
    assert v.duplicated == 0


@pytest.mark.timeout(90)
async def test_overload_10x_concurrency(tmp_path: Path) -> None:
    v = _expected(await _run("overload", tmp_path), check_limit=True)
    assert v.acked == 10 * scenarios.REDUCED.overload_concurrency
    assert v.final_states == {"SUCCEEDED": v.acked}


def test_checker_counts_what_it_claims() -> None:
    """The checker itself, on a hand-made ledger: one lost, one allowed retry, one forbidden
    rerun, one overlap, one misreport, and the live count."""
    op = ledger.ClientOp
    ops = [op("spawn", c, "ok", "OK", 0.0, 0.1) for c in ("a", "b", "c", "d", "e", "f")]
    ops.append(op("spawn", "g", "ok", "OK", 5.0, 5.5))
    ops.append(op("spawn", "g", "ok", "HELD", 5.1, 5.4))  # held in the hub's outbox: no violation
    runs = [
        ledger.Run("b", 1, 10, 1.0, 2.0, "term"),
        ledger.Run("b", 2, 11, 3.0, 4.0, "ok"),
        ledger.Run("c", 1, 12, 1.0, 2.0, "ok"),
        ledger.Run("c", 1, 13, 3.0, 4.0, "ok"),
        ledger.Run("d", 1, 14, 1.0, 3.5, "term"),
        ledger.Run("d", 2, 15, 3.0, 4.0, "ok"),
        ledger.Run("e", 1, 16, 1.0, 2.0, "ok"),
        ledger.Run("f", 1, 17, 1.5, None, None),
    ]
    finals = {
        "a": ledger.Final("a", "QUEUED"),
        "b": ledger.Final("b", "SUCCEEDED"),
        "c": ledger.Final("c", "SUCCEEDED"),
        "d": ledger.Final("d", "SUCCEEDED"),
        "e": ledger.Final("e", "FAILED", "INTERNAL"),
        "f": ledger.Final("f", "FAILED", "LOST", 1, 2.5),
        "g": ledger.Final("g", "FAILED", "LOST"),
    }
    v = ledger.check(
        ops=ops,
        runs=runs,
        finals=finals,
        retry_safe={"b": True, "c": False, "d": True},
        windows=[ledger.Window("w", 4.9, 6.0)],
        limit=3,
        horizon=10.0,
    )
    assert (v.acked, v.executed) == (7, 5)
    assert v.lost == ["a"]  # g never ran but is reported FAILED/LOST: not lost
    assert v.unfinished == ["a"]
    assert (v.duplicated, v.duplicated_allowed, v.duplicated_unallowed) == (3, 1, 2)
    assert v.unallowed == ["c", "d"]
    assert v.overlapping == ["d"]
    assert v.dup_after_success == 1
    assert v.misreported == ["e"]
    assert v.recovered_retried == 2
    assert v.recovered_lost == 1
    assert v.max_concurrent == 5  # b, c, d, e and f at t=1.5..2.0 (f ends with its record)
    assert v.outage_ok == 1
    assert v.outage_held == 1


@pytest.mark.timeout(120)
async def test_outbox_across_a_partition(tmp_path: Path) -> None:
    """Issue 11: spawns during a cut are held (HELD, never an OK from the spoke); early start
    deadlines end EXPIRED/UNDELIVERED and never run, late ones run once, a held kill reaches a
    running agent soon after the heal."""
    outcome = await _run("outbox-deadlines", tmp_path)
    v = _expected(outcome, check_limit=True)
    assert v.outage_held > 0
    assert set(v.outage_codes) <= {"HELD", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    assert v.duplicated == 0


@pytest.mark.timeout(120)
async def test_two_hubds_one_killed(tmp_path: Path) -> None:
    """Issue 11: two hubds on one Redis, one SIGKILLed mid-stream: every spawn answered,
    exactly one agent per command id."""
    v = _expected(await _run("two-hubds", tmp_path), check_limit=True)
    assert v.acked == v.sent
    assert v.duplicated == 0
