"""tests/hub/test_membership_store.py and test_hub_dedupe.py on a Redis Cluster."""

from __future__ import annotations

from ..test_hub_dedupe import *  # noqa: F403  (re-collected with the cluster's redis_client)
from ..test_membership_store import *  # noqa: F403  (and its stores on the cluster's URL)
