"""tests/hub/test_hub_service.py with the hub's state on a Redis Cluster (see conftest)."""

from __future__ import annotations

from ..test_hub_service import *  # noqa: F403  (re-collected with the cluster's redis_url)
