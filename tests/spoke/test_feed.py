"""The spoke's event feed on a real Redis: written by the state-change scripts themselves,
numbered without holes, a reader told of a gap when the cap trimmed past its cursor or its
cursor is ahead of the feed; the ``[[hooks]]`` table refused with one readable line; a hook
that resumes from its cursor in Redis after a restart."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from hubspoke.spoke.config import SpokeConfig, SpokeConfigError
from hubspoke.spoke.feed import FeedItem
from hubspoke.spoke.hooks import Hook, Hooks, HookSettings
from hubspoke.spoke.model import AgentState, SpawnRequest
from hubspoke.spoke.queue import AgentQueue


def _spawn(agent_id: str, issuer: str = "operator") -> SpawnRequest:
    return SpawnRequest(
        agent_id=agent_id,
        issuer=issuer,
        profile="synthetic",
        task="duration=0",
        priority=5,
        timeout_ms=60_000,
        max_attempts=1,
        labels={},
        digest=agent_id,
        expire_ms=2**41,
        accept_ms=0,
        delay_ms=0,
        backoff_ms=1000,
        envelope=b"",
        relay=b"",
    )


async def _items(queue: AgentQueue, after: int) -> list[FeedItem]:
    return [i async for i in queue.feed.follow(after, live=False, heartbeat_s=5)]


async def test_every_change_is_in_the_feed_in_order_and_a_trimmed_cursor_gets_a_gap(
    redis_url: str,
) -> None:
    queue = AgentQueue(redis_url, "spoke-t")
    try:
        await queue.records.insert(_spawn("a1"), 10_000)
        await queue.records.transition("a1", [AgentState.QUEUED], AgentState.STARTING)
        await queue.kills.request("a1", "k1")  # STARTING: a kill asks the worker
        await queue.records.insert(_spawn("a2", "alice"), 10_000)
        await queue.kills.request("a2", "k2")  # QUEUED: killed by the kill script
        items = await _items(queue, 0)
        events = [(i.cursor, i.agent_id, i.state, i.owner) for i in items if i.kind == "event"]
        assert events == [
            (1, "a1", "QUEUED", "operator"),
            (2, "a1", "STARTING", "operator"),
            (3, "a2", "QUEUED", "alice"),
            (4, "a2", "KILLED", "alice"),
        ]
        assert items[-1] == FeedItem(kind="heartbeat", cursor=4)
        # A cursor ahead of the feed (its Redis was reset): told, then everything kept.
        ahead = await _items(queue, 99)
        assert ahead[0].kind == "gap"
        assert "ahead" in ahead[0].detail
        assert [i.cursor for i in ahead[1:-1]] == [1, 2, 3, 4]
        # The cap trims the oldest entries; a cursor before them is told which are gone.
        await queue.feed.configure(5)
        for n in range(400):
            await queue.records.insert(_spawn(f"b{n}"), 10_000)
        kept = await queue.redis.xlen(queue.keys.feed)
        assert kept < 400
        first = (await queue.feed.read(0, 1))[0].cursor
        trimmed = await _items(queue, 2)
        assert trimmed[0].kind == "gap"
        assert f"entries 3-{first - 1} " in trimmed[0].detail
        assert trimmed[1].cursor == first
        assert [i.cursor for i in trimmed[1:-1]] == list(range(first, 405))
    finally:
        await queue.close()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[[hooks]]\nname = "x"\non = ["EXPLODED"]\nprogram = "/bin/true"\n', "unknown state"),
        ('[[hooks]]\nname = "x"\non = ["FAILED"]\n', "program must be a path"),
        ('[[hooks]]\non = ["FAILED"]\nprogram = "/bin/true"\n', "name must be"),
        (
            '[[hooks]]\nname = "x"\non = ["FAILED"]\nprogram = "/bin/true"\ntimeout_seconds = 0\n',
            "timeout_seconds must be a positive number",
        ),
        ('[hooks]\nname = "x"\n', "hooks must be an array of tables"),
        (
            '[[hooks]]\nname = "x"\non = ["FAILED"]\nprogram = "/bin/true"\nargs = ["a\\u0000b"]\n',
            "must not hold a NUL byte",
        ),
    ],
)
def test_a_bad_hooks_table_is_one_readable_line(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "spoke.toml"
    path.write_text('name = "s"\n' + table)
    with pytest.raises(SpokeConfigError, match=message):
        SpokeConfig.load(path, {})


def test_a_hook_program_is_resolved_against_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "spoke.toml"
    path.write_text(
        'name = "s"\n[[hooks]]\nname = "pager"\non = ["FAILED", "NEEDS_INPUT"]\n'
        'program = "bin/notify"\nargs = ["--to", "ops"]\nretries = 0\n'
    )
    [hook] = SpokeConfig.load(path, {}).hooks
    assert hook.program == tmp_path / "bin/notify"
    assert (hook.args, hook.retries, hook.on) == (("--to", "ops"), 0, {"FAILED", "NEEDS_INPUT"})


def _read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _lines_of(path: Path, n: int) -> list[dict[str, object]]:
    async with asyncio.timeout(20):
        while len(_read(path)) < n:  # noqa: ASYNC110  # a file the hook's process writes: polled
            await asyncio.sleep(0.05)
    return _read(path)


async def test_a_hook_resumes_from_its_cursor_after_a_restart(
    redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "got.jsonl"
    program = tmp_path / "record"
    program.write_text(
        f"#!{sys.executable}\nimport sys\nopen(sys.argv[1], 'a').write(sys.stdin.read())\n"
    )
    program.chmod(0o755)
    hook = Hook(name="rec", on=frozenset({"KILLED"}), program=program, args=(str(out),))
    settings = HookSettings(timeout_s=5, retries=0, backoff_s=0.1, heartbeat_s=0.2)
    queue = AgentQueue(redis_url, "spoke-h")
    try:
        hooks = Hooks([hook], "spoke-h", queue.feed, queue.redis, settings)
        hooks.start()
        await asyncio.sleep(0.3)  # a new hook starts with the changes after it started
        await queue.records.insert(_spawn("k1"), 10_000)
        await queue.kills.request("k1", "c1")
        [first] = await _lines_of(out, 1)
        assert first["agent_id"] == "k1"
        cursor_key = queue.keys.hook_cursor("rec")
        async with asyncio.timeout(20):  # stored once the program exited (at least once)
            while int(await queue.redis.get(cursor_key) or 0) < int(str(first["cursor"])):  # noqa: ASYNC110  # in Redis: polled
                await asyncio.sleep(0.05)
        await hooks.close()  # spoked stops; changes go on meanwhile (another spoked)
        for n in (2, 3):
            await queue.records.insert(_spawn(f"k{n}"), 10_000)
            await queue.kills.request(f"k{n}", f"c{n}")
        await queue.redis.delete(queue.keys.hook_lease("rec"))  # the old lease lapsed
        hooks = Hooks([hook], "spoke-h", queue.feed, queue.redis, settings)
        hooks.start()
        got = await _lines_of(out, 3)
        await hooks.close()
        assert [d["agent_id"] for d in got] == ["k1", "k2", "k3"]  # none twice, none lost
        assert {d["state"] for d in got} == {"KILLED"}
    finally:
        await queue.close()


def test_a_hook_that_exits_without_reading_its_event_does_not_stop_its_runner(
    redis_url: str, tmp_path: Path
) -> None:
    """On uvloop (the daemons' default loop) writing the event to a hook that already closed
    its stdin raised RuntimeError, which ended the hook's runner for the life of spoked (seen
    in a loaded CI run: the hook never ran again). Each event must reach the hook's cursor."""
    uvloop = pytest.importorskip("uvloop")
    quits = tmp_path / "quit"
    quits.write_text("#!/bin/sh\nexec 0<&-\nexit 0\n")  # closes its stdin, reads nothing
    quits.chmod(0o755)
    hook = Hook(name="quit", on=frozenset({"KILLED"}), program=quits)
    settings = HookSettings(timeout_s=5, retries=0, backoff_s=0.1, heartbeat_s=0.2)
    events = 40

    async def run() -> None:
        queue = AgentQueue(redis_url, "spoke-q")
        hooks = Hooks([hook], "spoke-q", queue.feed, queue.redis, settings)
        try:
            hooks.start()
            await asyncio.sleep(0.3)  # a new hook starts with the changes after it started
            for n in range(events):
                await queue.records.insert(_spawn(f"q{n}"), 10_000)
                await queue.kills.request(f"q{n}", f"c{n}")
            last = await queue.feed.last()
            cursor_key = queue.keys.hook_cursor("quit")
            async with asyncio.timeout(60):
                while int(await queue.redis.get(cursor_key) or 0) < last:  # noqa: ASYNC110  # in Redis: polled
                    await asyncio.sleep(0.05)
        finally:
            await hooks.close()
            await queue.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
