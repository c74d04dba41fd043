"""Pages from templates, with every value escaped (jinja2 autoescape, strict undefined).

Agent output, tasks, labels, receipts and error messages come from agents and servers, so
they reach HTML only through autoescaped ``{{ }}`` and URLs only through :func:`quote`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import quote as _quote
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from hubspoke.client import Agent, AgentState, SpokeHealth

__all__ = ["Renderer", "agent_url", "quote", "state_class"]

TEMPLATES: Final = Path(__file__).parent / "templates"
STATIC: Final = Path(__file__).parent / "static"

_STATE_CLASS: Final = {
    AgentState.SUCCEEDED: "ok",
    AgentState.FAILED: "bad",
    AgentState.DEAD_LETTERED: "bad",
    AgentState.EXPIRED: "bad",
    AgentState.RUNNING: "run",
    AgentState.STARTING: "run",
    AgentState.RETRYING: "warn",
    AgentState.KILLED: "warn",
    AgentState.TIMED_OUT: "warn",
    AgentState.QUEUED: "idle",
    AgentState.NEEDS_INPUT: "warn",
    AgentState.NEEDS_VERIFICATION: "warn",
    AgentState.AWAITING_APPROVAL: "warn",
    AgentState.REJECTED: "bad",
}
_HEALTH_CLASS: Final = {
    SpokeHealth.READY: "ok",
    SpokeHealth.DEGRADED: "warn",
    SpokeHealth.DRAINING: "warn",
    SpokeHealth.UNREACHABLE: "bad",
    SpokeHealth.DISCONNECTED: "bad",
    SpokeHealth.INCOMPATIBLE: "bad",
}
_RECEIPT_CLASS: Final = {"completed": "ok", "failed": "bad", "blocked": "warn"}


@functools.cache
def static(name: str) -> str:
    """The URL of a static file, versioned by its content (so a new release is refetched)."""
    digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]
    return f"/static/{quote(name)}?v={digest}"


def quote(text: str) -> str:
    """``text`` as one URL path segment."""
    return _quote(text, safe="")


def agent_url(agent: Agent, suffix: str = "") -> str:
    """The console's page of ``agent`` (plus ``/kill``, ``/events``, ...)."""
    return f"/agents/{quote(agent.spoke)}/{quote(agent.agent_id)}{suffix}"


def state_class(state: AgentState) -> str:
    """The badge colour of a state (see console.css)."""
    return _STATE_CLASS.get(state, "idle")


def health_class(health: SpokeHealth) -> str:
    return _HEALTH_CLASS.get(health, "idle")


def receipt_class(status: str) -> str:
    return _RECEIPT_CLASS.get(status, "idle")


def when(moment: dt.datetime | None) -> str:
    """A UTC time to the second, or "" when unset."""
    return "" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(moment: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """How long ago, roughly: ``4s ago``, ``3m ago``, ``2h ago``, ``5d ago``."""
    if moment is None:
        return "never"
    secs = max(0, int(((now or dt.datetime.now(dt.UTC)) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


def span(start: dt.datetime | None, end: dt.datetime | None) -> str:
    """A run time like ``1m 05s``, or "" when it has not started."""
    if start is None:
        return ""
    secs = int(((end or dt.datetime.now(dt.UTC)) - start).total_seconds())
    return f"{secs // 60}m {secs % 60:02d}s" if secs >= 60 else f"{max(secs, 0)}s"


def labels_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def with_query(path: str, **params: object) -> str:
    """``path`` with the params that are set (lists repeat their key)."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        pairs += [(key, str(v)) for v in values if v not in (None, "")]
    return f"{path}?{urlencode(pairs)}" if pairs else path


class Renderer:
    """The console's template environment and the values every page gets."""

    def __init__(self, common: Mapping[str, object]) -> None:
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.globals.update(
            common,
            agent_url=agent_url,
            quote=quote,
            static=static,
            with_query=with_query,
            AgentState=AgentState,
            nav="",
        )
        self._env.filters.update(
            state_class=state_class,
            health_class=health_class,
            receipt_class=receipt_class,
            when=when,
            ago=ago,
            labels_text=labels_text,
        )
        self._env.globals["span"] = span

    def text(self, template: str, **values: object) -> str:
        return self._env.get_template(template).render(**values)

    def page(self, template: str, status: int = 200, **values: object) -> web.Response:
        return web.Response(
            text=self.text(template, **values), status=status, content_type="text/html"
        )
