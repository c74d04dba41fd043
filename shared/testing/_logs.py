"""Reading back what a child process wrote to its log file."""

from __future__ import annotations

from pathlib import Path


def log_tail(path: Path, *, offset: int = 0, lines: int = 8) -> list[str]:
    """The last ``lines`` non-blank lines written to ``path`` from byte ``offset`` on.

    A missing or unreadable file gives ``[]``: the tail only ever decorates an error.
    """
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def log_size(path: Path) -> int:
    """The current size of ``path`` (0 if it does not exist): where a new run's lines begin."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
