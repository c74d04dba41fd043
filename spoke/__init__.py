"""The spoke: ``spoked``, which verifies signed commands, queues them durably in Redis and runs
them as agents under limits.

Names are imported on first use (PEP 562), so an agent started as
``python -m hubspoke.spoke.synthetic`` does not load the server modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import SpokeApp
    from .config import SpokeConfig, SpokeConfigError
    from .profiles import Profile, ProfileConfigError
    from .queue import AgentQueue
    from .service import SpokeServicer

__all__ = [
    "AgentQueue",
    "Profile",
    "ProfileConfigError",
    "SpokeApp",
    "SpokeConfig",
    "SpokeConfigError",
    "SpokeServicer",
]

_WHERE = {
    "SpokeApp": "app",
    "SpokeConfig": "config",
    "SpokeConfigError": "config",
    "Profile": "profiles",
    "ProfileConfigError": "profiles",
    "AgentQueue": "queue",
    "SpokeServicer": "service",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
