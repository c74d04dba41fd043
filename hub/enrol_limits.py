"""A rate limit on EnrolService, which takes no client signature: per caller address, in
this hubd's memory (``enrol_rate_per_s`` sustained, ``enrol_rate_burst`` at once).

A caller over it gets RESOURCE_EXHAUSTED ``RATE_LIMITED`` with ``retry_after_ms`` before any
signature is checked or Redis is asked. At most ``MAX_CALLERS`` addresses are tracked; the
least recently seen is forgotten first (a forgotten caller starts with a full bucket).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Final

from hubspoke.admission import RateLimitedError
from hubspoke.pacing import TokenBucket

__all__ = ["MAX_CALLERS", "EnrolRateLimit", "caller_of"]

MAX_CALLERS: Final = 4096


def caller_of(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:1.2.3.4:5678`` → ``ipv4:1.2.3.4``)."""
    head, sep, port = peer.rpartition(":")
    return head if sep and port.isdigit() else peer


class EnrolRateLimit:
    """A token bucket per caller address."""

    def __init__(self, rate_per_s: float, burst: int, max_callers: int = MAX_CALLERS) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._max = max_callers
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, peer: str) -> None:
        """Take a token for ``peer``'s address, or raise RateLimitedError."""
        if self._rate <= 0:
            return
        caller = caller_of(peer)
        bucket = self._buckets.pop(caller, None) or TokenBucket(self._rate, self._burst)
        self._buckets[caller] = bucket
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        wait = bucket.delay()
        if wait > 0:
            raise RateLimitedError(
                "too many enrolment calls from this address; retry later",
                retry_after_ms=str(max(1, math.ceil(wait * 1000))),
            )
        bucket.take()
