"""Send probes with bounded concurrency and count what comes back, per class.

Calls are raw bytes in, raw bytes out (no serializers), each with a deadline. A streaming
call that yields even one message counts as accepted (OK) and is cancelled at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from hubspoke.grpc import from_rpc_error

from .classes import OK, Probe


class Target(Protocol):
    """What the runner needs of a federation (:mod:`federation`, :mod:`tenants`)."""

    def channel(self, server: str) -> grpc.aio.Channel: ...

    async def agent_count(self) -> int: ...


CALL_TIMEOUT_S = 15.0
SAMPLES = 24
"""Unexpected answers kept per class: the first of each (variant, code, reason)."""


def rss_mb() -> float:
    """This process's resident set (hub and spoke run in it), from /proc/self/status."""
    return _status_kb("VmRSS") / 1024


def trimmed_rss_mb() -> float:
    """RSS after ``gc.collect()`` and glibc's ``malloc_trim(0)``: what is still *retained*,
    as opposed to freed heap the allocator keeps cached (4 MiB messages leave plenty)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mb()


def hwm_mb() -> float:
    return _status_kb("VmHWM") / 1024


def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Outcome:
    code: str
    reason: str
    message: str
    responses: list[bytes] = field(default_factory=list)


@dataclass
class ClassStats:
    name: str
    kind: str
    """negative (must be refused), positive (must be accepted), primer, or probe (a known
    gap, reported but not part of the verdict)."""
    expected: frozenset[str]
    doc: str = ""
    sent: int = 0
    accepted: int = 0
    unexpected: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    variants: dict[str, Counter[str]] = field(default_factory=dict)
    endpoints: dict[str, Counter[str]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    primers: Counter[str] = field(default_factory=Counter)
    queued_before: int = 0
    queued_after: int = 0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    duration_s: float = 0.0
    bytes_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    _sampled: set[tuple[str, str, str]] = field(default_factory=set)

    def record(self, p: Probe, o: Outcome) -> None:
        self.sent += 1
        self.bytes_sent += len(p.raw)
        self.codes[o.code] += 1
        if o.code != OK:
            self.reasons[o.reason or "-"] += 1
        if o.code == OK:
            self.accepted += 1
        self.variants.setdefault(p.variant, Counter())[o.code] += 1
        self.endpoints.setdefault(p.endpoint, Counter())[o.code] += 1
        bad = o.code not in p.expect or (
            o.code != OK and p.reasons is not None and o.reason not in p.reasons
        )
        if bad:
            self.unexpected += 1
            kind = (p.variant.split("@")[0], o.code, o.reason)
            if kind not in self._sampled and len(self.samples) < SAMPLES:
                self._sampled.add(kind)
                self.samples.append(
                    {
                        "endpoint": p.endpoint,
                        "path": p.path,
                        "variant": p.variant,
                        "code": o.code,
                        "reason": o.reason,
                        "message": o.message[:240],
                        "expected": sorted(p.expect),
                        "expected_reasons": sorted(p.reasons) if p.reasons is not None else None,
                        "request_hex_head": p.raw[:96].hex(),
                        "request_bytes": len(p.raw),
                    }
                )

    @property
    def ok(self) -> bool:
        if self.kind in ("primer", "probe"):
            return True
        if self.kind == "negative":
            return self.unexpected == 0 and self.accepted == 0 and self.queued_delta == 0
        return self.unexpected == 0

    @property
    def queued_delta(self) -> int:
        return self.queued_after - self.queued_before

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "doc": self.doc,
            "expected": sorted(self.expected),
            "sent": self.sent,
            "accepted": self.accepted,
            "unexpected": self.unexpected,
            "queued": self.queued_delta,
            "codes": dict(self.codes.most_common()),
            "reasons": dict(self.reasons.most_common()),
            "variants": {k: dict(v) for k, v in sorted(self.variants.items())},
            "endpoints": {k: dict(v) for k, v in sorted(self.endpoints.items())},
            "primers": dict(self.primers),
            "unexpected_samples": self.samples,
            "duration_s": round(self.duration_s, 2),
            "rate_per_s": round(self.sent / self.duration_s, 1) if self.duration_s else 0.0,
            "mb_sent": round(self.bytes_sent / 2**20, 1),
            "rss_before_mb": round(self.rss_before_mb, 1),
            "rss_after_mb": round(self.rss_after_mb, 1),
            "extra": self.extra,
            "ok": self.ok,
        }


class Runner:
    def __init__(self, fed: Target, concurrency: int, progress: bool = True) -> None:
        self.fed = fed
        self.concurrency = concurrency
        self.progress = progress
        self.stats: dict[str, ClassStats] = {}

    async def call(
        self, p: Probe, *, read_all: bool = False, deadline_s: float = CALL_TIMEOUT_S
    ) -> Outcome:
        channel = self.fed.channel(p.server)
        try:
            if p.streaming:
                call = channel.unary_stream(p.path)(p.raw, timeout=deadline_s)
                got: list[bytes] = []
                async for msg in call:
                    got.append(msg)
                    if not read_all:
                        call.cancel()
                        return Outcome(OK, "", "the stream yielded a message", got)
                return Outcome(OK, "", "", got)
            resp = await channel.unary_unary(p.path)(p.raw, timeout=deadline_s)
            return Outcome(OK, "", "", [resp])
        except grpc.aio.AioRpcError as exc:
            f = from_rpc_error(exc)
            return Outcome(f.code.name, f.reason, f.message)

    async def run(
        self,
        name: str,
        kind: str,
        expected: frozenset[str],
        probes: Iterable[Probe],
        *,
        doc: str = "",
        concurrency: int | None = None,
    ) -> ClassStats:
        st = self.stats.setdefault(name, ClassStats(name, kind, expected, doc))
        gc.collect()
        st.rss_before_mb = rss_mb()
        st.queued_before = await self.fed.agent_count()
        start = time.monotonic()
        it = iter(probes)
        last = [start]

        async def worker() -> None:
            for p in it:
                if p.before is not None:
                    o = await self.call(p.before)
                    st.primers[o.code] += 1
                st.record(p, await self.call(p))
                now = time.monotonic()
                if self.progress and now - last[0] > 5:
                    last[0] = now
                    rate = st.sent / (now - start)
                    print(f"fuzz: {name}: {st.sent} sent, {rate:.0f}/s", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency or self.concurrency)))
        st.duration_s += time.monotonic() - start
        st.queued_after = await self.fed.agent_count()
        gc.collect()
        st.rss_after_mb = rss_mb()
        if self.progress:
            print(
                f"fuzz: {name}: {st.sent} sent in {st.duration_s:.1f} s, "
                f"{st.accepted} accepted, {st.unexpected} unexpected",
                file=sys.stderr,
            )
        return st
