"""The report's note on the design floor of a signed spawn (``floor_signed``, a floor and not
one of ours: :mod:`benchlib.floor_signed`): how much of issue 13's target this stack can reach
at all, from the run's own figures."""

from __future__ import annotations

import math
from typing import Any

from .fmt import fmt, ratio, val


def _cpu(doc: dict[str, Any], arm: str, role: str) -> float:
    return val(doc["arms"].get(arm, {}).get("cpu_us_per_op", {}).get(role))


def render(doc: dict[str, Any]) -> list[str]:
    """One bullet for the notes under issue 13's table; nothing when the arm did not run."""
    arms = doc["arms"]
    if "floor_signed" not in arms or "echo_direct" not in arms:
        return []
    floor = arms["floor_signed"]
    x = ratio(doc, "floor_signed p50 / echo p50")
    lines = [
        f"- **The design floor (`floor_signed`, a floor, not ours): {fmt(val(floor['p50']), 3)} "
        f"ms p50, {fmt(x)}x the echo; {fmt(val(floor['tput']), 0)} ops/s, "
        f"{fmt(ratio(doc, 'floor_signed throughput / echo throughput'))}x its throughput. "
        f"CPU per op: client {fmt(_cpu(doc, 'floor_signed', 'client'), 0)} µs, server "
        f"{fmt(_cpu(doc, 'floor_signed', 'server'), 0)} µs, Redis "
        f"{fmt(_cpu(doc, 'floor_signed', 'redis'), 0)} µs (the echo: client "
        f"{fmt(_cpu(doc, 'echo_direct', 'client'), 0)} µs, server "
        f"{fmt(_cpu(doc, 'echo_direct', 'server'), 0)} µs).** A bare grpc.aio server (raw "
        "bytes, spoked's event loop) doing only what a signed, stored spawn cannot avoid: "
        "parse the envelope, Ed25519 verify, one EVALSHA of a small script (nonce claim, the "
        "signed command stored) on the spoke's Redis through the pipelined connection "
        "(shared/redis_mux.py), Ed25519 sign of the reply; its client signs a fresh command "
        "and verifies the reply's signature, responder, command id and digest.",
    ]
    spawn = ratio(doc, "spawn_direct p50 / floor_signed p50")
    if not math.isnan(x) and not math.isnan(spawn):
        spoke = _cpu(doc, "spawn_direct", "spoke")
        server = _cpu(doc, "floor_signed", "server")
        tput = ratio(doc, "floor_signed throughput / echo throughput")
        lines.append(
            f"  On this stack a signed spawn cannot go below ~{fmt(x)}x the echo p50 (issue "
            f"13's aim is 1.6x, its bound 2.0x) nor above ~{fmt(tput)}x its throughput (aim "
            f"0.55x, bound 0.40x); `spawn_direct` is {fmt(spawn)}x this floor's p50, and "
            f"spoked spends {fmt(spoke, 0)} µs of CPU per spawn where the floor's server "
            f"spends {fmt(server, 0)} µs."
        )
    return lines
