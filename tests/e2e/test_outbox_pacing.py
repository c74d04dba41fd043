"""The outbox under the spoke's rate limit (issue 11): after a partition the hub delivers one
principal's held commands in a burst, and a spoke's RATE_LIMITED answer means "later", so the
burst is paced by the limit, never refused by it (hub/outbox_delivery.py: TRY_LATER)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from hubspoke.client import AgentState, CallError
from hubspoke.testing import until

from .conftest import SPOKE, stoppable_federation

pytestmark = pytest.mark.timeout(180)


RATE_LIMITED_SPOKE = {"SPOKE_RATE_PER_PRINCIPAL": "2", "SPOKE_RATE_BURST": "3"}
"""A spoke that takes 3 commands of one principal at once, then 2 a second."""


async def test_a_burst_the_spoke_rate_limits_is_paced_not_refused(
    tmp_path: Path, redis_url: str
) -> None:
    """After a partition the outbox delivers one principal's commands in a burst; the spoke's
    RATE_LIMITED means "later": every held spawn runs once, none ends DELIVERY_REFUSED."""
    ledger = tmp_path / "ledger"
    count = 8
    async with (
        stoppable_federation(
            tmp_path / "fed", redis_url=redis_url, spoke_env=RATE_LIMITED_SPOKE
        ) as fed,
        fed.client() as client,
    ):
        fed.spoked(SPOKE).signal(signal.SIGSTOP)
        held = [await client.spawn(SPOKE, "shell", f"echo {i} >> {ledger}") for i in range(count)]
        assert {a.state for a in held} == {AgentState.PENDING_DELIVERY}
        fed.spoked(SPOKE).signal(signal.SIGCONT)

        def ran() -> list[str]:
            return ledger.read_text().split() if ledger.exists() else []

        async def delivered() -> bool:  # the hub answers the outbox: no spoke token spent
            return (await client.outbox(SPOKE)).total == 0 and len(ran()) == count

        await until(delivered, 60)
        assert sorted(ran(), key=int) == [str(i) for i in range(count)]

        final: list[AgentState] = []

        async def listed() -> bool:
            try:
                final[:] = [a.state for a in (await client.list(SPOKE)).agents]
            except CallError as exc:  # this read may meet the rate limit too
                if exc.reason != "RATE_LIMITED":
                    raise
                return False
            return True

        await until(listed, 30)
        assert final == [AgentState.SUCCEEDED] * count
