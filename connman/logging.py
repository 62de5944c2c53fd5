"""Structured logs (structlog) and the processor that keeps secrets out of them.

connman never reconfigures a host application's logging. If the application has
configured structlog, connman's events flow through its processors (add
:func:`redact_secrets` to that chain to scrub the application's own events too).
If not, connman uses a private pipeline: redaction, level filtering (WARNING and up
unless :func:`configure` says otherwise), then JSON lines on a pipe or readable
console output on a TTY, written to stderr.

An application that has no logging setup of its own may call :func:`setup` once at
start-up: it configures structlog process-wide with the same pipeline (so the
application's events get the redaction and the lease context too). Nothing in connman
calls it.

Inside ``async with manager.lease(consumer)`` (from the acquire to the end of the
release) the consumer and the pool are bound in structlog's context variables, so every
event logged in that block, connman's and the application's (through
``structlog.contextvars.merge_contextvars``), carries them. The pool's events about
connections (opened, connect_failed, reconnects, closed) say ``consumer=None``.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, TextIO

import structlog
import structlog.contextvars

from connman.urls import redact_text

__all__ = [
    "bind_lease_context",
    "configure",
    "get_logger",
    "redact_secrets",
    "setup",
    "unbind_lease_context",
]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: remove passwords from every string in the event,
    the rendered exception included (place it after ``format_exc_info``)."""
    for key, value in event.items():
        event[key] = _redact_value(value, 0)
    return event


def _redact_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    if depth >= 4:  # deep enough for any event connman writes; stop on cycles
        return value
    if isinstance(value, Mapping):
        return {
            redact_text(k) if isinstance(k, str) else k: _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v, depth + 1) for v in value]
    return value


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


def setup(
    *,
    level: str = "info",
    json: bool | None = None,
    stream: TextIO | None = None,
    force: bool = False,
) -> bool:
    """Configure structlog for the whole process with connman's pipeline: context
    variables merged, level and ISO timestamp added, exceptions rendered, passwords
    redacted, then JSON lines (``json=None``: unless ``stream`` is a TTY) or console
    output. For an application without a logging setup of its own; call it once at
    start-up, or skip it.

    Configure-once: if structlog is already configured (by the application, or by an
    earlier call) it changes nothing and returns False, unless ``force``. Returns
    True when it configured structlog."""
    if structlog.is_configured() and not force:
        return False
    configure(level=level, json=json, stream=stream)
    threshold = _LEVELS[level.lower()]
    out = stream if stream is not None else sys.stderr
    use_json = json if json is not None else not _isatty(out)
    renderer: Any = _JSON if use_json else _CONSOLE
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    return True


def _structlog_var(key: str) -> contextvars.ContextVar[Any]:
    """The ContextVar behind ``structlog.contextvars.bind_contextvars(key=...)``
    (taken from the token of a bind that is undone at once)."""
    token = structlog.contextvars.bind_contextvars(**{key: ...})[key]
    token.var.reset(token)
    return token.var


_CONSUMER_VAR: Final = _structlog_var("consumer")
_POOL_VAR: Final = _structlog_var("pool")

_LeaseTokens = tuple[contextvars.Token[Any], contextvars.Token[Any] | None]


def bind_lease_context(consumer: str, pool: str | None) -> _LeaseTokens:
    """Bind ``consumer`` (and ``pool`` when known) in structlog's context variables
    for the span of a lease; undo with :func:`unbind_lease_context`. Two
    ``ContextVar.set`` calls: cheap enough for the lease path."""
    return _CONSUMER_VAR.set(consumer), (_POOL_VAR.set(pool) if pool is not None else None)


def unbind_lease_context(tokens: _LeaseTokens | None) -> None:
    """Restore what :func:`bind_lease_context` replaced. Leases opened with ``async
    with`` nest, so this restores the enclosing lease's values. A lease ended in
    another context than it began in leaves the variables alone."""
    if tokens is None:
        return
    consumer, pool = tokens
    try:
        if pool is not None:
            _POOL_VAR.reset(pool)
        _CONSUMER_VAR.reset(consumer)
    except (ValueError, RuntimeError):
        pass


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
