"""A circuit breaker per spoke, so that nobody waits a call timeout on a dead spoke.

A circuit is CLOSED while its spoke answers. ``failures`` consecutive failures (a relayed
call that ended UNAVAILABLE or DEADLINE_EXCEEDED without an answer, or a failed probe) open
it: for ``open_s`` seconds every call to the spoke fails at once with UNAVAILABLE, reason
SPOKE_CIRCUIT_OPEN and metadata ``retry_after_ms``. After ``open_s`` it is HALF_OPEN: calls
still fail at once, and the hub's next probe (hub/health.py) decides: a good probe closes
the circuit, a failed one opens it again for another ``open_s``. Any answer from the spoke
(a reply, or an error the spoke itself sent) counts as a success.

The probe loop is the only trial, so a hung spoke costs one probe timeout per interval, never
a client's call timeout. State is per hubd process (issue 11 moves it into Redis).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import grpc

from hubspoke import errors

__all__ = [
    "Circuit",
    "CircuitBreaker",
    "CircuitConfig",
    "CircuitOpenError",
    "Circuits",
]

Clock = Callable[[], float]


class Circuit(enum.Enum):
    """A breaker's state (the values are ``command_pb2.Spoke.Circuit`` numbers)."""

    CLOSED = 1
    OPEN = 2
    HALF_OPEN = 3


class CircuitOpenError(errors.CommandError):
    """The hub's circuit breaker for the spoke is open: the call was not made."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "SPOKE_CIRCUIT_OPEN"


@dataclass(frozen=True, slots=True)
class CircuitConfig:
    """When circuits open and when they are tried again."""

    failures: int = 5
    """Consecutive failures that open a circuit."""
    open_s: float = 30.0
    """Seconds an open circuit waits before its half-open probe."""
    probe_interval_s: float = 5.0
    """How often the probe loop runs: part of ``retry_after_ms``."""


class CircuitBreaker:
    """One spoke's breaker; not thread-safe (one event loop)."""

    def __init__(
        self,
        spoke: str,
        cfg: CircuitConfig,
        clock: Clock = time.monotonic,
        notify: Callable[[str, Circuit, int], None] | None = None,
    ) -> None:
        """``notify(spoke, new state, failures)``: told when the circuit opens or closes."""
        self.spoke = spoke
        self._cfg = cfg
        self._clock = clock
        self._notify = notify
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> Circuit:
        if self._opened_at is None:
            return Circuit.CLOSED
        if self._clock() - self._opened_at >= self._cfg.open_s:
            return Circuit.HALF_OPEN
        return Circuit.OPEN

    @property
    def failures(self) -> int:
        """Consecutive failures so far."""
        return self._failures

    def retry_after_ms(self) -> int:
        """When a caller may try again: the rest of the open time plus one probe interval."""
        if self._opened_at is None:
            return 0
        left = max(self._cfg.open_s - (self._clock() - self._opened_at), 0.0)
        return int((left + self._cfg.probe_interval_s) * 1000)

    def check(self) -> None:
        """Raise :class:`CircuitOpenError` unless the circuit is closed."""
        if self._opened_at is None:
            return
        wait_ms = self.retry_after_ms()
        raise CircuitOpenError(
            f"spoke {self.spoke} is not answering (circuit open after {self._failures} "
            f"failures); retry in {wait_ms / 1000:.1f} s",
            spoke=self.spoke,
            retry_after_ms=str(wait_ms),
        )

    def success(self) -> bool:
        """The spoke answered a call: count from zero. True if this closed the circuit.

        While open (before ``open_s``), a late answer to a call made before it opened does
        not close it: only the half-open probe does."""
        if self.state is Circuit.OPEN:
            return False
        closed = self._opened_at is not None
        self._failures = 0
        self._opened_at = None
        if closed and self._notify is not None:
            self._notify(self.spoke, Circuit.CLOSED, 0)
        return closed

    def failure(self) -> bool:
        """The spoke did not answer. True if this opened (or re-opened) the circuit."""
        self._failures += 1
        state = self.state
        if state is Circuit.HALF_OPEN or (
            state is Circuit.CLOSED and self._failures >= self._cfg.failures
        ):
            self._opened_at = self._clock()
            if self._notify is not None:
                self._notify(self.spoke, Circuit.OPEN, self._failures)
            return True
        return False


class Circuits:
    """A breaker for each spoke: those configured at start, and each spoke enrolled later
    (hub/membership.py), whose breaker is made the first time it is asked for. Callers ask
    only for spokes the registry knows."""

    def __init__(
        self, names: Iterable[str], cfg: CircuitConfig, clock: Clock = time.monotonic
    ) -> None:
        self.config = cfg
        self._listeners: list[Callable[[str, Circuit, int], None]] = []
        self._clock = clock
        self._breakers = {n: CircuitBreaker(n, cfg, clock, self._changed) for n in names}

    def listen(self, listener: Callable[[str, Circuit, int], None]) -> None:
        """Call ``listener(spoke, state, failures)`` whenever a circuit opens or closes."""
        self._listeners.append(listener)

    def _changed(self, spoke: str, state: Circuit, failures: int) -> None:
        for listener in self._listeners:
            listener(spoke, state, failures)

    def __getitem__(self, spoke: str) -> CircuitBreaker:
        return self._breakers[spoke]

    def get(self, spoke: str) -> CircuitBreaker | None:
        found = self._breakers.get(spoke)
        if found is None and spoke:
            found = self._breakers[spoke] = CircuitBreaker(
                spoke, self.config, self._clock, self._changed
            )
        return found

    def items(self) -> list[tuple[str, CircuitBreaker]]:
        return list(self._breakers.items())


UNREACHABLE_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
"""A relayed call that ended with one of these, without a reason, failed to reach the spoke."""
