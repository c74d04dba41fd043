"""Caps on concurrent server streams (watches), in all and per principal.

A stream holds resources for as long as its caller keeps it open, so one principal allowed
only to watch could otherwise hold all of them. Both daemons count their open watch streams
here and refuse one more with RESOURCE_EXHAUSTED (CAPACITY_EXCEEDED), naming the limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from . import errors


class StreamCaps:
    """Counts open streams of one kind (``what``) in one process (``where``, e.g. ``spoke
    build-2``); ``setting`` names the config value of the total (``_per_principal`` added
    for the other), reported in the error's metadata as ``limit``."""

    def __init__(
        self, what: str, where: str, total: int, per_principal: int, *, setting: str
    ) -> None:
        self.what = what
        self.where = where
        self.total = total
        self.per_principal = per_principal
        self._setting = setting
        self._held: Counter[str] = Counter()

    @property
    def open(self) -> int:
        return self._held.total()

    def held_by(self, principal: str) -> int:
        return self._held[principal]

    @contextmanager
    def hold(self, principal: str) -> Iterator[None]:
        """Count one stream of ``principal`` while the block runs, or refuse it."""
        if self.open >= self.total:
            raise errors.CapacityExceededError(
                f"{self.where} holds {self.total} {self.what} streams, its limit in all",
                limit=self._setting,
            )
        if self._held[principal] >= self.per_principal:
            raise errors.CapacityExceededError(
                f"principal {principal} holds {self.per_principal} {self.what} streams on "
                f"{self.where}, its limit per principal",
                limit=f"{self._setting}_per_principal",
            )
        self._held[principal] += 1
        try:
            yield
        finally:
            self._held[principal] -= 1
            if self._held[principal] <= 0:
                del self._held[principal]
