"""Structured logs (structlog) and the processor that keeps secrets out of them.

connman never reconfigures a host application's logging. If the application has
configured structlog, connman's events flow through its processors (add
:func:`redact_secrets` to that chain to scrub the application's own events too).
If not, connman uses a private pipeline: redaction, level filtering (WARNING and up
unless :func:`configure` says otherwise), then JSON lines on a pipe or readable
console output on a TTY, written to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from connman.urls import redact_text

__all__ = ["configure", "get_logger", "redact_secrets"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_private_level = _LEVELS["warning"]
_private_stream: TextIO | None = None


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: remove passwords from every string in the event,
    the rendered exception included (place it after ``format_exc_info``)."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact_text(value)
        elif isinstance(value, BaseException):
            event[key] = redact_text(f"{type(value).__name__}: {value}")
        elif isinstance(value, Mapping):
            event[key] = {k: redact_text(v) if isinstance(v, str) else v for k, v in value.items()}
    return event


def configure(
    *, level: str = "info", json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Set up connman's own log output, for applications that have not configured
    structlog (the CLI calls this). ``json=None`` picks JSON unless ``stream`` is a TTY.
    Does nothing to an application that configured structlog itself."""
    global _private_level, _private_stream, _json
    if level.lower() not in _LEVELS:
        raise ValueError(f"level={level!r}: expected one of {', '.join(_LEVELS)}")
    _private_level = _LEVELS[level.lower()]
    _private_stream = stream
    _json = json


_json: bool | None = None


def get_logger(name: str = "connman", **context: Any) -> Any:
    """A structlog logger for connman's events, with ``context`` bound."""
    if structlog.is_configured():
        return structlog.get_logger(name, **context)
    stream = _private_stream or sys.stderr
    use_json = _json if _json is not None else not _isatty(stream)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return structlog.wrap_logger(
        structlog.PrintLogger(stream),
        wrapper_class=structlog.make_filtering_bound_logger(_private_level),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    ).bind(logger=name, **context)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
