"""Security through the whole chain: default-deny policy enforced by hub AND spoke (the
spoke judges the original client), fail-closed fan-out, per-principal rate limits, live key
revocation, key rotation, and logs that never carry keys, signatures or payloads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from hubspoke import client as hc
from hubspoke import keys, testing
from hubspoke.hub import cli
from hubspoke.hub.app import HubApp
from hubspoke.spoke.app import SpokeApp
from hubspoke.trust import TrustStore

from .conftest import wait_final

pytestmark = pytest.mark.slow

OPERATOR_ALL = """
[[rule]]
name = "operator-all"
principals = ["operator"]
verbs = ["*"]
scope = "any"
spokes = ["*"]
"""
CI_HUB = """
[[rule]]
name = "ci-hub"
principals = ["ci-bot"]
verbs = ["spawn", "read", "kill"]
scope = "any"
spokes = ["spoke-1"]
profiles = ["synthetic"]
max_priority = 5
"""
CI_SPOKE_NARROW = """
[[rule]]
name = "ci-spoke-read-only"
principals = ["ci-bot"]
verbs = ["read"]
scope = "any"
spokes = ["spoke-1"]
"""


@dataclass
class Fed:
    root: Path
    hub_address: str
    hub: HubApp
    spoke: SpokeApp
    trust: Path

    def client(self, principal: str = "operator") -> hc.Client:
        key = keys.load_private(self.root / "keys" / f"{principal}.key", principal)
        return hc.Client(
            self.hub_address, principal, key, TrustStore.from_file(self.trust), "hub", 10.0
        )


@pytest.fixture
async def make_fed(tmp_path: Path, redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    stack = contextlib.AsyncExitStack()

    async def make(
        hub_policy: str = OPERATOR_ALL,
        spoke_policy: str = OPERATOR_ALL,
        hub: dict[str, Any] | None = None,
        spoke: dict[str, Any] | None = None,
    ) -> Fed:
        hub_policy_file, spoke_policy_file = (
            tmp_path / "hub-policy.toml",
            tmp_path / "spoke-policy.toml",
        )
        fed = testing.InProcessFederation(
            tmp_path,
            ["spoke-1"],
            redis_url=redis_url,
            configure_hub=lambda c: c.replace(policy_file=hub_policy_file, **(hub or {})),
            configure_spoke=lambda c: replace(c, policy_file=spoke_policy_file, **(spoke or {})),
        )
        stack.push_async_callback(fed.stop)
        files = await fed.prepare()
        ci = keys.generate("ci-bot")
        keys.write_keypair(ci, files.keys_dir)
        with files.trust_file.open("a") as fh:
            fh.write(
                f'\n[[peer]]\nname = "ci-bot"\nrole = "client"\n'
                f'keys = ["{keys.encode_public(ci.public)}"]\n'
            )
        hub_policy_file.write_text(hub_policy)
        spoke_policy_file.write_text(spoke_policy)
        await fed.start()
        assert fed.hub is not None
        spoke_app = fed.spokes["spoke-1"]
        return Fed(tmp_path, fed.hub_address, fed.hub, spoke_app, files.trust_file)

    yield make
    await stack.aclose()


async def _denied(coro: Any) -> hc.CallError:
    with pytest.raises(hc.CallError) as err:
        await coro
    return err.value


async def test_hub_denies_what_no_rule_allows_and_names_the_rule(make_fed) -> None:
    fed = await make_fed(hub_policy=OPERATOR_ALL + CI_HUB, spoke_policy=OPERATOR_ALL + CI_HUB)
    async with fed.client("ci-bot") as ci:
        agent = await ci.spawn("spoke-1", "synthetic", "duration=0.05", priority=5)
        assert (await wait_final(ci, agent.agent_id)).state == hc.AgentState.SUCCEEDED
        err = await _denied(ci.spawn("spoke-1", "synthetic", "duration=0", priority=9))
        assert err.code.name == "PERMISSION_DENIED"
        assert "rule 'ci-hub' allows priority up to 5, got 9" in err.message
        err = await _denied(ci.spawn("spoke-1", "shell", "true"))
        assert "profile shell" in err.message
        err = await _denied(ci.pause("spoke-1"))
        assert err.code.name == "PERMISSION_DENIED"
        assert [s.name for s in await ci.spokes()] == ["spoke-1"]  # "read" includes spokes
        err = await _denied(ci.drain("spoke-1"))
        assert err.code.name == "PERMISSION_DENIED"


async def test_spoke_judges_the_original_client_even_if_the_hub_allows(make_fed) -> None:
    """Chain of custody: the hub's policy lets ci-bot spawn, the spoke's does not. The hub's
    own key and signature cannot lend ci-bot a grant the spoke did not give it."""
    fed = await make_fed(hub_policy=CI_HUB, spoke_policy=OPERATOR_ALL + CI_SPOKE_NARROW)
    async with fed.client("ci-bot") as ci:
        err = await _denied(ci.spawn("spoke-1", "synthetic", "duration=0"))
        assert err.code.name == "PERMISSION_DENIED"
        assert "ci-bot spawn on spoke spoke-1" in err.message
        listed = await ci.list("spoke-1")
        assert listed.agents == []


async def test_fan_out_with_no_permitted_spoke_fails_closed(make_fed) -> None:
    fed = await make_fed(hub_policy=OPERATOR_ALL)  # ci-bot: no rule at all
    async with fed.client("ci-bot") as ci:
        err = await _denied(ci.list())  # audience: the hub, i.e. every spoke
        assert err.code.name == "PERMISSION_DENIED"
        assert "on any spoke" in err.message
        err = await _denied(ci.get("some-agent"))
        assert err.code.name == "PERMISSION_DENIED"


async def test_rate_limit_per_principal(make_fed) -> None:
    fed = await make_fed(hub={"rate_per_principal": 2.0, "rate_burst": 3})
    async with fed.client() as op:
        results = await asyncio.gather(
            *(op.list("spoke-1") for _ in range(8)), return_exceptions=True
        )
    limited = [r for r in results if isinstance(r, hc.CallError)]
    assert 1 <= len(limited) <= 5
    assert all(e.code.name == "RESOURCE_EXHAUSTED" and e.reason == "RATE_LIMITED" for e in limited)


async def test_revocation_reaches_running_daemons_without_restart(make_fed) -> None:
    fed = await make_fed()
    async with fed.client() as op:
        await op.list("spoke-1")
        pub = fed.root / "keys" / "operator.pub"
        assert (
            cli.main(
                [
                    "keys",
                    "revoke",
                    "--trust",
                    str(fed.trust),
                    "--key-file",
                    str(pub),
                    "--reason",
                    "test",
                ]
            )
            == 0
        )
        await asyncio.sleep(1.2)  # the trust store re-reads a changed file within 1 s
        err = await _denied(op.list("spoke-1"))
        assert err.code.name == "UNAUTHENTICATED"


async def test_rotation_keeps_old_and_new_keys_valid_until_revoked(make_fed) -> None:
    fed = await make_fed()
    kdir = fed.root / "keys"
    old_pub = (kdir / "operator.pub").read_text().split()[0]
    async with fed.client() as old:
        assert (
            cli.main(
                [
                    "keys",
                    "rotate",
                    "--out",
                    str(kdir),
                    "--name",
                    "operator",
                    "--trust",
                    str(fed.trust),
                ]
            )
            == 0
        )
        await asyncio.sleep(1.2)
        async with fed.client() as new:  # reads the new operator.key
            await new.list("spoke-1")
            await old.list("spoke-1")  # still valid: both keys are trusted
            assert cli.main(["keys", "revoke", "--trust", str(fed.trust), "--key", old_pub]) == 0
            await asyncio.sleep(1.2)
            await new.list("spoke-1")
            err = await _denied(old.list("spoke-1"))
            assert err.code.name == "UNAUTHENTICATED"


async def test_logs_never_carry_keys_signatures_or_payloads(make_fed) -> None:
    fed = await make_fed()
    marked_task = "duration=0.01 SECRET-TASK-TEXT"
    with capture_logs() as logs:
        async with fed.client() as op:
            agent = await op.spawn("spoke-1", "synthetic", marked_task)
            await wait_final(op, agent.agent_id)
            with contextlib.suppress(hc.CallError):
                await op.spawn("spoke-1", "nope", "x")
    text = repr(logs)
    assert logs, "the servers logged nothing: the check would be vacuous"
    assert "SECRET-TASK-TEXT" not in text
    assert "PRIVATE KEY" not in text
    for name in ("operator", "hub", "spoke-1"):
        pub = (fed.root / "keys" / f"{name}.pub").read_text().split()[0]
        assert pub.removeprefix("ed25519:") not in text
    assert "sig" not in {k for entry in logs for k in entry}


async def test_hub_never_fans_out_a_kill(make_fed) -> None:
    """A kill by bare id that the hub has not indexed is refused, not sent to every spoke."""
    fed = await make_fed()
    async with fed.client() as op:
        err = await _denied(op.kill("never-spawned-through-this-hub"))
    assert err.code.name == "NOT_FOUND"
    assert "name its spoke" in err.message
