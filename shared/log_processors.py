"""Cheaper equivalents of the structlog processors every log line goes through (issue 13).

Every answered RPC writes one canonical ``rpc`` line (hubspoke.grpc.server), so the chain of
shared/logging.py runs once per call in hubd and in spoked. These do what structlog's own
processors do, with the same fields and the same JSON, in fewer Python steps:

* :func:`merge_contextvars` reads structlog's own context variables (those
  ``structlog.contextvars.bind_contextvars`` made) instead of copying the whole context and
  scanning every variable in it; :func:`clear_and_bind` is the handler wrapper's
  ``clear_contextvars`` + ``bind_contextvars`` in one pass over the same variables. Both
  keep the values in structlog's variables, so ``structlog.contextvars`` and
  ``structlog.testing.capture_logs`` see them as before.
* :func:`stamp_iso_utc` is ``TimeStamper(fmt="iso", utc=True)``'s text
  (``2026-11-30T12:29:05.123456Z``, no fraction on a whole second) with the date and time
  of day formatted once per second.
* :func:`format_exc_info` runs structlog's only on a line that carries ``exc_info``.
* :func:`json_dumps` is ``json.JSONEncoder.encode`` without building the C encoder anew for
  every line (``iterencode`` does): same separators, ASCII escapes and fallback for
  objects JSON cannot hold. A self-containing value fails with ``RecursionError``, not
  ``ValueError`` (no circularity bookkeeping).
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Callable
from typing import Any

import structlog
from structlog.contextvars import STRUCTLOG_KEY_PREFIX
from structlog.processors import _json_fallback_handler
from structlog.types import EventDict, WrappedLogger

__all__ = [
    "bind_call",
    "clear_and_bind",
    "format_exc_info",
    "iso_utc",
    "json_dumps",
    "merge_contextvars",
    "stamp_iso_utc",
]

_REGISTRY: dict[str, contextvars.ContextVar[Any]] = structlog.contextvars._CONTEXT_VARS
"""structlog's variables by prefixed name, created on a key's first bind (a private name of
structlog's, pinned in pyproject; tests/shared/test_log_processors.py compares the results
with structlog's own processors)."""

_vars: tuple[tuple[str, contextvars.ContextVar[Any]], ...] = ()
_seen = -1


def _structlog_vars() -> tuple[tuple[str, contextvars.ContextVar[Any]], ...]:
    """(key, variable) of every structlog context variable, refreshed when one is added."""
    global _vars, _seen
    if len(_REGISTRY) != _seen:
        cut = len(STRUCTLOG_KEY_PREFIX)
        _vars = tuple((name[cut:], var) for name, var in list(_REGISTRY.items()))
        _seen = len(_vars)
    return _vars


def _var(key: str) -> contextvars.ContextVar[Any]:
    name = STRUCTLOG_KEY_PREFIX + key
    var = _REGISTRY.get(name)
    if var is None:
        var = _REGISTRY[name] = contextvars.ContextVar(name, default=Ellipsis)
    return var


def merge_contextvars(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """``structlog.contextvars.merge_contextvars``: the bound values, under the line's own."""
    for key, var in _structlog_vars():
        value = var.get()
        if value is not Ellipsis and key not in event_dict:
            event_dict[key] = value
    return event_dict


def clear_and_bind(**kw: Any) -> None:
    """``clear_contextvars()`` then ``bind_contextvars(**kw)``: only ``kw`` stays bound."""
    for key in kw:
        _var(key)
    for key, var in _structlog_vars():
        if key in kw:
            var.set(kw[key])
        elif var.get() is not Ellipsis:
            var.set(Ellipsis)


_RPC = _var("rpc")
_PEER = _var("peer")


def bind_call(rpc: str, peer: str) -> None:
    """``clear_and_bind(rpc=rpc, peer=peer)``, the server wrapper's, without the keywords."""
    for _, var in _structlog_vars():
        if var is not _RPC and var is not _PEER and var.get() is not Ellipsis:
            var.set(Ellipsis)
    _RPC.set(rpc)
    _PEER.set(peer)


_second = -1
_prefix = ""


def iso_utc(nanos_since_epoch: int) -> str:
    """The time as ``TimeStamper(fmt="iso", utc=True)`` writes it (``datetime.isoformat``
    with ``Z``): microseconds, none on a whole second."""
    global _second, _prefix
    seconds, nanos = divmod(nanos_since_epoch, 1_000_000_000)
    if seconds != _second:
        _prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = seconds
    micros = nanos // 1000
    return f"{_prefix}.{micros:06d}Z" if micros else f"{_prefix}Z"


def stamp_iso_utc(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """``TimeStamper(fmt="iso", utc=True)``: ``timestamp`` in ISO 8601, UTC, with a ``Z``."""
    event_dict["timestamp"] = iso_utc(time.time_ns())
    return event_dict


def format_exc_info(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """``structlog.processors.format_exc_info``, skipped on a line without ``exc_info``."""
    if "exc_info" in event_dict:
        return structlog.processors.format_exc_info(logger, method_name, event_dict)
    return event_dict


_c_encoder: Callable[..., Callable[[Any, int], list[str]]] | None = getattr(
    json.encoder, "c_make_encoder", None
)
_ENCODER = json.JSONEncoder(default=_json_fallback_handler)
_encode: Callable[[Any, int], list[str]] | None = (
    None
    if _c_encoder is None
    else _c_encoder(  # json.encoder's own arguments, as JSONEncoder.iterencode passes them
        None,  # no circularity markers
        _json_fallback_handler,
        json.encoder.encode_basestring_ascii,
        None,  # indent
        ": ",
        ", ",
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )
)


def json_dumps(obj: Any, **_: Any) -> str:
    """``json.dumps(obj, default=...)``'s text, for ``JSONRenderer``."""
    if _encode is None or not isinstance(obj, dict):
        return _ENCODER.encode(obj)
    return "".join(_encode(obj, 0))
