"""The console's pages and buttons: each handler reads or acts through the client, then
renders a template (GET) or redirects to the page that shows the result (POST).

A POST that htmx sends gets ``HX-Redirect`` instead of a 303 (htmx would follow a 303 in
the background and swap nothing), and its failure comes back as a message htmx puts into
the page's ``#flash``; without htmx, the same forms work as plain HTML forms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import grpc
from aiohttp import web

from hubspoke.client import AgentState, CallError, Client

from . import _data
from ._render import Renderer, agent_url, quote

__all__ = ["Views"]

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PAGE_SIZES: Final = (25, 50, 100, 200)
_REPLAYABLE: Final = frozenset({AgentState.FAILED, AgentState.TIMED_OUT, AgentState.DEAD_LETTERED})
_STATUS_OF: Final = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
}


class FormError(ValueError):
    """A spawn form field that cannot be sent."""


def route_name(request: web.Request, key: str) -> str:
    """A spoke or agent name from the path; 404 when it cannot be one."""
    value = request.match_info[key]
    if not _NAME_RE.fullmatch(value):
        raise web.HTTPNotFound(text=f"no such {key}\n")
    return value


def _htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


class Views:
    """Route handlers bound to one client and one renderer."""

    def __init__(self, client: Client, renderer: Renderer) -> None:
        self.client = client
        self.render = renderer

    def routes(self) -> list[web.RouteDef]:
        agent = "/agents/{spoke}/{agent}"
        return [
            web.get("/", self.federation),
            web.get("/agents", self.agents),
            web.get("/agents/new", self.spawn_form),
            web.post("/agents", self.spawn),
            web.get(agent, self.agent),
            web.post(agent + "/kill", self.kill),
            web.post(agent + "/replay", self.replay),
            web.post(agent + "/approve", self.approve),
            web.post(agent + "/reject", self.reject),
            web.get("/spokes/{spoke}", self.spoke),
            web.post("/spokes/{spoke}/pause", self.pause),
            web.post("/spokes/{spoke}/resume", self.resume),
            web.post("/spokes/{spoke}/dead-letters/{agent}/replay", self.replay_dead_letter),
        ]

    # -- helpers --------------------------------------------------------------------------

    def failure(self, exc: CallError, title: str) -> web.Response:
        return self.render.page(
            "error.html", status=_STATUS_OF.get(exc.code, 502), title=title, error=exc
        )

    def _done(self, request: web.Request, location: str) -> web.Response:
        if _htmx(request):
            return web.Response(headers={"HX-Redirect": location})
        return web.Response(status=303, headers={"Location": location})

    def _refused(self, request: web.Request, exc: CallError, title: str) -> web.Response:
        if _htmx(request):
            return web.Response(
                text=self.render.text("flash.html", title=title, error=exc),
                content_type="text/html",
                headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"},
            )
        return self.failure(exc, title)

    # -- federation -----------------------------------------------------------------------

    async def federation(self, request: web.Request) -> web.Response:
        try:
            view = await _data.federation(self.client)
        except CallError as exc:
            return self.failure(exc, "The hub did not answer")
        return self.render.page("federation.html", view=view, nav="federation")

    # -- agents ---------------------------------------------------------------------------

    async def agents(self, request: web.Request) -> web.Response:
        q = request.query
        spoke = q.get("spoke") or None
        if spoke is not None and not _NAME_RE.fullmatch(spoke):
            raise web.HTTPBadRequest(text="bad spoke name\n")
        try:
            states = [AgentState.parse(s) for s in q.getall("state", [])]
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"unknown state {exc}\n") from None
        size = int(q["size"]) if q.get("size", "").isdigit() else _PAGE_SIZES[1]
        size = size if size in _PAGE_SIZES else _PAGE_SIZES[1]
        try:
            spokes = await self.client.spokes()
            rows = await _data.agents_page(self.client, spoke, states, size, q.get("cursor", ""))
        except _data.CursorError:
            raise web.HTTPBadRequest(text="bad cursor\n") from None
        except CallError as exc:
            return self.failure(exc, "Could not list agents")
        return self.render.page(
            "agents.html",
            nav="agents",
            rows=rows,
            spokes=spokes,
            spoke=spoke or "",
            states=states,
            size=size,
            sizes=_PAGE_SIZES,
            cursor=q.get("cursor", ""),
            all_states=[s for s in AgentState if s != AgentState.UNSPECIFIED],
        )

    async def agent(self, request: web.Request) -> web.Response:
        spoke, agent_id = route_name(request, "spoke"), route_name(request, "agent")
        try:
            agent = await self.client.get(agent_id, spoke)
        except CallError as exc:
            return self.failure(exc, f"Agent {agent_id} on {spoke}")
        return self.render.page(
            "agent.html", nav="agents", agent=agent, replayable=agent.state in _REPLAYABLE
        )

    async def kill(self, request: web.Request) -> web.Response:
        spoke, agent_id = route_name(request, "spoke"), route_name(request, "agent")
        try:
            agent = await self.client.kill(agent_id, spoke)
        except CallError as exc:
            return self._refused(request, exc, f"Kill {agent_id} refused")
        return self._done(request, agent_url(agent))

    async def replay(self, request: web.Request) -> web.Response:
        spoke, agent_id = route_name(request, "spoke"), route_name(request, "agent")
        try:
            agent = await self.client.replay(agent_id, spoke)
        except CallError as exc:
            return self._refused(request, exc, f"Replay {agent_id} refused")
        return self._done(request, agent_url(agent))

    async def approve(self, request: web.Request) -> web.Response:
        """Approve a held agent as the console's principal (the spoke checks it)."""
        return await self._approval(request, "approve")

    async def reject(self, request: web.Request) -> web.Response:
        return await self._approval(request, "reject")

    async def _approval(self, request: web.Request, verb: str) -> web.Response:
        spoke, agent_id = route_name(request, "spoke"), route_name(request, "agent")
        form = await request.post()
        reason = form.get("reason", "")
        text = reason.strip() if isinstance(reason, str) else ""
        act = self.client.approve if verb == "approve" else self.client.reject
        try:
            agent = await act(agent_id, text, spoke)
        except CallError as exc:
            return self._refused(request, exc, f"{verb.capitalize()} {agent_id} refused")
        return self._done(request, agent_url(agent))

    # -- spawn ----------------------------------------------------------------------------

    async def spawn_form(self, request: web.Request) -> web.Response:
        try:
            spokes = await self.client.spokes()
        except CallError as exc:
            return self.failure(exc, "The hub did not answer")
        form = {"spoke": request.query.get("spoke", ""), "profile": "synthetic"}
        return self.render.page("spawn.html", nav="spawn", spokes=spokes, form=form, error="")

    async def spawn(self, request: web.Request) -> web.Response:
        raw = await request.post()
        form = {k: v.strip() for k, v in raw.items() if isinstance(v, str)}
        try:
            req = SpawnRequest.parse(form)
            agent = await self.client.spawn(
                req.spoke,
                req.profile,
                req.task,
                priority=req.priority,
                timeout_s=req.timeout_s,
                max_attempts=req.max_attempts,
                labels=req.labels,
            )
        except FormError as exc:
            if _htmx(request):
                return web.Response(
                    text=self.render.text("flash.html", title="Cannot spawn", error=str(exc)),
                    content_type="text/html",
                    headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"},
                )
            spokes = await self.client.spokes()
            return self.render.page(
                "spawn.html", status=400, nav="spawn", spokes=spokes, form=form, error=str(exc)
            )
        except CallError as exc:
            return self._refused(request, exc, "Spawn refused")
        return self._done(request, agent_url(agent))

    # -- spokes and queues ----------------------------------------------------------------

    async def spoke(self, request: web.Request) -> web.Response:
        spoke = route_name(request, "spoke")
        page_token = request.query.get("page", "")
        try:
            found = [s for s in await self.client.spokes() if s.name == spoke]
            if not found:
                raise web.HTTPNotFound(text=f"no spoke {spoke}\n")
            stats = await self.client.queue_stats(spoke)
            dead = await self.client.dead_letters(spoke, 50, page_token)
        except CallError as exc:
            return self.failure(exc, f"Spoke {spoke}")
        return self.render.page(
            "spoke.html", nav="federation", spoke=found[0], stats=stats, dead=dead
        )

    async def pause(self, request: web.Request) -> web.Response:
        spoke = route_name(request, "spoke")
        try:
            await self.client.pause(spoke)
        except CallError as exc:
            return self._refused(request, exc, f"Pause {spoke} refused")
        return self._done(request, f"/spokes/{quote(spoke)}")

    async def resume(self, request: web.Request) -> web.Response:
        spoke = route_name(request, "spoke")
        try:
            await self.client.resume(spoke)
        except CallError as exc:
            return self._refused(request, exc, f"Resume {spoke} refused")
        return self._done(request, f"/spokes/{quote(spoke)}")

    async def replay_dead_letter(self, request: web.Request) -> web.Response:
        spoke, agent_id = route_name(request, "spoke"), route_name(request, "agent")
        try:
            await self.client.replay(agent_id, spoke)
        except CallError as exc:
            return self._refused(request, exc, f"Replay {agent_id} refused")
        return self._done(request, f"/spokes/{quote(spoke)}")


@dataclass(frozen=True, slots=True)
class SpawnRequest:
    """What the spawn form asks for."""

    spoke: str
    profile: str
    task: str
    priority: int = 0
    timeout_s: float | None = None
    max_attempts: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, form: Mapping[str, str]) -> SpawnRequest:
        """Read the form's fields.

        Raises:
            FormError: a field is missing or malformed.
        """
        spoke = form.get("spoke", "")
        if not _NAME_RE.fullmatch(spoke):
            raise FormError("choose a spoke")
        task = form.get("task", "")
        if not task:
            raise FormError("the task is empty")
        priority = form.get("priority", "")
        if priority and (not priority.isdigit() or not 1 <= int(priority) <= 10):
            raise FormError("priority must be 1 (low) to 10 (urgent)")
        timeout: float | None = None
        if form.get("timeout"):
            try:
                timeout = float(form["timeout"])
            except ValueError:
                timeout = -1.0
            if not timeout > 0:
                raise FormError("the run timeout must be a positive number of seconds")
        attempts = form.get("max_attempts", "")
        if attempts and not attempts.isdigit():
            raise FormError("attempts must be a whole number")
        labels: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in form.get("labels", "").split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise FormError(f"label {item!r} is not key=value")
            labels[key.strip()] = value.strip()
        return cls(
            spoke=spoke,
            profile=form.get("profile") or "synthetic",
            task=task,
            priority=int(priority or 0),
            timeout_s=timeout,
            max_attempts=int(attempts or 0),
            labels=labels,
        )
