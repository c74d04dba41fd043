"""Configure structlog once per process: contextvars first, ISO time, level; JSON off a TTY."""

from __future__ import annotations

import logging
import sys

import structlog

from . import log_processors as fast


def configure(level: str = "info", json: bool | None = None) -> None:
    """Send structured logs to stderr; JSON unless stderr is a terminal (or ``json`` says)."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(fast.json_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer()
    )
    # structlog's merge_contextvars, add_log_level, TimeStamper(fmt="iso", utc=True) and
    # format_exc_info, in fewer steps (issue 13: one canonical line per RPC; log_processors).
    structlog.configure(
        processors=[
            fast.merge_contextvars,
            structlog.processors.add_log_level,
            fast.stamp_iso_utc,
            fast.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),  # print()'s output, cheaper
        cache_logger_on_first_use=True,
    )
