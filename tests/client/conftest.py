"""The hub-with-fake-spokes fixture of tests/hub/test_hub_service.py, for the client's tests."""

from __future__ import annotations

from ..hub.test_hub_service import fed, refused_address  # noqa: F401  # re-exported fixtures
