"""spoked's start-up heap, moved out of the cyclic garbage collector's way once it serves
(issue 13, third round).

A started spoked holds some 60,000 objects it keeps for its life (modules, protobuf
descriptors, bullmq, prometheus, the config). Python's full (generation 2) collection walks
all of them, and calls allocate enough that one runs every few thousand requests: about 35 ms
of the loop each time (a pause every call in flight waits out), 8-11 us per spawn on
average. :func:`freeze_start_up` moves the objects alive once spoked serves into the
permanent generation (``gc.freeze``): reference counting still frees them, the collector no
longer walks them, and collections see only what calls allocate after.

Only the ``spoked`` daemon freezes (its ``main`` calls :func:`enable`): a spoke started
inside another program (the tests' in-process spokes) leaves that program's heap alone.
"""

from __future__ import annotations

import gc

__all__ = ["enable", "freeze_start_up"]

_enabled = False


def enable() -> None:
    """Freeze the heap at :func:`freeze_start_up` (``spoked``'s main calls it)."""
    global _enabled
    _enabled = True


def freeze_start_up() -> bool:
    """Once serving: freeze the objects alive now out of the collector's passes, if enabled.
    Whether it froze."""
    if not _enabled:
        return False
    gc.freeze()
    return True
