"""spoked freezes its start-up heap out of the cyclic collector's passes once it serves
(spoke/heap.py, issue 13); a spoke started inside another program leaves its heap alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hubspoke.spoke import heap
from hubspoke.spoke.app import SpokeApp

from .conftest import Peers, spoke_config


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    heap._enabled = False
    gc.unfreeze()


async def test_spoked_freezes_its_heap_once_serving(
    unfrozen: None, peers: Peers, redis_url: str
) -> None:
    heap.enable()  # what spoked's main does
    app = SpokeApp(spoke_config(peers, redis_url))
    assert gc.get_freeze_count() == 0
    async with app:
        frozen = gc.get_freeze_count()
    # The app's own objects (servicer, verifier, queue, ...) were alive when it served.
    assert frozen > 1000


async def test_an_in_process_spoke_leaves_the_heap_alone(
    unfrozen: None, peers: Peers, redis_url: str
) -> None:
    async with SpokeApp(spoke_config(peers, redis_url)):
        assert gc.get_freeze_count() == 0


def test_spoked_main_enables_it(unfrozen: None) -> None:
    from hubspoke.spoke import __main__ as spoked

    assert not heap._enabled
    assert spoked.main(["--config", "/nonexistent/spoke.toml"]) == 2  # a config error
    assert heap._enabled
