"""The Python client of a Hubspoke hub: ``from hubspoke.client import Client``.

:class:`Client` (async) and :class:`SyncClient` (blocking) sign commands as one principal,
call the hub, and verify every reply end to end before returning it as this package's own
frozen types (:class:`Agent`, :class:`Spoke`, :class:`AgentEvent`, ...), each of which keeps
the wire message it was read from in ``raw``. Nothing here imports the hub or spoke servers.

Errors (``hubspoke.errors.HubspokeError`` is the root)::

    HubspokeError
     ├── CallError              a call failed or its reply could not be verified
     └── ConfigError
          └── ClientConfigError the hubctl config or a file it names is unusable
"""

from __future__ import annotations

from ._audit import AuditPage, AuditRecord
from ._client import Client
from ._errors import REPLY_INVALID, CallError, ClientConfigError
from ._events import FeedEvent, FeedKind
from ._modes import RunMode, ShadowRun
from ._outbox import OutboxItem, OutboxList
from ._placement import Placement, PlacementCandidate
from ._sync import SyncClient
from ._types import (
    FINAL_STATES,
    WAITING_ON_PEOPLE,
    Agent,
    AgentEvent,
    AgentList,
    AgentPage,
    AgentState,
    Artifact,
    CircuitState,
    EventKind,
    FederatedQueueStats,
    ProfileCapacity,
    QueueStats,
    Receipt,
    Spoke,
    SpokeCapacity,
    SpokeHealth,
    Verification,
)
from .config import ClientConfig, client_from_config, load_client_config

__all__ = [
    "FINAL_STATES",
    "REPLY_INVALID",
    "WAITING_ON_PEOPLE",
    "Agent",
    "AgentEvent",
    "AgentList",
    "AgentPage",
    "AgentState",
    "Artifact",
    "AuditPage",
    "AuditRecord",
    "CallError",
    "CircuitState",
    "Client",
    "ClientConfig",
    "ClientConfigError",
    "EventKind",
    "FederatedQueueStats",
    "FeedEvent",
    "FeedKind",
    "OutboxItem",
    "OutboxList",
    "Placement",
    "PlacementCandidate",
    "ProfileCapacity",
    "QueueStats",
    "Receipt",
    "RunMode",
    "ShadowRun",
    "Spoke",
    "SpokeCapacity",
    "SpokeHealth",
    "SyncClient",
    "Verification",
    "client_from_config",
    "load_client_config",
]
