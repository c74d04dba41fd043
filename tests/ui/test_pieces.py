"""The console's pure parts: the agents page's cursor and the spawn form."""

from __future__ import annotations

import base64

import pytest

pytest.importorskip("aiohttp")

from hubspoke.hub.ui import _data, _render
from hubspoke.hub.ui._views import FormError, SpawnRequest


def test_a_cursor_round_trips_each_spokes_token() -> None:
    tokens = {"spoke-1": "abc", "spoke-2": "0:x/y=="}
    assert _data.decode_cursor(_data.encode_cursor(tokens)) == tokens
    assert _data.encode_cursor({}) == ""


@pytest.mark.parametrize(
    "text",
    [
        "",
        "!!!",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"s": 1}').decode(),
        base64.urlsafe_b64encode(b'{"s": ""}').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_a_cursor_the_console_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(_data.CursorError):
        _data.decode_cursor(text)


def test_the_spawn_form_reads_every_field() -> None:
    req = SpawnRequest.parse(
        {
            "spoke": "spoke-1",
            "profile": "",
            "task": "duration=1",
            "priority": "7",
            "timeout": "2.5",
            "max_attempts": "3",
            "labels": "team=build, ticket = 42",
        }
    )
    assert req == SpawnRequest(
        "spoke-1", "synthetic", "duration=1", 7, 2.5, 3, {"team": "build", "ticket": "42"}
    )
    assert SpawnRequest.parse({"spoke": "s", "task": "t"}) == SpawnRequest("s", "synthetic", "t")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("spoke", "", "choose a spoke"),
        ("spoke", "a/b", "choose a spoke"),
        ("task", "", "the task is empty"),
        ("priority", "11", "priority"),
        ("priority", "x", "priority"),
        ("timeout", "-1", "timeout"),
        ("timeout", "soon", "timeout"),
        ("max_attempts", "1.5", "attempts"),
        ("labels", "novalue", "key=value"),
    ],
)
def test_the_spawn_form_refuses_bad_fields(field: str, value: str, message: str) -> None:
    form = {"spoke": "spoke-1", "task": "duration=1", field: value}
    with pytest.raises(FormError, match=message):
        SpawnRequest.parse(form)


def test_urls_quote_every_segment() -> None:
    assert _render.quote("a/b?c") == "a%2Fb%3Fc"
    assert _render.with_query("/agents", spoke="s 1", state=["A", "B"], cursor="") == (
        "/agents?spoke=s+1&state=A&state=B"
    )
