"""A hub's list fan-out stays under its message limit (issue 9): each spoke's page fits one
message, the hub carries the pages that fit beside each other and names the rest (signed),
and the client lists those alone, so a listing of every spoke has every page."""

from __future__ import annotations

from pathlib import Path

from hubspoke import testing

LIMIT = 64 * 1024
"""Message limit of the hub and of both spokes: one full page fits, two do not."""


async def test_a_fan_out_of_two_full_pages_stays_under_the_hubs_limit(tmp_path: Path) -> None:
    fed = testing.Federation(
        tmp_path,
        ["spoke-1", "spoke-2"],
        spoke_env={"SPOKE_MAX_MESSAGE_BYTES": str(LIMIT), "SPOKE_RATE_BURST": "1000"},
        hub_env={"HUB_MAX_MESSAGE_BYTES": str(LIMIT), "HUB_RATE_BURST": "1000"},
    )
    try:
        await fed.start()
        async with fed.client() as client:
            spawned: dict[str, set[str]] = {"spoke-1": set(), "spoke-2": set()}
            for spoke, ids in spawned.items():
                for i in range(40):
                    task = f"duration=0 n={i} " + "x" * 8192
                    agent = await client.spawn(spoke, "synthetic", task, delay_s=3600)
                    ids.add(agent.agent_id)
            listed = await client.list(page_size=500)
            assert listed.unreachable_spokes == []
            assert sorted(listed.pages) == ["spoke-1", "spoke-2"]
            for spoke, page in listed.pages.items():
                assert page.agents, spoke
                assert {a.agent_id for a in page.agents} <= spawned[spoke]
                assert page.next_page_token  # 40 long agents never fit one page
                assert all(a.raw.truncated for a in page.agents)
            assert len(listed.agents) == sum(len(p.agents) for p in listed.pages.values())
    finally:
        await fed.stop()
