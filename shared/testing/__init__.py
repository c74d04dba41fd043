"""``hubspoke.testing``: one harness that starts Redis, hubds and spokeds.

``hubctl dev up``, the test suite, bench, chaos and fuzz all start federations with it:

* :class:`EmbeddedRedis`: a private ``redis-server`` (AOF on, ``noeviction``, owner-only
  data), optionally with a password file and TLS (:class:`RedisServerTls`).
* :class:`EmbeddedRedisCluster`: a private Redis Cluster of 3 or more primaries (the hub's
  Redis in the cluster tests, ``redis+cluster://``).
* :class:`Daemon`: one server process that prints ``serving <port>`` when ready; logs to a
  file, signal, kill, stop with a grace, restart.
* :class:`Federation`: keys, trust store, policy and configs, a Redis per peer (or one
  given URL), a spoked per spoke site (or several on one site) and one or more hubds, all
  as processes.
* :class:`InProcessFederation`: the same files and addresses, with the hub and spokes built
  in this process by the production factories (imported on first use, so ``hubctl dev``
  never loads a server module).
* :class:`LoopThread`: a background event loop for synchronous owners (session fixtures).
* :func:`connect_env`: the environment that makes a federation's spokes dial their hub
  (connect link mode).

Hierarchy of its errors::

    HubspokeError
     └── HarnessError
          ├── DaemonError
          └── RedisServerError
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._connect import connect_env
from ._daemon import Daemon, DaemonError, server_argv, server_env
from ._errors import HarnessError, RedisServerError
from ._federation import Federation
from ._loop import LoopThread
from ._net import HOST, pick_free_port
from ._plan import DEFAULT_PROFILES, FederationPlan, HubctlRun, run_hubctl
from ._redis import ENV_VAR, AppendFsync, EmbeddedRedis, find_redis_server, redis_server_argv
from ._redis_cluster import EmbeddedRedisCluster, find_redis_cli
from ._redis_secure import TLS_ENV_VAR, RedisServerTls, find_tls_redis_server
from ._wait import until

if TYPE_CHECKING:
    from ._inprocess import InProcessFederation

__all__ = [
    "DEFAULT_PROFILES",
    "ENV_VAR",
    "HOST",
    "TLS_ENV_VAR",
    "AppendFsync",
    "Daemon",
    "DaemonError",
    "EmbeddedRedis",
    "EmbeddedRedisCluster",
    "Federation",
    "FederationPlan",
    "HarnessError",
    "HubctlRun",
    "InProcessFederation",
    "LoopThread",
    "RedisServerError",
    "RedisServerTls",
    "connect_env",
    "find_redis_cli",
    "find_redis_server",
    "find_tls_redis_server",
    "pick_free_port",
    "redis_server_argv",
    "run_hubctl",
    "server_argv",
    "server_env",
    "until",
]

_LAZY = {"InProcessFederation": "._inprocess"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
