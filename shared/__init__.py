"""Hubspoke: a federated hub-and-spoke command service.

The root package holds what both sides use (envelopes, keys, the trust store, transport,
errors, config) and the client API, whose main names are importable from here::

    from hubspoke import Client

Those names are imported on first use (PEP 562), so ``import hubspoke`` stays cheap for the
daemons, which never load the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Agent, AgentEvent, Client, Spoke, SyncClient

__all__ = ["Agent", "AgentEvent", "Client", "Spoke", "SyncClient"]

_LAZY = frozenset(__all__)


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'hubspoke' has no attribute {name!r}")
    return getattr(importlib.import_module(".client", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
