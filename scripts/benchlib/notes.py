"""The report's prose: where targets are missed and why, and the method in brief.

Numbers are read from the run, so the text stays true when the figures move; the causes
named here were found by reading the code paths and from the per-op CPU and Redis command
counts the harness records (a profile of spoked under cProfile agreed).
"""

from __future__ import annotations

import math
from typing import Any

from . import floor_notes
from .fmt import fmt, ratio, val


def _cpu(doc: dict[str, Any], arm: str, role: str) -> float:
    spread = doc["arms"].get(arm, {}).get("cpu_us_per_op", {}).get(role)
    return val(spread)


def _sum_cpu(doc: dict[str, Any], arm: str) -> float:
    roles = doc["arms"].get(arm, {}).get("cpu_us_per_op", {})
    return sum(v for v in (val(s) for s in roles.values()) if not math.isnan(v))


def _spawn(doc: dict[str, Any]) -> list[str]:
    a = doc["arms"]
    if "spawn_direct" not in a or "echo_direct" not in a:
        return []
    cmds = val(a["spawn_direct"].get("redis_commands_per_op"))
    scripts = val(a["spawn_direct"].get("redis_scripts_per_op"))
    total = _sum_cpu(doc, "spawn_direct")
    echo_total = _sum_cpu(doc, "echo_direct")
    bound = 2e6 / total if total else math.nan
    crypto_us = 2000 * (
        val(a.get("ed25519_verify", {}).get("p50")) + val(a.get("ed25519_sign", {}).get("p50"))
    )
    rtt = val(a.get("redis_rtt", {}).get("p50"))
    echo_us = max(val(a["echo_direct"]["p50"]) * 1000, 1e-9)
    floor_x = 1 + crypto_us / echo_us + rtt * 1000 / echo_us
    return [
        f"- **Signed spawn direct: {fmt(ratio(doc, 'spawn_direct p50 / echo p50'))}x the echo "
        f"p50 (target 1.6x), {fmt(ratio(doc, 'spawn_direct throughput / echo throughput'))}x "
        "its throughput (target 0.55x).** The echo floor moves the same bytes and does nothing "
        "else. A spawn that is acknowledged only once it is stored also does four signature "
        "operations (client sign, spoke verify, spoke sign of the reply, client verify: "
        f"~{fmt(crypto_us, 0)} µs together) and one Redis round trip "
        f"(`redis_rtt` is {fmt(rtt, 3)} ms): one script that runs the admission script (the "
        "per-principal rate token and the nonce claim, shared/admission.py), then the "
        "spoke's create script (checks the id and the backlog cap, writes the record, the "
        "signed copies, the index entries), then bullmq's own `addPrioritizedJob`, each only "
        "when the step before it passed (spoke/spawn_one_trip.py, spoke/spawn_lua.py). In all "
        f"{fmt(cmds, 0)} Redis commands per spawn, {fmt(scripts, 0)} of them Lua scripts "
        "(commands inside a script count too).",
        f"- Throughput is bounded by CPU, not by waiting: client + spoke + Redis spend "
        f"{fmt(total, 0)} µs of CPU per spawn against {fmt(echo_total, 0)} µs per echo, so two "
        f"cores cannot exceed ~{fmt(bound, 0)} spawns/s however many are in flight. Most of it "
        f"is the spoke ({fmt(_cpu(doc, 'spawn_direct', 'spoke'), 0)} µs), spread over many "
        "small steps rather than one hot spot. Its Redis calls share one pipelined connection "
        "(shared/redis_mux.py: ~25-40 µs of Python per call where redis-py's pool took "
        "~90-140), and grpc.aio costs about what the whole echo server does. A py-spy "
        "profile of spoked under this arm (2026-11-30, asyncio loop: "
        "docs/bench/flame-spoked-spawn-after.svg) put 15-16% of its samples in gRPC's core "
        "threads, 27-36% in the loop's callbacks (mostly grpc.aio's), ~10% in the pipelined "
        "Redis connection and its send syscalls, Ed25519 at 67 µs to verify the command and "
        "37 µs to sign the reply, and ~2% in the canonical log line.",
        "- The floor under the target: the four signature operations alone are "
        f"~{fmt(crypto_us / echo_us, 2)}x the echo p50 and the Redis round trip "
        f"~{fmt(rtt * 1000 / echo_us, 2)}x, so the echo plus those two is already "
        f"~{fmt(floor_x, 2)}x: 1.6x leaves nothing for the spoke's own Python (checks, "
        "policy, the record, the log line) and issue 13's 2.0x leaves "
        f"~{fmt(max(2.0 - floor_x, 0.0) * echo_us, 0)} µs. For throughput, more than one "
        "spoke process per site helps (`spoked --workers N`; they share the Redis and the "
        "queue by design).",
    ]


def _hub(doc: dict[str, Any]) -> list[str]:
    if "spawn_hub" not in doc["arms"]:
        return []
    return [
        f"- **Through the hub: {fmt(ratio(doc, 'spawn_hub p50 / echo p50'))}x the echo p50 "
        f"(target 2.5x); {fmt(ratio(doc, 'spawn_hub p50 / relayed echo p50'))}x the relayed "
        "echo**, which already pays the second hop. Everything above, plus the hub's own "
        "admission (signature verify, then the rate token and nonce claim in one script on "
        "the hub's Redis), a relay signature, a second verify at the spoke (relay and client "
        "command, whose two nonces it claims in its one admission script), the hub's check "
        "of the spoke's signed reply, and its audit entry with the agent-index write. hubd "
        "makes two round trips to its Redis per relayed spawn, on one pipelined connection: "
        "its admission with the reads the call needs (membership revision, drains, outbox "
        "lookup: hub/prefetch.py), and the audit commit (hub/call_writes.py). hubd spends "
        f"{fmt(_cpu(doc, 'spawn_hub', 'hub'), 0)} µs of CPU per spawn against "
        f"{fmt(_cpu(doc, 'echo_relay', 'server'), 0)} µs for both echo processes "
        "together.",
    ]


def _running(doc: dict[str, Any]) -> list[str]:
    arm = doc["arms"].get("spawn_to_running")
    if not arm:
        return []
    parts: dict[str, list[float]] = {}
    for r in arm["rounds"]:
        for k, v in (r.get("extras") or {}).items():
            if v is not None:
                parts.setdefault(k, []).append(v)

    def med(key: str) -> str:
        values = sorted(parts.get(key, []))
        return fmt(values[len(values) // 2]) if values else "?"

    r = ratio(doc, "spawn_to_running p50 / bare Python spawn p50")
    verdict = "meets" if not math.isnan(r) and r <= 1.2 else "misses"
    return [
        f"- **Spawn-to-running: {fmt(r)}x a bare asyncio spawn of the same Python agent "
        f"(target 1.2x), so it {verdict} the target.** Median split (wall clocks, ms "
        f"resolution): {med('send_to_stored')} ms from sending the spawn to the record being "
        f"stored, {med('stored_to_exec')} ms from stored to RUNNING written (bullmq worker "
        "wake-up, `moveToActive`, record read, the STARTING transition, the supervisor's "
        "start until it reports the agent's pid on a pipe; RUNNING is written after the "
        f"exec), and {med('exec_to_ready')} ms from then to the agent's ready datagram, "
        "which is mostly the interpreter's own start-up and is the same in the floor. "
        "Python start-up dominates, "
        "which is why the ratio is small while the spoke's share is several milliseconds.",
    ]


def _kill(doc: dict[str, Any]) -> list[str]:
    arm = doc["arms"].get("kill_to_gone")
    if not arm:
        return []
    return [
        f"- **Kill-to-gone: {fmt(val(arm['p50']))} ms p50** (no target). `KillAgent` "
        "publishes the kill to whichever spoked runs the agent, then waits on the agent's "
        "event stream (`XREAD BLOCK`) and answers as soon as the final state is recorded.",
    ]


def _fanout(doc: dict[str, Any]) -> list[str]:
    fit = doc.get("fanout_fit")
    if not fit:
        return []
    slope = val(fit["slope_ms_per_spoke"])
    per_spoke = _cpu(doc, "fanout_1", "spoke")
    return [
        f"- **Status fan-out grows {fmt(slope, 2)} ms per spoke** (no target). The hub asks "
        "every spoke at once, but here all spokes, the hub and the client share two cores, so "
        "each spoke's CPU for a 10-agent page (the admission script; one script reading the "
        "time index and the page's ten records in one round trip, spoke/list_read.py; ten "
        f"record-to-proto conversions; a reply signature: {fmt(per_spoke, 0)} µs) adds up, "
        "and the client verifies one signed reply per spoke. On separate machines the slope "
        "would be the hub's and the client's per-reply cost only.",
    ]


def _scale(doc: dict[str, Any]) -> list[str]:
    scale = doc.get("scale")
    sr = doc.get("scale_ratios")
    if not scale or not scale["levels"]:
        return []
    levels = scale["levels"]
    last = levels[-1]
    lines = []
    if sr:
        lines.append(
            f"- **Backlog: at {sr['to']:,} queued, enqueue costs {fmt(sr['enqueue'])}x, pickup "
            f"{fmt(sr['pickup'])}x and status {fmt(sr['status'])}x their {sr['from']:,} cost "
            f"(target 1.1x{', met' if sr['met'] else ', missed'}).** No step on these paths "
            "scans the backlog (hash reads, O(log n) inserts into the bullmq priority set), "
            "and since issue 13 neither does the sweeper (it read every record twice per "
            "`sweep_interval_s`; now only the due part of an index of start deadlines and the "
            "held agents), but Redis itself grows: its memory (below), so more cache misses "
            "per lookup, and AOF rewrites on the same two cores. Each level is one "
            "measurement, minutes apart, not interleaved rounds; status p50 by level: "
            + ", ".join(f"{lv['agents']:,}: {fmt(lv['status']['p50_ms'])} ms" for lv in levels)
            + ". The costs that clearly grow with the backlog are memory and restart, below."
        )
    bpa = val({"median": last["bytes_per_agent"]})
    lines.append(
        f"- **Memory: ~{fmt(bpa, 0)} bytes per queued agent** (`INFO used_memory` over the "
        "agents stored). Per agent there is the record hash (~0.5 KB, in Redis's compact "
        "listpack encoding), the signed copies outside it (the envelope's size plus ~100 "
        "bytes), bullmq's job hash (~0.75 KB), index entries and a nonce key; no event stream "
        "until the agent's second event (issue 13). 1M queued agents would need about "
        f"{fmt(bpa * 1e6 / 2**30, 1)} GiB of Redis memory."
    )
    rs = last["restart"]
    lines.append(
        f"- **Restart at {last['agents']:,} queued: Redis loads its AOF in "
        f"{fmt(rs['redis_aof_load_s'])} s and spoked serves {fmt(rs['spoke_start_s'])} s "
        "later.** The start-up scan runs after the server starts and, since issue 13's third "
        "round, reads only the index of two-step writes (`federation:{spoke}:job-pending`, "
        "spoke/start_up_scan.py); the scan of every record runs once per site, after the "
        "schema 1 -> 2 migration, paced by `start_up_scan_batch` and "
        "`start_up_scan_pause_ms`. Start-up does not grow with the backlog; the AOF load does."
    )
    if scale["scale_max"] < 1_000_000:
        fill = val({"median": last["fill_per_s"]})
        minutes = 1e6 / fill / 60 if fill else math.nan
        lines.append(
            f"- **The 1M level was not run** (`--scale-max {scale['scale_max']}`): filling "
            f"runs at ~{fmt(fill, 0)} agents/s through the spoke's own storage code here, so "
            f"1M would take ~{fmt(minutes, 0)} min to fill plus the restart above. "
            "`scripts/bench --scale-max 1000000` runs it."
        )
    return lines


def _rivals(doc: dict[str, Any]) -> list[str]:
    a = doc["arms"]
    if "bullmq_add" not in a:
        return []
    return [
        "- **Rivals (no target):** bullmq-py `Queue.add` takes "
        f"{fmt(val(a['bullmq_add']['p50']), 3)} ms and Celery `apply_async` "
        f"{fmt(val(a.get('celery_apply_async', {}).get('p50')), 3)} ms on the same Redis. Both "
        "are client libraries writing straight to Redis: no service hop, no signatures, no "
        "reply, no audit record, no idempotency on a command id across restarts (bullmq's job "
        "id aside). Our spawn is bullmq's `addJob` plus everything listed above.",
    ]


HISTORY = (
    "**History.** The first full run (2026-11-22 00:38, under heavy load from other runs) "
    "measured spawn direct 8.55x echo p50 and 0.12x its throughput, through the hub 16.64x, "
    "kill-to-gone 58.24 ms, spoked start-up 82.80 s at 100k queued. The second (02:04), "
    "after the spoke's create path went from ~8 sequential Redis round trips to 2, "
    "KillAgent began waiting on the event stream and the start-up scan was pipelined and "
    "moved after serving: 5.99x, 0.19x, 13.50x, 7.51 ms and 0.39 s. Since then the rate "
    "token and the nonce claims are one admission script (one round trip fewer per request "
    "at the hub and at the spoke, two fewer for a relayed command at the spoke), `hiredis` "
    "parses Redis replies, and a signing key's id is computed once instead of per signature. "
    "Issue 13's second round (2026-11-30): one pipelined Redis connection on the spoke's and "
    "the hub's hot paths, a spoke spawn in one round trip, hubd's round trips per relayed "
    "spawn 7 -> 2, uvloop the default loop, a list page's records in one script. Its third "
    "round: a design-floor arm (`floor_signed`) that measures what this stack can reach, "
    "statuses by bare id through hubd in 2 round trips (was 3), spoked's start-up scan "
    "reading only an index of two-step writes (89 s -> 4 ms after a restart at 1M queued), "
    "the supervisor reporting the agent's pid on a pipe, one bullmq fetch in flight, the "
    "just-stored spawn handed to the worker in memory (Redis commands per started agent "
    "147 -> 124), a shorter log chain and audit entry, and a frozen start-up heap."
)


def render(doc: dict[str, Any]) -> list[str]:
    lines = ["### Where we fall short, and why", ""]
    for part in (_spawn, floor_notes.render, _hub, _running, _kill, _fanout, _scale, _rivals):
        lines += part(doc)
    lines += ["", HISTORY]
    lines += [
        "",
        "Everything ran on one machine: client, hubd, every spoked and redis-server share the "
        "cores, so CPU spent anywhere shows up as latency everywhere. Ratios are the honest "
        "comparison (the floor ran in the same round, under the same load).",
    ]
    return lines


def method(doc: dict[str, Any]) -> list[str]:
    s = doc["sizes"]
    return [
        f"- Per round: RPC arms {s['rpc_lat']} sequential ops for latency, then {s['rpc_tput']} "
        f"with {doc['options']['concurrency']} in flight for throughput; Ed25519 "
        f"{s['cpu_lat']} ops; spawn floors and spawn-to-running {s['run_lat']}; kill-to-gone "
        f"{s['kill_lat']}; fan-out {s['fan_lat']} per N. A few warm-up ops precede each arm "
        "and are not counted.",
        "- Sites: one redis-server (AOF, `appendfsync everysec`, `noeviction`) per spoke, one "
        "for the hubs. Spawn and status arms use a spoke whose bullmq queue is paused, so the "
        "agents they create stay QUEUED and no agent runs during those arms; a second spoke "
        "(concurrency 4) runs agents for spawn-to-running and kill-to-gone; `list_page` asks "
        "the paused spoke directly for the newest 10 of its backlog (issue 13's CPU per listed "
        "agent is its spoke CPU per page / 10). One hubd routes to "
        "every spoke; one hubd per fan-out N routes to N paused spokes, each holding at least "
        "10 agents.",
        "- The agent (`ready` profile) is `python -c` of a three-line program that sends one "
        "datagram to the harness and exits (or sleeps, for kill-to-gone). The bare-spawn floor "
        "runs the very same program with `asyncio.create_subprocess_exec`, so the spoke's "
        "overhead is the only difference.",
        "- Clients: the direct arms' client (`benchlib.clients.DirectClient`) builds and signs "
        "each command with the client library's code (`hubspoke.commands`) and believes a "
        "reply only after the library's own checks (`hubspoke.client._reply_check`: the "
        "spoke's signature, responder, command id, digest, result, the agent's spoke and id), "
        "as `hubspoke.client.Client` does for the hub arms. Its CPU per op (role `client`) "
        "holds, besides that Python (~20-30 µs per call) and Ed25519 (~80 µs), grpc.aio's own "
        "cost of a call, which grows with how long the answer takes: an echo held 2, 5 and "
        "10 ms by its server (another process) cost its client about 100-150, 250-330 and "
        "350-400 µs more CPU per call than an immediate one, on asyncio and uvloop alike "
        "(2026-11-30, this machine under others' load). Compare client CPU between arms of "
        "similar latency.",
        "- Limits: every spoke and hub runs its per-principal rate limiter at 10,000/s with a "
        "10,000,000-token bucket (set through `SPOKE_RATE_PER_PRINCIPAL`, `HUB_RATE_*` and "
        "the spoke config), so its Redis script is paid on every request but never refuses. "
        "Authorization uses a policy that allows the operator everything.",
        "- Durability: a spawn is acknowledged after its record and bullmq job are written to "
        "Redis with AOF `everysec` (a crash of the machine can lose the last second; a crash "
        "of Redis alone loses nothing, see PITFALLS). Celery and bullmq write to the same "
        "Redis under the same setting.",
        "- Correctness per round: every acked spawn is found exactly once (its record QUEUED "
        "and its bullmq job present, and the spoke's index grew by exactly the acked count); "
        "agents that run reach SUCCEEDED (or KILLED) on attempt 1 and report ready exactly "
        "once; reads return the agent asked for; fan-out pages are complete with no "
        "unreachable spoke; Celery messages and bullmq jobs are each found once.",
        "- Scale: backlogs are filled through `hubspoke.spoke.queue.AgentQueue.create` "
        "(the spoke's own storage code and layout, with real signed envelopes) from the "
        "harness, then measured with signed RPCs; see `scripts/benchlib/scale.py`.",
        "- Reproduce: `scripts/bench` (full run, rewrites this page), `scripts/bench --quick` "
        "(CI smoke test, no thresholds), `scripts/bench --arms spawn_direct,echo_direct "
        "--rounds 3`, `scripts/bench --scale-max 1000000`; raw JSON goes under `bench-out/`.",
    ]
