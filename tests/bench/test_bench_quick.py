"""Smoke test of the benchmark harness: ``scripts/bench.py --quick`` runs and is correct.

No performance thresholds: only that every arm produced numbers and that no acked spawn was
lost or duplicated.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARMS = {
    "echo_direct",
    "echo_relay",
    "redis_rtt",
    "floor_signed",
    "ed25519_sign",
    "ed25519_verify",
    "spawn_tiny",
    "spawn_python",
    "spawn_direct",
    "spawn_hub",
    "status_direct",
    "status_hub",
    "list_page",
    "spawn_to_running",
    "kill_to_gone",
    "fanout_1",
    "fanout_2",
    "fanout_4",
    "celery_apply_async",
    "bullmq_add",
}
THROUGHPUT_ARMS = {
    "echo_direct",
    "echo_relay",
    "redis_rtt",
    "floor_signed",
    "spawn_direct",
    "spawn_hub",
    "status_direct",
    "status_hub",
    "list_page",
    "celery_apply_async",
    "bullmq_add",
}


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _run_quick(out: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the harness stop its redis-server, spoked and hubd children.
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_measures_every_arm_without_losing_agents(tmp_path: Path) -> None:
    pytest.importorskip("celery")
    pytest.importorskip("matplotlib")
    done = _run_quick(tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]

    (results,) = tmp_path.glob("run-*/results.json")
    doc = json.loads(results.read_text())
    assert set(doc["arms"]) == ARMS
    for name, arm in doc["arms"].items():
        assert _finite(arm["p50"]["median"]), name
        assert arm["p50"]["rounds"] == 2, name
        if name in THROUGHPUT_ARMS:
            assert _finite(arm["tput"]["median"]), name
        correctness = arm["correctness"]
        assert correctness["lost"] == 0, (name, correctness)
        assert correctness["duplicates"] == 0, (name, correctness)
        assert correctness["errors"] == 0, (name, correctness)
        assert correctness["ok"] > 0, (name, correctness)

    # The design floor: every role's CPU, and its ratios to the echo and from spawn_direct.
    floor = doc["arms"]["floor_signed"]
    assert floor["kind"] == "floor"
    assert set(floor["cpu_us_per_op"]) == {"client", "server", "redis"}
    assert all(_finite(v["median"]) for v in floor["cpu_us_per_op"].values())
    ratio_names = {r["name"] for r in doc["ratios"]}
    assert {"floor_signed p50 / echo p50", "spawn_direct p50 / floor_signed p50"} <= ratio_names

    for name in ("spawn_direct", "spawn_hub", "spawn_to_running", "kill_to_gone"):
        correctness = doc["arms"][name]["correctness"]
        assert correctness["acked"] == correctness["executed"] > 0, (name, correctness)

    levels = doc["scale"]["levels"]
    assert [level["backlog"] for level in levels] == doc["sizes"]["scale"]
    for level in levels:
        for key in ("enqueue", "pickup", "status"):
            assert _finite(level[key]["p50_ms"]), (level["backlog"], key)
        assert _finite(level["bytes_per_agent"])
        assert _finite(level["restart"]["spoke_start_s"])
    for name in ("latency.png", "fanout.png", "scale.png"):
        assert (results.parent / name).stat().st_size > 0
