"""The harness's own error root.

Hierarchy::

    HubspokeError
     └── HarnessError        a federation, a daemon or a redis-server could not start or run
          ├── DaemonError        hubd, spoked (or another server) exited or never said ``serving``
          └── RedisServerError   no redis-server binary, or it would not start or answer PING
"""

from __future__ import annotations

from hubspoke.errors import HubspokeError


class HarnessError(HubspokeError):
    """Something the harness started could not start or keep running."""


class RedisServerError(HarnessError):
    """No redis-server binary was found, or the server did not start or answer PING."""
