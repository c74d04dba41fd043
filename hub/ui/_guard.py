"""Who may talk to the console: the holder of its token, from a page of its own origin.

The console acts with the operator's identity, so any request it serves is the operator's
act. Every request must pass, in this order:

1. **Host**: ``127.0.0.1:PORT`` or ``localhost:PORT`` exactly, so a DNS-rebound name that
   resolves to 127.0.0.1 cannot read pages (its Host header names the attacker's domain).
2. **Token**: the 32-byte random token in ``?token=`` (the URL ``hubctl ui`` prints), or the
   cookie the first page sets from it (HttpOnly, SameSite=Strict). A GET carrying the token
   is answered with the cookie and a redirect to the same URL without it, so the token does
   not stay in the address bar or the history.
3. **Forgery** (POST only): the ``Origin`` header, when sent, must be this origin, and the
   form (or the ``X-CSRF-Token`` header) must carry the session's form token, an HMAC of
   the token that pages embed.

Anything else is 403. Pages also get a strict Content-Security-Policy (scripts, styles and
connections from this origin only; no frames), so even markup that escaped escaping could
not run a script.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode

from aiohttp import web

__all__ = ["CSRF_FIELD", "Guard"]

TOKEN_BYTES: Final = 32
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Guard:
    """The console's secret and the origin it answers on."""

    token: str
    """URL-safe text of :data:`TOKEN_BYTES` random bytes."""
    port: int

    @classmethod
    def new(cls, port: int) -> Guard:
        """A fresh random token for a console listening on 127.0.0.1:``port``."""
        return cls(secrets.token_urlsafe(TOKEN_BYTES), port)

    @property
    def url(self) -> str:
        """What the operator opens: the console's root with the token."""
        return f"http://127.0.0.1:{self.port}/?{urlencode({'token': self.token})}"

    @property
    def cookie_name(self) -> str:
        # Cookies are not scoped by port: one name per port keeps two consoles apart.
        return f"hubspoke_ui_{self.port}"

    @property
    def csrf(self) -> str:
        """The form token pages embed and POSTs must return."""
        return hmac.new(self.token.encode(), b"hubspoke-ui-csrf", hashlib.sha256).hexdigest()

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset({f"127.0.0.1:{self.port}", f"localhost:{self.port}"})

    def _matches(self, given: str | None, expected: str) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), expected.encode())

    async def check(self, request: web.Request) -> str | None:
        """Why ``request`` is refused, or None when it may proceed."""
        host = request.headers.get("Host", "")
        if host not in self.hosts:
            return "unexpected Host header"
        by_query = self._matches(request.query.get("token"), self.token)
        if not by_query and not self._matches(request.cookies.get(self.cookie_name), self.token):
            return "missing or invalid token: open the URL hubctl ui printed"
        if request.method in ("GET", "HEAD"):
            return None
        if request.method != "POST":
            return "method not allowed"
        origin = request.headers.get("Origin")
        if origin is not None and origin not in {f"http://{h}" for h in self.hosts}:
            return "cross-origin request"
        form = await request.post()
        field = form.get(CSRF_FIELD)
        given = request.headers.get(CSRF_HEADER) or (field if isinstance(field, str) else None)
        if not self._matches(given, self.csrf):
            return "missing or invalid form token"
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse (403) what :meth:`check` refuses; trade a URL token for the cookie."""
        why = await self.check(request)
        if why is not None:
            raise web.HTTPForbidden(text=f"403 Forbidden: {why}\n", headers=_SECURITY_HEADERS)
        if "token" in request.query and request.method == "GET":
            query = {k: v for k, v in request.query.items() if k != "token"}
            target = request.path + (f"?{urlencode(query)}" if query else "")
            response: web.StreamResponse = web.Response(status=303, headers={"Location": target})
            self._set_cookie(response)
        else:
            response = await handler(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def _set_cookie(self, response: web.StreamResponse) -> None:
        response.set_cookie(
            self.cookie_name, self.token, path="/", httponly=True, samesite="Strict"
        )
