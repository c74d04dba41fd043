"""An agent's events as server-sent events: ``Client.watch``, re-sent to the browser.

Each verified event becomes one SSE message named after its kind (``state``, ``progress``,
``stdout``, ``stderr``, ``dropped``) with ``id:`` its sequence, so a browser that
reconnects sends ``Last-Event-ID`` and resumes after it. Heartbeats become SSE comments
(they keep proxies and the browser from giving up on a quiet agent). When the watch ends
(the agent reached its final state) an ``end`` message tells the page to close the stream,
since ``EventSource`` would otherwise reconnect forever; a failed watch sends ``failure``
with the error first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Final

from aiohttp import web

from hubspoke.client import AgentEvent, CallError, Client, EventKind

from ._views import route_name

__all__ = ["EventStreams", "event_doc"]

_NAMES: Final = {
    EventKind.STATE: "state",
    EventKind.PROGRESS: "progress",
    EventKind.STDOUT: "stdout",
    EventKind.STDERR: "stderr",
    EventKind.DROPPED: "dropped",
}


def event_doc(event: AgentEvent) -> dict[str, object]:
    """The JSON the page's script reads (console.js)."""
    return {
        "seq": event.sequence,
        "time": event.event_time.isoformat() if event.event_time is not None else "",
        "state": event.state.name,
        "final": event.state.final if event.kind == EventKind.STATE else False,
        "reason": event.reason,
        "data": event.data,
        "percent": event.progress_percent,
    }


def _message(name: str, doc: Mapping[str, object], event_id: int | None = None) -> bytes:
    # json.dumps escapes newlines, so the data is one line whatever the agent printed.
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(doc)}\n\n".encode()


class EventStreams:
    """The ``/agents/{spoke}/{agent}/events`` handler; tracks open streams so that stopping
    the console ends them at once instead of waiting out the server's grace."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._open: set[asyncio.Task[object]] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        spoke, agent_id = route_name(request, "spoke"), route_name(request, "agent")
        last = request.headers.get("Last-Event-ID", "")
        after = int(last) if last.isdigit() else 0
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._open.add(task)
        try:
            await self._relay(response, agent_id, spoke, after)
        except ConnectionResetError:
            pass  # the page went away
        finally:
            if task is not None:
                self._open.discard(task)
        return response

    async def _relay(
        self, response: web.StreamResponse, agent_id: str, spoke: str, after: int
    ) -> None:
        events = self.client.watch(agent_id, spoke, after)
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    name = _NAMES.get(event.kind)
                    if name is None:
                        await response.write(b": heartbeat\n\n")
                    else:
                        await response.write(_message(name, event_doc(event), event.sequence))
        except CallError as exc:
            doc = {"code": exc.code.name, "reason": exc.reason, "message": str(exc)}
            await response.write(_message("failure", doc))
        await response.write(_message("end", {}))

    async def close_all(self, _app: web.Application) -> None:
        """Cancel every open stream (``on_shutdown``)."""
        for task in list(self._open):
            task.cancel()
