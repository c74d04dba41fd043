"""The cheaper log chain (hubspoke.log_processors) writes what structlog's stock chain wrote.

A real gRPC server built by hubspoke.grpc.server answers the same calls once under each
chain; every line (the canonical ``rpc`` line, an internal error's traceback line) must
carry the same fields with the same values, but for the timestamp (same format) and the
duration."""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf import message_factory
from google.protobuf.message import Message

from hubspoke import errors, log_processors
from hubspoke import logging as hs_logging
from hubspoke.gen.federation.v1 import spoke_service_pb2
from hubspoke.grpc.server import BuiltServer, ServerOptions, Service, bind_command, build_server

_SERVICE = spoke_service_pb2.DESCRIPTOR.services_by_name["SpokeService"]
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


def _stock_chain() -> list[Any]:
    """shared/logging.py's processors before issue 13's third round."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(),
    ]


class _Servicer:
    """GetQueueStats answers; GetAgent is refused; ListAgents fails inside."""

    def __getattr__(self, name: str) -> Any:
        out = message_factory.GetMessageClass(_SERVICE.methods_by_name[name].output_type)

        async def impl(request: Message, context: object) -> Message:
            bind_command(f"cmd-{name}", "operator")
            if name == "GetAgent":
                raise errors.InvalidCommandError("no such thing")
            if name == "ListAgents":
                raise RuntimeError("boom")
            return out()

        return impl


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    chain = list(saved["processors"])  # _grab_into changes the configured list in place
    yield
    saved["processors"][:] = chain
    structlog.configure(**saved)


@pytest.fixture
async def server() -> AsyncIterator[BuiltServer]:
    built = build_server([Service(_SERVICE, _Servicer())], "127.0.0.1:0", ServerOptions())
    await built.server.start()
    yield built
    await built.server.stop(None)


def _grab_into(lines: list[str], processors: list[Any]) -> None:
    """Make the configured chain ``processors`` and a last step that keeps each rendered
    line. The configured list is changed in place: loggers cached on first use hold it."""

    def grab(logger: object, name: str, rendered: Any) -> Any:
        lines.append(rendered)
        raise structlog.DropEvent

    structlog.get_config()["processors"][:] = [*processors, grab]


async def _calls(channel: grpc.aio.Channel, lines: list[str]) -> list[dict[str, Any]]:
    for method in ("GetQueueStats", "GetAgent", "ListAgents"):
        call = channel.unary_unary(f"/{_SERVICE.full_name}/{method}")
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call(b"", timeout=10)
    return [json.loads(line) for line in lines]


async def test_the_rpc_lines_are_those_of_the_stock_chain(
    server: BuiltServer, restore_structlog: None
) -> None:
    hs_logging.configure("info", json=True)
    structlog.configure(cache_logger_on_first_use=False)  # later tests reconfigure the chain
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # one peer
        _grab_into(mine := [], list(structlog.get_config()["processors"]))
        ours = await _calls(channel, mine)
        _grab_into(theirs := [], _stock_chain())
        stock = await _calls(channel, theirs)
    assert [e["event"] for e in ours] == ["rpc", "rpc", "rpc_internal_error", "rpc"]
    assert len(ours) == len(stock)
    for mine, theirs in zip(ours, stock, strict=True):
        assert set(mine) == set(theirs)
        for key in mine:
            if key == "timestamp":
                assert _STAMP.fullmatch(mine[key])
                assert _STAMP.fullmatch(theirs[key])
            elif key != "duration_ms":
                assert mine[key] == theirs[key], key
    assert (ours[1]["code"], ours[1]["reason"], ours[1]["command_id"]) == (
        "INVALID_ARGUMENT",
        "INVALID_COMMAND",
        "cmd-GetAgent",
    )
    assert "RuntimeError: boom" in ours[2]["exception"]


@pytest.mark.parametrize(
    "nanos",
    [0, 1_700_000_000_000_000_000, 1_700_000_000_000_001_000, 1_700_000_000_999_999_999, 5_999],
)
def test_iso_utc_is_timestampers_text(nanos: int) -> None:
    seconds, rest = divmod(nanos, 1_000_000_000)
    when = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).replace(
        microsecond=rest // 1000
    )
    assert log_processors.iso_utc(nanos) == when.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1.5, None, True], "c": {"d": "é\n\x00☃"}},
        {"nan": float("nan"), "inf": float("-inf"), "big": 10**30, "o": object.__name__},
        {"obj": errors.InvalidCommandError("x"), "t": (1, 2)},
        {},
        ["not", "a", "dict"],
    ],
)
def test_json_dumps_is_the_stock_renderers_text(value: Any) -> None:
    stock = structlog.processors.JSONRenderer()
    assert log_processors.json_dumps(value) == stock(None, "info", value)


def test_clear_and_bind_leaves_what_clear_then_bind_leaves() -> None:
    def stock() -> dict[str, Any]:
        structlog.contextvars.bind_contextvars(job="j", stale="x", rpc="old")
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(rpc="/a/B", peer="ipv4:1", fresh_key_1=1)
        return structlog.contextvars.get_contextvars()

    def ours() -> dict[str, Any]:
        structlog.contextvars.bind_contextvars(job="j", stale="x", rpc="old")
        log_processors.clear_and_bind(rpc="/a/B", peer="ipv4:1", fresh_key_2=1)
        return structlog.contextvars.get_contextvars()

    assert contextvars.copy_context().run(stock) == {
        "rpc": "/a/B",
        "peer": "ipv4:1",
        "fresh_key_1": 1,
    }
    assert contextvars.copy_context().run(ours) == {
        "rpc": "/a/B",
        "peer": "ipv4:1",
        "fresh_key_2": 1,
    }


def test_bind_call_leaves_what_clear_then_bind_leaves() -> None:
    def ours() -> dict[str, Any]:
        structlog.contextvars.bind_contextvars(job="j", command_id="c", rpc="old")
        log_processors.bind_call("/a/B", "ipv4:1")
        return structlog.contextvars.get_contextvars()

    assert contextvars.copy_context().run(ours) == {"rpc": "/a/B", "peer": "ipv4:1"}


def test_merge_keeps_the_lines_own_values_first() -> None:
    def run() -> dict[str, Any]:
        log_processors.clear_and_bind(rpc="/a/B", peer="p")
        event = {"event": "x", "peer": "mine"}
        return dict(log_processors.merge_contextvars(None, "info", event))

    assert contextvars.copy_context().run(run) == {"event": "x", "peer": "mine", "rpc": "/a/B"}
