"""The hub: ``hubd``, which routes and relays signed commands to spokes, and ``hubctl``.

Names are imported on first use (PEP 562), so ``hubctl`` never loads the server modules.
The client API is ``hubspoke.client``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import HubApp
    from .config import HubConfig, HubConfigError, SpokeEntry
    from .federation_files import FederationFiles, write_federation
    from .service import HubServicer

__all__ = [
    "FederationFiles",
    "HubApp",
    "HubConfig",
    "HubConfigError",
    "HubServicer",
    "SpokeEntry",
    "write_federation",
]

_WHERE = {
    "HubApp": "app",
    "HubConfig": "config",
    "HubConfigError": "config",
    "SpokeEntry": "config",
    "FederationFiles": "federation_files",
    "write_federation": "federation_files",
    "HubServicer": "service",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
