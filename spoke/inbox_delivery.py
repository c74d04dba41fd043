"""One attempt's inbox, as the worker runs it: messages from Redis to the agent's file.

Before the program starts, :meth:`AgentInbox.prepare` reads every message kept for the agent
(spoke/inbox.py) and writes the inbox (spoke/inbox_files.py); it returns the variables the
agent gets (``HUBSPOKE_INBOX``, and ``HUBSPOKE_INPUT`` with the latest text when there is
one). While the program runs the worker calls :meth:`AgentInbox.poll` once a second (with
its kill check), which appends the messages kept since. An attempt that ends NEEDS_INPUT
while a message it never got waits (kept after the last poll, or for a profile with no
inbox) is resumed by it at once (:meth:`AgentInbox.unread`, spoke/inbox.py ``resume``).
:meth:`AgentInbox.close` removes the file when the attempt is over. Only the worker that
holds the agent writes its inbox, so messages reach the host the agent runs on, whichever
spoked took the SendInput call.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import structlog

from .config import SpokeConfig
from .inbox import Inboxes
from .inbox_files import InboxFile, inbox_path
from .profiles import Profile

__all__ = ["AgentInbox", "inbox_root"]

log = structlog.get_logger("hubspoke.spoke.inbox")


def inbox_root(config: SpokeConfig) -> Path:
    """The spoke's inbox directory: ``inbox_dir``, or one of its own under the system's
    temporary directory."""
    if config.inbox_dir is not None:
        return config.inbox_dir
    return Path(tempfile.gettempdir()) / f"hubspoke-inbox-{os.getuid()}-{config.name}"


class AgentInbox:
    """The inbox of one attempt of one agent (module docstring)."""

    def __init__(
        self, inboxes: Inboxes, config: SpokeConfig, profile: Profile, agent_id: str
    ) -> None:
        self._inboxes = inboxes
        self.agent_id = agent_id
        self.file = InboxFile(profile.inbox, inbox_path(inbox_root(config), agent_id))
        self._seen = 0
        """The last message the attempt started with."""

    async def prepare(self, kept: int | None = None) -> Mapping[str, str]:
        """Write the inbox with every message so far; the agent's extra environment.
        ``kept``: how many messages the agent's record counted (``inputs``) when the worker
        read it; 0 skips reading them (a first attempt's usual case: one round trip less
        before it starts). One sent since reaches the agent with the next :meth:`poll`."""
        messages = await self._inboxes.messages(self.agent_id) if kept != 0 else []
        self.file.prepare(messages)
        self._seen = messages[-1].seq if messages else 0
        return self.file.environment(messages)

    async def unread(self) -> int:
        """The first message kept for the agent that this attempt never got (kept after its
        last poll, or with no inbox to write it to): its seq, or 0 when there is none."""
        fresh = await self._inboxes.messages(self.agent_id, max(self._seen, self.file.delivered))
        return fresh[0].seq if fresh else 0

    async def poll(self) -> int:
        """Append the messages kept since the last call; how many. A file that cannot be
        written is logged, not raised (the agent runs on; Redis keeps the messages)."""
        if self.file.kind == "none":
            return 0
        messages = await self._inboxes.messages(self.agent_id, self.file.delivered)
        try:
            return self.file.deliver(messages)
        except OSError as exc:
            log.warning("inbox_write_failed", agent=self.agent_id, error=exc.strerror)
            return 0

    def close(self) -> None:
        try:
            self.file.close()
        except OSError as exc:
            log.warning("inbox_remove_failed", agent=self.agent_id, error=exc.strerror)
