"""``SyncClient``: the async :class:`Client` for code without an event loop.

It owns a private event loop (``asyncio.Runner``) on which the wrapped client's channel lives,
and runs each call to completion on it. Do not use it from inside a running event loop (use
:class:`Client` there); it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncGenerator, Collection, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from . import _enrol
from ._client import Client
from ._events import FeedEvent
from ._placement import Placement
from ._types import (
    Agent,
    AgentEvent,
    AgentList,
    AgentPage,
    AgentState,
    FederatedQueueStats,
    QueueStats,
    Spoke,
)

__all__ = ["SyncClient"]

_E = TypeVar("_E")


class SyncClient:
    """Blocking calls to one hub; use ``with``, or call :meth:`close`.

    Example::

        with SyncClient.from_config("hubctl.toml") as client:
            agent = client.wait(client.spawn("spoke-1", "synthetic", "duration=1"))
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        """The async client every call goes through."""
        self._runner = asyncio.Runner()

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        hub: str | None = None,
        timeout_s: float = 15.0,
        env: Mapping[str, str] | None = None,
    ) -> SyncClient:
        """As :meth:`Client.from_config`, wrapped."""
        return cls(Client.from_config(path, hub=hub, timeout_s=timeout_s, env=env))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and the private loop; idempotent."""
        try:
            self._runner.run(self.client.close())
        except RuntimeError:  # the runner is already closed
            return
        self._runner.close()

    def spawn(
        self,
        spoke: str,
        profile: str,
        task: str,
        *,
        priority: int = 0,
        timeout_s: float | None = None,
        command_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        max_attempts: int = 0,
        delay_s: float | None = None,
        start_within_s: float | None = None,
        dedupe_key: str = "",
        dedupe_from_task: bool = False,
        selector: Mapping[str, str] | None = None,
    ) -> Agent:
        """See :meth:`Client.spawn`."""
        return self._runner.run(
            self.client.spawn(
                spoke,
                profile,
                task,
                priority=priority,
                timeout_s=timeout_s,
                command_id=command_id,
                labels=labels,
                max_attempts=max_attempts,
                delay_s=delay_s,
                start_within_s=start_within_s,
                dedupe_key=dedupe_key,
                dedupe_from_task=dedupe_from_task,
                selector=selector,
            )
        )

    def plan_spawn(
        self,
        spoke: str,
        profile: str,
        task: str,
        *,
        command_id: str | None = None,
        selector: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Placement:
        """See :meth:`Client.plan_spawn`."""
        return self._runner.run(
            self.client.plan_spawn(
                spoke, profile, task, command_id=command_id, selector=selector, **options
            )
        )

    def get(self, agent: str, spoke: str | None = None) -> Agent:
        """See :meth:`Client.get`."""
        return self._runner.run(self.client.get(agent, spoke))

    def kill(self, agent: str, spoke: str | None = None) -> Agent:
        """See :meth:`Client.kill`."""
        return self._runner.run(self.client.kill(agent, spoke))

    def verify(self, agent: str, items: Mapping[str, str], spoke: str | None = None) -> Agent:
        """See :meth:`Client.verify`."""
        return self._runner.run(self.client.verify(agent, items, spoke))

    def send(self, agent: str, text: str, spoke: str | None = None) -> Agent:
        """See :meth:`Client.send`."""
        return self._runner.run(self.client.send(agent, text, spoke))

    def approve(self, agent: str, reason: str = "", spoke: str | None = None) -> Agent:
        """See :meth:`Client.approve`."""
        return self._runner.run(self.client.approve(agent, reason, spoke))

    def reject(self, agent: str, reason: str = "", spoke: str | None = None) -> Agent:
        """See :meth:`Client.reject`."""
        return self._runner.run(self.client.reject(agent, reason, spoke))

    def replay(self, agent: str, spoke: str | None = None) -> Agent:
        """See :meth:`Client.replay`."""
        return self._runner.run(self.client.replay(agent, spoke))

    def list(
        self,
        spoke: str | None = None,
        page_size: int = 50,
        states: Collection[int] = (),
        page_token: str = "",
        *,
        labels: Mapping[str, str] | None = None,
        profile: str = "",
        owner: str = "",
        dedupe_key: str = "",
    ) -> AgentList:
        """See :meth:`Client.list`."""
        return self._runner.run(
            self.client.list(
                spoke,
                page_size,
                states,
                page_token,
                labels=labels,
                profile=profile,
                owner=owner,
                dedupe_key=dedupe_key,
            )
        )

    def watch(self, agent: str, spoke: str | None = None, after: int = 0) -> Iterator[AgentEvent]:
        """See :meth:`Client.watch`; each ``next`` runs the stream until its next event."""
        events = self.client.watch(agent, spoke, after)
        try:
            while True:
                try:
                    yield self._runner.run(_next(events))
                except StopAsyncIteration:
                    return
        finally:
            self._runner.run(events.aclose())

    def events(
        self,
        *,
        spoke: str | None = None,
        states: Collection[AgentState | str] = (),
        since: str | Mapping[str, int] | None = None,
        follow: bool = False,
    ) -> Iterator[FeedEvent]:
        """See :meth:`Client.events`; each ``next`` runs the stream until its next entry."""
        entries = self.client.events(spoke=spoke, states=states, since=since, follow=follow)
        try:
            while True:
                try:
                    yield self._runner.run(_next(entries))
                except StopAsyncIteration:
                    return
        finally:
            self._runner.run(entries.aclose())

    def wait(
        self, agent: str | Agent, spoke: str | None = None, *, timeout: float | None = None
    ) -> Agent:
        """See :meth:`Client.wait`."""
        return self._runner.run(self.client.wait(agent, spoke, timeout=timeout))

    def spokes(self) -> builtins.list[Spoke]:
        """See :meth:`Client.spokes`."""
        return self._runner.run(self.client.spokes())

    def drain_spoke(self, spoke: str) -> Spoke:
        """See :meth:`Client.drain_spoke`."""
        return self._runner.run(self.client.drain_spoke(spoke))

    def undrain_spoke(self, spoke: str) -> Spoke:
        """See :meth:`Client.undrain_spoke`."""
        return self._runner.run(self.client.undrain_spoke(spoke))

    def enroll_spoke(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        address: str = "",
        connect: bool = False,
        ttl_s: float | None = None,
    ) -> _enrol.EnrolmentTicket:
        """See :meth:`Client.enroll_spoke`."""
        return self._runner.run(
            self.client.enroll_spoke(
                name, labels=labels, address=address, connect=connect, ttl_s=ttl_s
            )
        )

    def remove_spoke(self, name: str) -> _enrol.Membership:
        """See :meth:`Client.remove_spoke`."""
        return self._runner.run(self.client.remove_spoke(name))

    def membership(self) -> _enrol.Membership:
        """See :meth:`Client.membership`."""
        return self._runner.run(self.client.membership())

    def queue_stats(self, spoke: str) -> QueueStats:
        """See :meth:`Client.queue_stats`."""
        return self._runner.run(self.client.queue_stats(spoke))

    def queue_stats_all(self) -> FederatedQueueStats:
        """See :meth:`Client.queue_stats_all`."""
        return self._runner.run(self.client.queue_stats_all())

    def pause(self, spoke: str) -> QueueStats:
        """See :meth:`Client.pause`."""
        return self._runner.run(self.client.pause(spoke))

    def resume(self, spoke: str) -> QueueStats:
        """See :meth:`Client.resume`."""
        return self._runner.run(self.client.resume(spoke))

    def drain(self, spoke: str) -> QueueStats:
        """See :meth:`Client.drain`."""
        return self._runner.run(self.client.drain(spoke))

    def dead_letters(self, spoke: str, page_size: int = 50, page_token: str = "") -> AgentPage:
        """See :meth:`Client.dead_letters`."""
        return self._runner.run(self.client.dead_letters(spoke, page_size, page_token))


async def _next(events: AsyncGenerator[_E, None]) -> _E:
    return await anext(events)
