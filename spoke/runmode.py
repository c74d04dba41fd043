"""The run mode names (live, synthetic, shadow) and how a profile's mode combines with its
spoke's; :mod:`hubspoke.spoke.modes` says what each mode does. No imports of the spoke's own,
so the config and profile modules can use it."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Mode", "effective_mode", "parse_mode"]


class Mode(StrEnum):
    """A run mode; the order of :data:`_CAUTION` ranks them."""

    LIVE = "live"
    SYNTHETIC = "synthetic"
    SHADOW = "shadow"


_CAUTION = {Mode.LIVE: 0, Mode.SYNTHETIC: 1, Mode.SHADOW: 2}


def parse_mode(value: object) -> Mode:
    """``live``, ``shadow`` or ``synthetic`` (any case) → :class:`Mode`.

    Raises:
        ValueError: anything else (the message lists the modes).
    """
    if isinstance(value, str):
        try:
            return Mode(value.strip().lower())
        except ValueError:
            pass
    raise ValueError(f"must be one of live, shadow, synthetic (not {value!r})")


def effective_mode(spoke: Mode, profile: Mode | None) -> Mode:
    """The mode an agent of ``profile`` runs in: the more cautious of the two."""
    if profile is None or _CAUTION[profile] <= _CAUTION[spoke]:
        return spoke
    return profile
