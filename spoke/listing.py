"""List pages bounded by bytes as well as by count (ListAgents, ListDeadLetters).

A page of up to 500 agents, each with a 64 KiB task and two 64 KiB output tails, is far
larger than a gRPC message may be; a reply that does not fit is never delivered, and the
spoke looks unreachable for as long as the agents are kept. So:

* every list item is cut (``list_item``): its task and progress message keep their first
  ``LIST_TEXT_BYTES``, its stdout and stderr tails their last, its receipt its status and the
  start of its summary, a SHADOWED agent's ``shadow_run`` over that is left out (its argv
  holds the task), and ``Agent.truncated`` says so (GetAgent returns the agent whole);
* a page stops adding items before its signed reply would pass the message limit, less
  ``REPLY_ROOM_BYTES`` for the reply's header, signature and envelopes (``bounded_page``):
  it is read again with as many items as fit, so its page token resumes right after the
  last item sent. A page always carries at least one item.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from hubspoke.gen.federation.v1 import agent_pb2, command_pb2

from . import wire
from .model import AgentRecord
from .pages import Page

__all__ = ["LIST_TEXT_BYTES", "REPLY_ROOM_BYTES", "bounded_page", "fit", "list_item"]

LIST_TEXT_BYTES = 2048
"""The most UTF-8 bytes of each task, tail, progress message and receipt summary a list
item carries (documented in agent.proto, ``Agent.truncated``)."""

REPLY_ROOM_BYTES = 16 * 1024
"""Room left under the message limit for the reply around a page: its header, the spoke's
signature and envelope, and a hub's response around it."""

PageReader = Callable[[int], Awaitable[Page]]
"""page size → the page at the request's token with at most that many agents."""


def _head(text: str, limit: int) -> str:
    if len(text) * 4 <= limit:  # a code point is at most 4 UTF-8 bytes: it fits, uncounted
        return text
    raw = text.encode()
    return raw[:limit].decode("utf-8", "ignore") if len(raw) > limit else text


def _tail(text: str, limit: int) -> str:
    if len(text) * 4 <= limit:
        return text
    raw = text.encode()
    return raw[-limit:].decode("utf-8", "ignore") if len(raw) > limit else text


def list_item(spoke: str, rec: AgentRecord, limit: int = LIST_TEXT_BYTES) -> agent_pb2.Agent:
    """The agent as a list shows it: long texts cut, marked ``truncated``."""
    agent = wire.to_agent(spoke, rec)
    # The record's own texts (what to_agent copied): a text that fits comes back as itself.
    for name, text, cut in (
        ("task", rec.task, _head),
        ("progress_message", rec.progress_message, _head),
        ("stdout_tail", rec.stdout_tail, _tail),
        ("stderr_tail", rec.stderr_tail, _tail),
    ):
        short = cut(text, limit)
        if short is not text:
            setattr(agent, name, short)
            agent.truncated = True
    if agent.HasField("receipt") and agent.receipt.ByteSize() > limit:
        receipt = agent_pb2.Receipt(
            status=_head(agent.receipt.status, 64), summary=_head(agent.receipt.summary, limit)
        )
        agent.receipt.CopyFrom(receipt)
        agent.truncated = True
    if agent.HasField("shadow_run") and agent.shadow_run.ByteSize() > limit:  # its argv holds
        agent.ClearField("shadow_run")  # the task: GetAgent has it whole
        agent.truncated = True
    return agent


def _item_bytes(item: agent_pb2.Agent) -> int:
    """What one item adds to an AgentPage: its tag, its length prefix and its bytes."""
    size = item.ByteSize()
    return 1 + (size.bit_length() + 6) // 7 + size


def fit(items: Sequence[agent_pb2.Agent], budget: int) -> int:
    """How many leading items fit in ``budget`` bytes of page (at least one, if any)."""
    used = 0
    for n, item in enumerate(items):
        used += _item_bytes(item)
        if used > budget:
            return max(n, 1)
    return len(items)


async def bounded_page(
    read: PageReader, page_size: int, spoke: str, max_message_bytes: int
) -> command_pb2.AgentPage:
    """The page of at most ``page_size`` agents, cut to what fits in one reply under
    ``max_message_bytes`` (module docstring)."""
    budget = max(max_message_bytes - REPLY_ROOM_BYTES, 0)
    size = page_size
    while True:
        page = await read(size)
        items = [list_item(spoke, rec) for rec in page.agents]
        n = fit(items, budget)
        if n >= len(items):
            return command_pb2.AgentPage(agents=items, next_page_token=page.next_token)
        size = n  # read again with as many as fit: the token then resumes after the last
