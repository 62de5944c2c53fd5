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
    *, level: str = "warning", json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Set connman's own log output, for applications that have not configured
    structlog (the CLI calls this). ``json=None`` picks JSON unless the stream is a
    TTY; ``stream=None`` is stderr. Takes effect for loggers already handed out.
    Does nothing to an application that configured structlog itself."""
    if level.lower() not in _LEVELS:
        raise ValueError(f"level={level!r}: expected one of {', '.join(_LEVELS)}")
    _settings.update(level=_LEVELS[level.lower()], json=json, stream=stream)


_settings: dict[str, Any] = {"level": _LEVELS["warning"], "json": None, "stream": None}


class _CurrentStream:
    """Writes to the stream configured now, not the one current at logger creation."""

    def write(self, text: str) -> int:
        return int(_current_stream().write(text))

    def flush(self) -> None:
        _current_stream().flush()


def _current_stream() -> TextIO:
    stream: TextIO | None = _settings["stream"]
    return stream if stream is not None else sys.stderr


def _filter_level(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _LEVELS.get(method, 30) < _settings["level"]:
        raise structlog.DropEvent
    return event


def _render(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    use_json = _settings["json"]
    if use_json is None:
        use_json = not _isatty(_current_stream())
    if use_json:
        return str(_JSON(logger, method, event))
    return str(_CONSOLE(logger, method, event))


_JSON = structlog.processors.JSONRenderer()
_CONSOLE = structlog.dev.ConsoleRenderer(colors=False)


def get_logger(name: str = "connman", **context: Any) -> Any:
    """A structlog logger for connman's events, with ``context`` bound."""
    if structlog.is_configured():
        return structlog.get_logger(name, **context)
    return structlog.wrap_logger(
        structlog.PrintLogger(_CurrentStream()),  # type: ignore[arg-type]
        processors=[
            _filter_level,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            _render,
        ],
    ).bind(logger=name, **context)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
