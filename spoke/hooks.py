"""Notification hooks: run a named local program on chosen state changes, off the worker's path.

A hook is a ``[[hooks]]`` table of the spoke's config::

    [[hooks]]
    name = "pager"                                  # required; names its cursor and its logs
    on = ["DEAD_LETTERED", "NEEDS_INPUT", "FAILED"] # states (Agent.State names, no prefix)
    program = "/usr/local/bin/notify"               # absolute, or relative to the config file
    args = ["--channel", "ops"]                     # argv after the program; no shell
    timeout_seconds = 10                            # optional: else hook_timeout_s
    retries = 3                                     # optional: else hook_retries

Each hook has a runner, a task of its own that follows the spoke's event feed (spoke/feed.py)
from a cursor kept in Redis (``hook-cursor:<name>``), so no worker ever waits on a hook, and a
hook resumes where it stood after a restart (at least once: an event whose run was cut short by
the restart is run again). For each matching event it runs the program (argv, no shell, a
minimal environment) with the event as one JSON object on stdin; a run that exits non-zero or
outlives its timeout (its process group is killed) is retried after ``hook_backoff_s`` ·
2^(n-1), at most ``retries`` times, then logged as given up and skipped. Failures are logged
with the hook, agent, state, attempt and exit status only: never the environment, arguments or
output. Several spoked processes sharing one spoke's Redis run each hook once: a runner holds
the hook's lease (``hook-lease:<name>``) while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from hubspoke import aio, errors

from .backend import BackendError
from .feed import Feed, FeedItem
from .model import AgentState

log = structlog.get_logger("hubspoke.spoke.hooks")

HOOK_STATES = frozenset(s.value for s in AgentState)
"""States a hook may name in ``on``."""

LEASE_MS = 30_000
"""How long a runner's hold on its hook lasts unless renewed (every poll renews it)."""

_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")
"""The only variables of spoked's environment a hook program sees (no secrets)."""


class HookConfigError(errors.ConfigError):
    """A ``[[hooks]]`` table is malformed."""


@dataclass(frozen=True, slots=True)
class Hook:
    """One ``[[hooks]]`` table."""

    name: str
    on: frozenset[str]
    program: Path
    args: tuple[str, ...] = ()
    timeout_s: float | None = None
    """None: the spoke's ``hook_timeout_s``."""
    retries: int | None = None
    """None: the spoke's ``hook_retries``."""


@dataclass(frozen=True, slots=True)
class HookSettings:
    """The spoke-wide hook values (SpokeConfig ``hook_*``)."""

    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 1.0
    heartbeat_s: float = 5.0


def hooks_from_table(value: object, base: Path | None, where: str) -> tuple[Hook, ...]:
    """``[[hooks]]`` (a list of tables) as hooks; relative programs against ``base``."""
    if not isinstance(value, list):
        raise HookConfigError("hooks must be an array of tables: [[hooks]]")
    out: list[Hook] = []
    for i, table in enumerate(value):
        if not isinstance(table, dict):
            raise HookConfigError(f"hooks[{i}] must be a table")
        out.append(_hook(table, base, f"hooks[{i}]"))
    names = [h.name for h in out]
    if len(set(names)) != len(names):
        raise HookConfigError("hooks: every hook needs a name of its own")
    return tuple(out)


def _hook(table: Mapping[str, object], base: Path | None, where: str) -> Hook:
    unknown = set(table) - {"name", "on", "program", "args", "timeout_seconds", "retries"}
    if unknown:
        raise HookConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    name = table.get("name")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "._-" for c in name):
        raise HookConfigError(f"{where}: name must be 1+ characters of A-Z a-z 0-9 . _ -")
    on = table.get("on")
    if not isinstance(on, list) or not on or not all(isinstance(s, str) for s in on):
        raise HookConfigError(f"{where}: on must be a non-empty list of state names")
    bad = [s for s in on if s not in HOOK_STATES]
    if bad:
        raise HookConfigError(f"{where}: on names an unknown state {bad[0]!r}")
    program = table.get("program")
    if not isinstance(program, str) or not program:
        raise HookConfigError(f"{where}: program must be a path")
    path = Path(program)
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    args = table.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise HookConfigError(f"{where}: args must be a list of strings")
    if any("\0" in text for text in (program, *args)):  # exec cannot pass one; uvloop cuts at it
        raise HookConfigError(f"{where}: program and args must not hold a NUL byte")
    timeout = table.get("timeout_seconds")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise HookConfigError(f"{where}: timeout_seconds must be a positive number")
    retries = table.get("retries")
    if retries is not None and (not isinstance(retries, int) or not 0 <= retries <= 100):
        raise HookConfigError(f"{where}: retries must be 0-100")
    return Hook(
        name=name,
        on=frozenset(on),
        program=path,
        args=tuple(args),
        timeout_s=float(timeout) if timeout is not None else None,
        retries=retries,
    )


def event_json(spoke: str, item: FeedItem) -> bytes:
    """What a hook program reads on stdin: one JSON object and a newline."""
    doc = {
        "spoke": spoke,
        "agent_id": item.agent_id,
        "agent": f"spokes/{spoke}/agents/{item.agent_id}",
        "state": item.state,
        "reason": item.reason,
        "owner": item.owner,
        "sequence": item.seq,
        "time_ms": item.time_ms,
        "cursor": item.cursor,
    }
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


class HookRunner:
    """Runs one hook for one spoke; ``run()`` until cancelled."""

    def __init__(
        self,
        hook: Hook,
        spoke: str,
        feed: Feed,
        redis: aioredis.Redis,
        settings: HookSettings,
    ) -> None:
        self.hook = hook
        self.spoke = spoke
        self.feed = feed
        self.redis = redis
        self.settings = settings
        self._me = uuid.uuid4().hex
        self._cursor_key = feed.keys.hook_cursor(hook.name)
        self._lease_key = feed.keys.hook_lease(hook.name)

    async def run(self) -> None:
        while True:
            aio.raise_if_cancelling()  # a cancel redis-py swallowed (shared/aio.py)
            try:
                if await self._hold():
                    await self._follow()
                else:
                    await asyncio.sleep(LEASE_MS / 3000)
            except (RedisError, OSError, BackendError) as exc:
                log.warning("hook_feed_retrying", hook=self.hook.name, error=type(exc).__name__)
                await asyncio.sleep(1.0)
            except Exception as exc:  # a runner that stopped would stop its hook for good
                # the error's type only: a traceback may carry the event or the environment
                log.error("hook_runner_failed", hook=self.hook.name, error=type(exc).__name__)  # noqa: TRY400
                await asyncio.sleep(1.0)

    async def _hold(self) -> bool:
        """Take or renew this hook's lease; whether this runner holds it."""
        got = await self.redis.set(self._lease_key, self._me, nx=True, px=LEASE_MS)
        if got:
            return True
        held = await self.redis.get(self._lease_key)
        if held in (self._me, self._me.encode()):
            await self.redis.pexpire(self._lease_key, LEASE_MS)
            return True
        return False

    async def _follow(self) -> None:
        raw = await self.redis.get(self._cursor_key)
        after = int(raw or 0)
        if raw is None:
            after = await self.feed.last()  # a new hook starts with what happens from now
            await self.redis.set(self._cursor_key, after)
        items = self.feed.follow(after, live=True, heartbeat_s=self.settings.heartbeat_s)
        async with contextlib.aclosing(items):
            async for item in items:
                if not await self._hold():
                    return  # another runner took the hook over (this one was paused too long)
                if item.kind == "event" and item.state in self.hook.on:
                    await self._deliver(item)
                if item.kind == "gap":
                    log.warning("hook_feed_gap", hook=self.hook.name, detail=item.detail)
                await self.redis.set(self._cursor_key, item.cursor)

    async def _deliver(self, item: FeedItem) -> None:
        retries = self.hook.retries if self.hook.retries is not None else self.settings.retries
        data = event_json(self.spoke, item)
        for attempt in range(1, retries + 2):
            await self._hold()  # renewed per attempt: retries may outlast one lease
            outcome = await self._run_once(data)
            if outcome == "ok":
                log.info("hook_ran", hook=self.hook.name, agent=item.agent_id, state=item.state)
                return
            log.warning(
                "hook_failed",
                hook=self.hook.name,
                agent=item.agent_id,
                state=item.state,
                attempt=attempt,
                outcome=outcome,
            )
            if attempt <= retries:
                await asyncio.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
        log.error("hook_gave_up", hook=self.hook.name, agent=item.agent_id, state=item.state)

    async def _run_once(self, data: bytes) -> str:
        """``ok``, ``exit N``, ``timeout`` or ``not started``."""
        timeout = self.hook.timeout_s or self.settings.timeout_s
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
        env["HUBSPOKE_HOOK"] = self.hook.name
        try:
            proc = await asyncio.create_subprocess_exec(
                str(self.hook.program),
                *self.hook.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError:
            return "not started"
        try:
            async with asyncio.timeout(timeout):
                try:
                    await proc.communicate(data)
                except (BrokenPipeError, ConnectionResetError, RuntimeError):
                    # It closed its stdin before reading the event (uvloop raises
                    # RuntimeError for a pipe it saw close): its exit status decides.
                    await proc.wait()
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return "timeout"
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):  # reaped, so no process outlives the runner
                    await proc.wait()
            raise
        return "ok" if proc.returncode == 0 else f"exit {proc.returncode}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Hooks:
    """Every hook's runner for one spoked process: ``start()`` in the loop, ``close()``."""

    def __init__(
        self,
        hooks: Sequence[Hook],
        spoke: str,
        feed: Feed,
        redis: aioredis.Redis,
        settings: HookSettings,
    ) -> None:
        self._runners = [HookRunner(h, spoke, feed, redis, settings) for h in hooks]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for runner in self._runners:
            task = asyncio.get_running_loop().create_task(
                runner.run(), name=f"hook-{runner.hook.name}"
            )
            task.add_done_callback(_log_crash)
            self._tasks.append(task)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("hook_runner_crashed", task=task.get_name(), exc_info=task.exception())
