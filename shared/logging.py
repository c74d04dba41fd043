"""Configure structlog once per process: contextvars first, ISO time, level; JSON off a TTY."""

from __future__ import annotations

import json as _json
import logging
import sys
from typing import Any

import structlog
from structlog.processors import _json_fallback_handler

_ENCODER = _json.JSONEncoder(default=_json_fallback_handler)
"""One encoder for every line: ``json.dumps`` with a ``default`` builds a new one per call
(issue 13: the canonical ``rpc`` line is written once per request). Same output."""


def _dumps(obj: Any, **_: Any) -> str:
    return _ENCODER.encode(obj)


def configure(level: str = "info", json: bool | None = None) -> None:
    """Send structured logs to stderr; JSON unless stderr is a terminal (or ``json`` says)."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(_dumps) if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),  # print()'s output, cheaper
        cache_logger_on_first_use=True,
    )
