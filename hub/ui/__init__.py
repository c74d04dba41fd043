"""``hubctl ui``: a web console served on 127.0.0.1 by the operator's own hubctl.

It acts with the operator's identity through :class:`hubspoke.client.Client` (as
``kubectl proxy`` does), so it adds no server and no credential to the federation. Pages:
the federation (spokes, queues, what needs attention), agents across spokes, one agent
(live state, progress and output over server-sent events, receipt, kill and replay), and a
spoke's queue (pause, resume, dead letters, replay). Server-rendered HTML, htmx and one
small script; no build step. Needs the ``ui`` extra (aiohttp, jinja2).

Security (``_guard``): loopback only, a random token in the URL traded for an HttpOnly
SameSite=Strict cookie, the Host header checked, POSTs checked for their origin and form
token, everything escaped, a strict Content-Security-Policy.
"""

from __future__ import annotations

from ._app import HOST, build_app, serve
from ._guard import Guard

__all__ = ["HOST", "Guard", "build_app", "serve"]
