"""One adversarial run: every class against a live hub and spoke, then the verdict.

Order: warm-up → the negative classes → replay primers, their replays, a restart of spoked
and hubd on the same Redis, the replays again → known-gap probes → the one positive class
(clock skew inside the window, :mod:`fuzzlib.skew`) → health, a signed call, memory, queued
agents → the classes between principals on a federation of their own
(:mod:`fuzzlib.isolation`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import faulthandler
import gc
import json
import logging
import os
import platform
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from . import classes as C
from . import classes_signed as CS
from . import classes_unsigned as CU
from . import federation, isolation, skew
from .endpoints import discover
from .forge import Forge
from .runner import Runner, hwm_mb, rss_mb, trimmed_rss_mb


@dataclass(frozen=True, slots=True)
class Scale:
    name: str
    counts: dict[str, int]
    after_restart: int
    concurrency: int = 32
    memory_limit_mb: float = 150.0


FULL_COUNTS: Final = {
    "unknown_method": 2_000,
    "unsigned": 2_000,
    "forged": 10_000,
    "expired": 2_000,
    "future_dated": 2_000,
    "wrong_audience": 2_000,
    "malformed_signed": 5_000,
    "signed_out_of_range": 1_000,
    "fuzzed": 100_000,
    "oversized": 200,
    "replayed": 10_000,
    "cross_hop": 300,
    "re_relay": 300,
}
VARIANTS: Final = {
    "unknown_method": len(CU.UNKNOWN_METHOD),
    "unsigned": len(CU.UNSIGNED),
    "forged": len(CU.FORGED),
    "expired": 2,
    "future_dated": 2,
    "wrong_audience": max(len(CS.HUB_AUDIENCE), len(CS.RELAY_AUDIENCE)),
    "malformed_signed": len(CS.MALFORMED_HEADER) + max(len(v) for v in CS.MALFORMED_BODY.values()),
    "signed_out_of_range": len(CS.OUT_OF_RANGE),
    "oversized": len(CU.OVERSIZED),
}
"""Rounds the reduced scale needs so that every endpoint meets every variant."""


def scale(name: str, endpoints: int) -> Scale:
    if name == "full":
        return Scale("full", dict(FULL_COUNTS), after_restart=1_000)
    counts = {k: max(v // 50, VARIANTS.get(k, 0) * endpoints) for k, v in FULL_COUNTS.items()}
    counts["cross_hop"] = counts["re_relay"] = 12
    return Scale("reduced", counts, after_restart=2 * endpoints)


NEGATIVE: Final[
    list[tuple[str, Callable[[C.Ctx, int], Iterator[C.Probe]], frozenset[str], str]]
] = [
    (
        "unknown_method",
        CU.unknown_method,
        frozenset({C.UNIMPLEMENTED}),
        "no such method or service",
    ),
    (
        "unsigned",
        CU.unsigned,
        frozenset({C.UNAUTH, C.INVALID}),
        "no signature, empty/short/long signature or key id, no envelope, > 4 signatures",
    ),
    (
        "forged",
        CU.forged,
        frozenset({C.UNAUTH, C.INVALID}),
        "bit flips in payload/payload_type/sig/key-id fingerprint, unknown key, unknown key id, "
        "trusted key id with another key's signature, wrong role",
    ),
    ("expired", CS.expired, frozenset({C.UNAUTH}), "expired beyond the skew, or long ago"),
    (
        "future_dated",
        CS.future_dated,
        frozenset({C.UNAUTH}),
        "issued further ahead than the skew allows",
    ),
    (
        "wrong_audience",
        CS.wrong_audience,
        frozenset({C.DENIED, C.NOT_FOUND, C.INVALID}),
        "for another spoke or hub, misrouted by the hub, foreign resource names",
    ),
    (
        "malformed_signed",
        CS.malformed_signed,
        CS.MALFORMED_EXPECT,
        "correctly signed by a trusted client, one header or body field broken",
    ),
    (
        "signed_out_of_range",
        CS.signed_out_of_range,
        frozenset({C.INVALID}),
        "correctly signed; times, nanos, durations or page offsets outside what the server "
        "can represent",
    ),
    (
        "fuzzed",
        CU.fuzzed,
        CU.FUZZ_EXPECT,
        "random bytes, empty, truncated and mutated valid requests, well-framed garbage, "
        "signed garbage",
    ),
    (
        "oversized",
        CU.oversized,
        frozenset({C.EXHAUSTED, C.INVALID}),
        "over max_message_bytes (raw and signed), tasks over max_task_bytes",
    ),
]


# -- logs ---------------------------------------------------------------------------------------


class LogCapture(logging.Handler):
    """Count every warning and error the servers log (structlog and stdlib) instead of
    printing 100,000 lines; keep a few with their tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.samples: list[dict[str, str]] = []

    def install(self) -> None:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.format_exc_info,
                self._structlog,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            cache_logger_on_first_use=True,
        )
        logging.getLogger().addHandler(self)

    def _structlog(self, _logger: Any, method: str, event: dict[str, Any]) -> Any:
        self._count(f"{method}:{event.get('event')}", event)
        raise structlog.DropEvent

    def emit(self, record: logging.LogRecord) -> None:
        self._count(f"{record.levelname.lower()}:{record.name}", {"event": record.getMessage()})

    def _count(self, key: str, event: dict[str, Any]) -> None:
        self.counts[key] += 1
        if len(self.samples) < 10:
            self.samples.append({k: str(v)[:1500] for k, v in event.items()})


# -- helpers ------------------------------------------------------------------------------------


async def _valid_call(ctx: C.Ctx, runner: Runner, server: str, verb: str, mode: str) -> str:
    ep = next(e for e in ctx.endpoints if e.server == server and e.verb == verb)
    o = await runner.call(C.probe(ep, ctx.forge.valid(ep, mode).raw, "valid", frozenset()))
    return o.code


async def _until_ok(ctx: C.Ctx, runner: Runner, within_s: float = 20) -> str:
    """After a restart: a valid relayed call answers OK (hub → spoke channel back up)."""
    deadline = time.monotonic() + within_s
    code = ""
    while time.monotonic() < deadline:
        code = await _valid_call(ctx, runner, "hub", "get_queue_stats", "hub")
        if code == C.OK:
            return code
        await asyncio.sleep(0.2)
    return code


def _env() -> dict[str, Any]:
    import importlib.metadata as md

    return {
        "python": platform.python_version(),
        "grpcio": md.version("grpcio"),
        "protobuf": md.version("protobuf"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


# -- the run ------------------------------------------------------------------------------------


async def run(
    scale_name: str,
    out: Path,
    *,
    redis_url: str | None = None,
    seed: int | None = None,
    concurrency: int | None = None,
) -> dict[str, Any]:
    capture = LogCapture()
    capture.install()
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    rng = random.Random(seed)  # noqa: S311 - reproducible inputs, not secrets
    endpoints = discover()
    sc = scale(scale_name, len(endpoints))
    started = time.monotonic()
    phases: dict[str, float] = {}
    mark = time.monotonic()
    fed = await federation.start(out / "work", redis_url)
    phases["start"] = time.monotonic() - mark
    try:
        forge = Forge(fed.keys, rng)
        ctx = C.Ctx(
            forge=forge,
            endpoints=endpoints,
            rng=rng,
            max_message_bytes=fed.spoke_config.max_message_bytes,
            max_task_bytes=fed.spoke_config.max_task_bytes,
            max_skew=dt.timedelta(seconds=fed.spoke_config.max_skew_s),
            trust=fed.trust,
        )
        runner = Runner(fed, concurrency or sc.concurrency)
        for server, mode in (("hub", "hub"), ("spoke", "direct"), ("spoke", "relay")):
            for verb in ("list_agents", "get_queue_stats"):
                await _valid_call(ctx, runner, server, verb, mode)
        gc.collect()
        rss_start, redis_start = rss_mb(), await fed.redis_memory()
        trimmed_start = trimmed_rss_mb()

        for name, gen, expected, doc in NEGATIVE:
            n = sc.counts[name]
            conc = 4 if name == "oversized" else None
            await runner.run(name, "negative", expected, gen(ctx, n), doc=doc, concurrency=conc)

        pairs = CS.replay_pairs(ctx, sc.counts["replayed"])
        await runner.run(
            "replay_primers",
            "primer",
            C.PRIMER_EXPECT,
            (p for p, _ in pairs),
            doc="valid commands that change nothing, sent once so that they can be replayed",
        )
        await runner.run(
            "replayed",
            "negative",
            frozenset({C.UNAUTH, C.INVALID}),
            (r for _, r in pairs),
            doc="the same signed request again (same RPC), or its envelope to another RPC",
        )
        mark = time.monotonic()
        await fed.restart_spoke()
        await fed.restart_hub()
        after_restart_ready = await _until_ok(ctx, runner)
        phases["restart"] = time.monotonic() - mark
        same = [r for _, r in pairs if r.variant.startswith("same_rpc")]
        step = max(1, len(same) // sc.after_restart)
        await runner.run(
            "replayed_after_restart",
            "negative",
            frozenset({C.UNAUTH}),
            same[::step][: sc.after_restart],
            doc="replays sent again after spoked and hubd restarted on the same Redis",
        )
        del pairs, same

        await runner.run(
            "cross_hop",
            "probe",
            frozenset({C.UNAUTH}),
            CS.cross_hop(ctx, sc.counts["cross_hop"]),
            doc="known gap: a command the hub relayed, sent again straight to the spoke",
            concurrency=1,
        )
        await runner.run(
            "re_relay",
            "probe",
            frozenset({C.UNAUTH}),
            CS.re_relay(ctx, sc.counts["re_relay"]),
            doc="known gap: a command the hub relayed, wrapped in a fresh hub-signed relay",
            concurrency=1,
        )
        resumed = await _valid_call(ctx, runner, "hub", "resume_queue", "hub")
        queued_before_positive = await fed.agent_count()

        try:
            async with asyncio.timeout(POSITIVE_LIMIT_S):
                positive = await skew.within_skew(ctx, runner, fed)
        except TimeoutError:
            _dump_tasks()
            positive = runner.stats["within_skew"]
            positive.unexpected += 1
            positive.extra["timed_out_after_s"] = POSITIVE_LIMIT_S
        spawned = sum(
            positive.endpoints.get(e.key, Counter())[C.OK]
            for e in endpoints
            if e.verb == "spawn_agent"
        )

        health = {
            "hub": await fed.health("hub"),
            "hub_service": await fed.health("hub", "federation.v1.HubService"),
            "spoke": await fed.health("spoke"),
            "spoke_service": await fed.health("spoke", "federation.v1.SpokeService"),
            "signed_call_after": await _valid_call(ctx, runner, "hub", "list_agents", "hub"),
            "resume_before_positive": resumed,
            "ready_after_restart": after_restart_ready,
        }
        gc.collect()
        rss_end = rss_mb()
        trimmed_end = trimmed_rss_mb()
        redis_end = await fed.redis_memory()
        final_agents = await fed.agent_count()
    finally:
        mark = time.monotonic()
        await fed.close()
        phases["stop"] = time.monotonic() - mark

    # The classes between principals (issue 9) run on a federation of their own: limited
    # principals, one profile per task placement kind, low watch caps and a quota.
    mark = time.monotonic()
    iso_stats, iso = await isolation.run_isolation(
        sc.name, out / "tenants", rng, endpoints, runner.concurrency
    )
    phases["isolation"] = time.monotonic() - mark
    stats = {**runner.stats, **iso_stats}
    negatives = [s for s in stats.values() if s.kind == "negative"]
    growth = rss_end - rss_start
    internal = {
        s.name: s.codes["INTERNAL"] + s.codes["UNKNOWN"]
        for s in negatives
        if s.codes["INTERNAL"] + s.codes["UNKNOWN"]
    }
    checks = {
        "negative_inputs_accepted_zero": all(s.accepted == 0 for s in negatives),
        "negative_inputs_answered_documented_codes": all(s.unexpected == 0 for s in negatives),
        "no_internal_or_unknown": not internal,
        "nothing_queued_by_negative_inputs": queued_before_positive == 0
        and all(s.queued_delta == 0 for s in negatives),
        "within_skew_accepted": positive.sent > 0 and positive.unexpected == 0,
        "positive_queued_only_its_spawns": final_agents
        == queued_before_positive + positive.queued_delta
        and positive.queued_delta == spawned,
        "servers_healthy_after": health["hub"] == health["spoke"] == "SERVING"
        and health["signed_call_after"] == C.OK,
        "replays_refused_after_restart": fed.restarts["spoke"] >= 1
        and stats["replayed_after_restart"].sent > 0
        and stats["replayed_after_restart"].ok,
        "memory_bounded": growth < sc.memory_limit_mb,
        **{f"{name}_passed": s.sent > 0 and s.ok for name, s in iso_stats.items()},
        "isolation_signed_call_after": iso["health"].get("signed_call_after") == C.OK,
    }
    summary: dict[str, Any] = {
        "scale": sc.name,
        "seed": seed,
        "passed": all(checks.values()),
        "checks": checks,
        "failures": [k for k, v in checks.items() if not v],
        "duration_s": round(time.monotonic() - started, 1),
        "environment": _env(),
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "config": {
            "concurrency": runner.concurrency,
            "max_message_bytes": ctx.max_message_bytes,
            "max_task_bytes": ctx.max_task_bytes,
            "max_skew_s": ctx.max_skew.total_seconds(),
            "rate_per_principal": federation.RATE,
            "counts": sc.counts,
            "after_restart": sc.after_restart,
        },
        "endpoints": [
            f"{e.server}:{e.path}" + (" (stream)" if e.streaming else "") for e in endpoints
        ],
        "without_verb": [e.key for e in endpoints if e.verb is None],
        "totals": {
            "sent": sum(s.sent for s in stats.values()),
            "negative_sent": sum(s.sent for s in negatives),
            "negative_accepted": sum(s.accepted for s in negatives),
            "internal_or_unknown": internal,
        },
        "queued": {
            "before_positive": queued_before_positive,
            "positive": positive.queued_delta,
            "positive_spawns_ok": spawned,
            "final": final_agents,
        },
        "memory": {
            "rss_start_mb": round(rss_start, 1),
            "rss_end_mb": round(rss_end, 1),
            "growth_mb": round(growth, 1),
            "limit_mb": sc.memory_limit_mb,
            "peak_rss_mb": round(hwm_mb(), 1),
            "growth_before_oversized_mb": round(stats["oversized"].rss_before_mb - rss_start, 1),
            "trimmed_start_mb": round(trimmed_start, 1),
            "trimmed_end_mb": round(trimmed_end, 1),
            "trimmed_growth_mb": round(trimmed_end - trimmed_start, 1),
            "redis_start": redis_start,
            "redis_end": redis_end,
        },
        "health": health,
        "restarts": dict(fed.restarts),
        "teardown_timeouts": fed.teardown_timeouts,
        "skipped": dict(ctx.skipped),
        "logs": {"counts": dict(capture.counts.most_common()), "samples": capture.samples},
        "known_gaps": {
            s.name: {"sent": s.sent, "accepted": s.accepted, "codes": dict(s.codes), "doc": s.doc}
            for s in stats.values()
            if s.kind == "probe"
        },
        "classes": {name: s.as_dict() for name, s in stats.items()},
        "isolation": iso,
    }
    return summary


def write(summary: dict[str, Any], out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "report.md").write_text(table(summary))


def _codes(codes: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in codes.items())


def table(summary: dict[str, Any]) -> str:
    rows = [
        f"# scripts/fuzz --scale {summary['scale']} (seed {summary['seed']}, "
        f"{summary['duration_s']} s): {'PASS' if summary['passed'] else 'FAIL'}",
        "",
        "| class | kind | sent | accepted | queued | unexpected | codes |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, c in summary["classes"].items():
        mark = "" if c["ok"] else " **FAIL**"
        rows.append(
            f"| {name}{mark} | {c['kind']} | {c['sent']} | {c['accepted']} | {c['queued']} | "
            f"{c['unexpected']} | {_codes(c['codes'])} |"
        )
    m = summary["memory"]
    rows += [
        "",
        f"memory: RSS {m['rss_start_mb']} → {m['rss_end_mb']} MB (growth {m['growth_mb']} MB, "
        f"limit {m['limit_mb']}; {m['growth_before_oversized_mb']} MB of it before the "
        f"oversized class), peak {m['peak_rss_mb']} MB; after malloc_trim "
        f"{m['trimmed_start_mb']} → {m['trimmed_end_mb']} MB; Redis keys "
        f"{m['redis_start']['keys']} → {m['redis_end']['keys']}",
        f"health after: {summary['health']}",
        f"queued: {summary['queued']}",
        f"checks: {summary['checks']}",
    ]
    if summary["failures"]:
        rows.append(f"FAILED: {', '.join(summary['failures'])}")
    for name, c in summary["classes"].items():
        for s in c["unexpected_samples"][:3]:
            rows.append(f"- {name} unexpected: {json.dumps(s)[:400]}")
    return "\n".join(rows) + "\n"


POSITIVE_LIMIT_S: Final = 240.0
"""The positive class waits for real agents; a stuck one must not hang the whole run."""
WATCHDOG_S: Final = {"full": 1800, "reduced": 400}
"""Last resort: dump every thread's stack and exit if a run takes this long."""


def _dump_tasks() -> None:
    """``kill -USR1 <pid>``: print every asyncio task's stack (a hung run shows where)."""
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=sys.stderr)


async def _main(scale_name: str, out: Path, seed: int | None, concurrency: int | None) -> Any:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
    return await run(scale_name, out, seed=seed, concurrency=concurrency)


def main_sync(scale_name: str, out: Path, seed: int | None, concurrency: int | None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # thread stacks, for a stuck loop
    faulthandler.dump_traceback_later(WATCHDOG_S[scale_name], exit=True)
    with contextlib.suppress(KeyboardInterrupt):
        summary = asyncio.run(_main(scale_name, out, seed, concurrency))
        write(summary, out)
        print(table(summary))
        return 0 if summary["passed"] else 1
    return 130
