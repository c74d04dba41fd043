"""The console's door, over real HTTP to a real ``serve()``: the token, its cookie, the Host
header, POST origin and form token, and the headers every answer carries.

The client points at a hub nobody runs: a request the guard lets through reaches a page
that reports the hub unreachable (502), which is all these tests need to tell the two apart.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from hubspoke import keys, testing
from hubspoke.client import Client
from hubspoke.trust import TrustStore

aiohttp = pytest.importorskip("aiohttp")
ui = pytest.importorskip("hubspoke.hub.ui")


@dataclass
class Served:
    url: str
    base: str
    port: int
    token: str

    @property
    def cookie(self) -> dict[str, str]:
        return {"Cookie": f"hubspoke_ui_{self.port}={self.token}"}

    def host(self, name: str = "127.0.0.1") -> dict[str, str]:
        return {"Host": f"{name}:{self.port}"}


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    key = keys.generate("operator")
    client = Client(
        f"127.0.0.1:{testing.pick_free_port()}", "operator", key, TrustStore([]), timeout_s=2
    )
    announced: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(ui.serve(client, open_browser=False, announce=announced.set_result))
    try:
        url = await asyncio.wait_for(announced, 10)
        base = url.split("/?", 1)[0]
        yield Served(url, base, int(base.rsplit(":", 1)[1]), url.split("token=", 1)[1])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: each test says exactly which cookie it sends.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def test_the_url_is_loopback_with_a_32_byte_token() -> None:
    guard = ui.Guard.new(8123)
    assert guard.url.startswith("http://127.0.0.1:8123/?token=")
    assert len(guard.token) == 43  # 32 bytes, URL-safe base64 without padding
    assert ui.Guard.new(8123).token != guard.token
    assert ui.HOST == "127.0.0.1"


async def test_the_token_becomes_a_strict_httponly_cookie(served: Served, http) -> None:
    async with http.get(served.url, allow_redirects=False) as resp:
        assert resp.status == 303
        assert resp.headers["Location"] == "/"  # the token leaves the address bar
        cookie = resp.headers["Set-Cookie"]
    assert f"hubspoke_ui_{served.port}={served.token}" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    async with http.get(served.base + "/agents?token=" + served.token, allow_redirects=False) as r:
        assert r.headers["Location"] == "/agents"
    async with http.get(served.base + "/?token=x&spoke=a", allow_redirects=False) as resp:
        assert resp.status == 403


@pytest.mark.parametrize(
    "path", ["/", "/agents", "/agents/new", "/agents/s/a", "/agents/s/a/events", "/static/x.js"]
)
async def test_every_get_without_the_token_is_refused(served: Served, http, path: str) -> None:
    async with http.get(served.base + path) as resp:
        assert resp.status == 403
        assert "token" in await resp.text()
    wrong = {"Cookie": f"hubspoke_ui_{served.port}={served.token[:-1]}x"}
    async with http.get(served.base + path, headers=wrong) as resp:
        assert resp.status == 403


async def test_with_the_cookie_pages_and_static_files_are_served(served: Served, http) -> None:
    async with http.get(served.base + "/static/htmx.min.js", headers=served.cookie) as resp:
        assert resp.status == 200
        assert "htmx" in await resp.text()
    async with http.get(served.base + "/", headers=served.cookie) as resp:
        assert resp.status == 502  # through the guard; the hub is not there
        page = await resp.text()
        assert "The hub did not answer" in page
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Cache-Control"] == "no-store"
    headers = {**served.cookie, **served.host("localhost")}
    async with http.get(served.base + "/", headers=headers) as resp:
        assert resp.status == 502


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.nip.io", "0.0.0.0", "[::1]"])  # noqa: S104  # a Host header, not a bind
async def test_another_host_header_is_refused(served: Served, http, host: str) -> None:
    """DNS rebinding: a page on another name that resolves to 127.0.0.1 gets nothing."""
    headers = {**served.cookie, **served.host(host)}
    async with http.get(served.base + "/", headers=headers) as resp:
        assert resp.status == 403
    async with http.get(served.url, headers={"Host": "evil.example"}) as resp:
        assert resp.status == 403


async def test_posts_need_the_form_token_and_this_origin(served: Served, http) -> None:
    guard = ui.Guard(served.token, served.port)
    kill = served.base + "/agents/spoke-1/a1/kill"
    async with http.post(kill, headers=served.cookie) as resp:
        assert resp.status == 403
        assert "form token" in await resp.text()
    async with http.post(kill, headers=served.cookie, data={"csrf": "0" * 64}) as resp:
        assert resp.status == 403
    foreign = {**served.cookie, "Origin": "http://evil.example"}
    async with http.post(kill, headers=foreign, data={"csrf": guard.csrf}) as resp:
        assert resp.status == 403
        assert "cross-origin" in await resp.text()
    async with http.post(kill, data={"csrf": guard.csrf}) as resp:  # no cookie
        assert resp.status == 403
    ours = {**served.cookie, "Origin": served.base}
    async with http.post(kill, headers=ours, data={"csrf": guard.csrf}) as resp:
        assert resp.status != 403  # through the guard (the hub is not there)
    header = {**served.cookie, "X-CSRF-Token": guard.csrf}
    async with http.post(kill, headers=header) as resp:
        assert resp.status != 403


async def test_other_methods_are_refused(served: Served, http) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        async with http.request(method, served.base + "/", headers=served.cookie) as resp:
            assert resp.status == 403


def test_hubctl_does_not_load_the_console_until_ui_runs() -> None:
    code = (
        "import sys, hubspoke.hub.cli as c; c.build_parser(); "
        "bad = [m for m in ('aiohttp', 'jinja2', 'hubspoke.hub.ui') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_public_names_are_pinned() -> None:
    assert sorted(ui.__all__) == ["Guard", "HOST", "build_app", "serve"]
