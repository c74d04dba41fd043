"""Issue #4 adversarial suite at reduced scale (about 1/50 of ``scripts/fuzz --scale full``).

``scripts/fuzz.py --scale reduced`` runs in a subprocess against a real hub and spoke (its
own redis-server, loopback only) and writes ``summary.json``; these tests judge it. Every
negative class must be refused (0 accepted, 0 queued) with the statuses docs/protocol.md
documents; clock skew inside the window must be accepted; the servers must still serve
and their memory stay bounded. The classes between principals (issue 9, on a federation of
their own: ``scripts/fuzzlib/isolation.py``) must each meet their own pass criteria: another
owner's agents answer as unknown ids, watch caps refuse without starving anything, argv
injection is refused or harmless per profile kind, edited records end TAMPERED, a spawn
flood stops at the quota. Findings the run exposes are reported as xfail with the
evidence (docs/security.md, "Known gaps"); the run's seed is in every message, so a
failure can be replayed with ``scripts/fuzz --scale reduced --seed N``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "scripts" / "fuzz.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FINDING_CLASSES = frozenset({"signed_out_of_range"})
"""Negative classes whose documented-code check currently fails on a known bug: they are
still required to accept nothing and queue nothing."""


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fuzz-reduced")
    proc = subprocess.run(
        [sys.executable, str(FUZZ), "--scale", "reduced", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=260,
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        },
        check=False,
    )
    path = out / "summary.json"
    assert path.exists(), (
        f"scripts/fuzz.py wrote no summary (rc {proc.returncode}):\n" + (proc.stderr[-4000:])
    )
    doc: dict[str, Any] = json.loads(path.read_text())
    doc["_report"] = (out / "report.md").read_text()
    return doc


def _negatives(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in s["classes"].items() if v["kind"] == "negative"}


def _seed(s: dict[str, Any]) -> str:
    return f"(seed {s['seed']})"


def test_the_run_covered_every_class_and_every_rpc(summary: dict[str, Any]) -> None:
    want = {
        "fuzzed",
        "forged",
        "replayed",
        "replayed_after_restart",
        "expired",
        "future_dated",
        "wrong_audience",
        "unsigned",
        "oversized",
        "unknown_method",
        "malformed_signed",
        "signed_out_of_range",
    }
    negatives = _negatives(summary)
    assert want <= set(negatives)
    assert summary["scale"] == "reduced"
    assert negatives["fuzzed"]["sent"] >= 2_000
    assert negatives["forged"]["sent"] >= 200
    assert negatives["replayed"]["sent"] >= 200
    rpcs = {e.split(":", 1)[0] + ":" + e.rsplit("/", 1)[1].split()[0] for e in summary["endpoints"]}
    assert len(rpcs) == len(summary["endpoints"]) >= 23
    for name in want - {"unknown_method", "replayed", "replayed_after_restart"}:
        assert set(negatives[name]["endpoints"]) == rpcs, name
    assert set(summary["classes"]["within_skew"]["endpoints"]) == rpcs
    assert summary["without_verb"] == []


def test_no_negative_input_is_accepted_or_queued(summary: dict[str, Any]) -> None:
    for name, c in _negatives(summary).items():
        assert c["sent"] > 0, name
        assert c["accepted"] == 0, f"{name}: {c['accepted']} accepted {_seed(summary)}"
        assert c["queued"] == 0, f"{name}: {c['queued']} agents queued {_seed(summary)}"
    assert summary["queued"]["before_positive"] == 0
    assert summary["checks"]["nothing_queued_by_negative_inputs"]


def test_every_class_gets_its_documented_status(summary: dict[str, Any]) -> None:
    for name, c in _negatives(summary).items():
        if name in FINDING_CLASSES:
            continue
        assert set(c["codes"]) <= set(c["expected"]), (name, c["codes"], _seed(summary))
        assert c["unexpected"] == 0, (name, c["unexpected_samples"][:3], _seed(summary))
    n = _negatives(summary)
    assert set(n["unknown_method"]["codes"]) == {"UNIMPLEMENTED"}
    assert set(n["expired"]["reasons"]) == set(n["future_dated"]["reasons"]) == {"COMMAND_EXPIRED"}
    assert set(n["replayed_after_restart"]["reasons"]) == {"NONCE_REUSED"}
    assert n["replayed"]["reasons"]["NONCE_REUSED"] > 0
    assert "RESOURCE_EXHAUSTED" in n["oversized"]["codes"]
    spoke_audience = [
        codes for ep, codes in n["wrong_audience"]["endpoints"].items() if ep.startswith("spoke:")
    ]
    assert all(set(c) == {"PERMISSION_DENIED"} for c in spoke_audience)


def test_no_internal_error_outside_the_known_finding(summary: dict[str, Any]) -> None:
    internal = summary["totals"]["internal_or_unknown"]
    assert set(internal) <= FINDING_CLASSES, (internal, _seed(summary))
    logged = {k: v for k, v in summary["logs"]["counts"].items() if k.startswith("error:")}
    allowed = sum(internal.values())
    assert sum(logged.values()) <= allowed, (logged, summary["logs"]["samples"][:2])


def test_clock_skew_inside_the_window_is_accepted(summary: dict[str, Any]) -> None:
    c = summary["classes"]["within_skew"]
    assert c["kind"] == "positive"
    assert c["sent"] >= 2 * len(summary["endpoints"])
    assert c["codes"] == {"OK": c["sent"]}, (c["unexpected_samples"][:3], _seed(summary))
    assert c["extra"]["replies_verified"] == c["sent"]  # signed by the right peer, bound
    assert summary["queued"]["positive"] == summary["queued"]["positive_spawns_ok"] > 0


def test_replays_are_refused_after_a_restart(summary: dict[str, Any]) -> None:
    c = summary["classes"]["replayed_after_restart"]
    assert summary["restarts"]["spoke"] >= 1
    assert c["sent"] > 0
    assert c["codes"] == {"UNAUTHENTICATED": c["sent"]}
    assert summary["checks"]["replays_refused_after_restart"]


def test_servers_still_serve_and_memory_is_bounded(summary: dict[str, Any]) -> None:
    h = summary["health"]
    assert h["hub"] == h["spoke"] == h["hub_service"] == h["spoke_service"] == "SERVING"
    assert h["signed_call_after"] == "OK"
    m = summary["memory"]
    assert m["growth_mb"] < m["limit_mb"], m
    assert summary["checks"]["memory_bounded"]


def test_signed_out_of_range_values_are_invalid_argument(summary: dict[str, Any]) -> None:
    """A trusted signer's out-of-range Timestamp, Duration or page offset is
    INVALID_ARGUMENT (found by this suite as INTERNAL/UNAVAILABLE, and fixed)."""
    c = summary["classes"]["signed_out_of_range"]
    assert c["accepted"] == 0
    assert c["queued"] == 0
    bad = {v: codes for v, codes in c["variants"].items() if set(codes) != {"INVALID_ARGUMENT"}}
    assert not bad, f"{c['unexpected']} of {c['sent']} answered {c['codes']}: {bad}"


def test_a_relayed_command_cannot_be_replayed_past_the_hub(summary: dict[str, Any]) -> None:
    """The spoke claims the client's nonce of a relayed command too (found by this suite
    as accepted, and fixed): the same signed command sent straight to the spoke, or
    re-wrapped in a fresh relay by anyone holding the hub key, is refused."""
    gaps = summary["known_gaps"]
    assert set(gaps) == {"cross_hop", "re_relay"}
    accepted = {k: v["accepted"] for k, v in gaps.items()}
    assert not any(accepted.values()), f"replays across hops accepted: {accepted}"
    assert all(v["sent"] > 0 for v in gaps.values())


# -- the classes between principals (issue 9): scripts/fuzzlib/isolation.py ---------------------

ISOLATION = (
    "cross_principal",
    "watch_flood",
    "argv_injection",
    "redis_tampering",
    "quota_exhaustion",
)


def _iso(s: dict[str, Any], name: str) -> dict[str, Any]:
    c: dict[str, Any] = s["classes"][name]
    assert c["kind"] == "isolation"
    assert c["sent"] > 0, name
    assert c["unexpected"] == 0, (name, c["extra"], c["unexpected_samples"][:3], _seed(s))
    assert c["ok"]
    assert s["checks"][f"{name}_passed"]
    return c


def test_isolation_classes_ran_and_passed(summary: dict[str, Any]) -> None:
    assert set(ISOLATION) <= set(summary["classes"])
    for name in ISOLATION:
        _iso(summary, name)
    assert summary["isolation"]["health"]["signed_call_after"] == "OK"
    assert summary["isolation"]["health"]["watch_streams_open_after"] == "0"
    assert summary["isolation"]["teardown_timeouts"] == []


def test_another_principals_agents_answer_as_unknown_ids(summary: dict[str, Any]) -> None:
    """Every agent verb, through the hub, straight and relayed, on each of bob's agents in
    every state, by bare id and resource name: NOT_FOUND, word for word the answer for an id
    nobody used; bob's agents untouched; queue-wide verbs refused."""
    c = _iso(summary, "cross_principal")
    verbs = {v.split(":")[0] for v in c["variants"] if ":" in v}
    assert {"get_agent", "kill_agent", "replay_agent", "watch_agent"} <= verbs
    targets = {v.split(":")[1] for v in c["variants"] if ":" in v}
    assert targets == {"running", "finished", "failed", "queued"}
    assert c["extra"]["pairs"] >= 4 * 2 * len(verbs)
    assert c["codes"]["NOT_FOUND"] == c["extra"]["pairs"]
    assert set(c["reasons"]) == {"AGENT_NOT_FOUND"}
    assert c["extra"]["victims_untouched"] is True
    assert c["extra"]["queue_verbs_denied"] >= 3


def test_watch_floods_hit_the_caps_and_starve_nothing(summary: dict[str, Any]) -> None:
    c = _iso(summary, "watch_flood")
    caps = summary["isolation"]["caps"]
    assert c["extra"]["held_hub"] == caps["hub"][1]
    assert c["extra"]["held_spoke"] == caps["spoke"][1]
    assert c["codes"] == {"RESOURCE_EXHAUSTED": c["sent"]}
    assert {v.split("@")[1] for v in c["variants"]} == {"hub", "spoke"}
    assert c["extra"]["other_calls"] > 0


def test_argv_injection_is_refused_or_harmless_per_profile_kind(summary: dict[str, Any]) -> None:
    c = _iso(summary, "argv_injection")
    v = c["variants"]
    for kind in ("dashdash", "pattern", "stdin", "option"):
        assert any(k.startswith(f"{kind}:") for k in v), kind
    # exposed: option-like and pattern-breaking tasks refused; elsewhere only pattern-breaking
    for mode in ("hub", "direct", "relay"):
        for group in ("option", "breaking"):
            assert set(v.get(f"pattern:{group}@{mode}", {})) <= {"INVALID_ARGUMENT"}
    assert c["extra"]["ran"] > 0
    assert c["extra"]["refused"] > 0
    assert c["codes"]["INVALID_ARGUMENT"] == c["extra"]["refused"]
    assert c["queued"] == c["extra"]["ran"]


def test_tampered_records_never_run(summary: dict[str, Any]) -> None:
    c = _iso(summary, "redis_tampering")
    assert c["extra"]["tampered"] > 0
    assert c["extra"]["tampered_failed"] == c["extra"]["tampered"]
    assert c["extra"]["controls_ran"] > 0
    edits = {v.split("@")[0] for v in c["variants"]} - {"control"}
    assert edits == {"profile", "task", "timeout", "issuer", "profile_and_task"}


def test_one_principals_flood_hits_its_quota_only(summary: dict[str, Any]) -> None:
    c = _iso(summary, "quota_exhaustion")
    e = c["extra"]
    assert e["flood_accepted"] == e["flood_stored"] == e["quota"]
    assert c["reasons"]["QUOTA_EXCEEDED"] > 0
    assert e["other_principal_ok"] == 3
