"""The hub: ``hubd`` (routing and relaying signed commands to spokes) and ``hubctl``'s client.

Names are imported on first use (PEP 562), so ``hubctl`` and other clients that import
``hubspoke.hub.client`` never load the server modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import HubApp
    from .client import (
        ClientConfig,
        ClientConfigError,
        HubCallError,
        HubClient,
        ListResult,
        client_from_config,
        load_client_config,
    )
    from .config import HubConfig, HubConfigError, SpokeEntry
    from .federation_files import FederationFiles, write_federation
    from .service import HubServicer

__all__ = [
    "ClientConfig",
    "ClientConfigError",
    "FederationFiles",
    "HubApp",
    "HubCallError",
    "HubClient",
    "HubConfig",
    "HubConfigError",
    "HubServicer",
    "ListResult",
    "SpokeEntry",
    "client_from_config",
    "load_client_config",
    "write_federation",
]

_WHERE = {
    "HubApp": "app",
    "ClientConfig": "client",
    "ClientConfigError": "client",
    "HubCallError": "client",
    "HubClient": "client",
    "ListResult": "client",
    "client_from_config": "client",
    "load_client_config": "client",
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
        raise AttributeError(f"module 'hub' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
