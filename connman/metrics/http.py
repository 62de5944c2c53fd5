"""Serving ``/metrics`` and ``/healthz``: a WSGI app, an ASGI app, and a small
threaded HTTP server (:func:`start_http_server`, :func:`serve_metrics`)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder
from prometheus_client.registry import CollectorRegistry

from connman.metrics.collector import Metrics, default_metrics

if TYPE_CHECKING:
    from connman.manager import ConnectionManager

__all__ = [
    "DEFAULT_PORT",
    "MetricsServer",
    "make_asgi_app",
    "make_wsgi_app",
    "serve_metrics",
    "start_http_server",
]

DEFAULT_PORT: Final = 9464
"""The port OpenTelemetry's Prometheus exporter uses by default."""


_Environ = dict[str, Any]
_StartResponse = Callable[..., Any]
_WSGIApp = Callable[[_Environ, _StartResponse], Iterable[bytes]]
_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

_NOT_FOUND: Final = b"not found: try /metrics or /healthz\n"


def _render_metrics(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def _registry_of(metrics: Metrics, registry: CollectorRegistry | None) -> CollectorRegistry:
    if registry is not None:
        return registry
    if metrics.registry is not None:
        return metrics.registry
    raise ValueError("metrics is not registered anywhere: pass registry=")


def make_wsgi_app(
    metrics: Metrics | None = None, registry: CollectorRegistry | None = None
) -> _WSGIApp:
    """A WSGI app: ``/metrics`` (and ``/``) the registry in Prometheus text format (or
    OpenMetrics if asked), ``/healthz`` the health check; 404 otherwise."""
    m = metrics or default_metrics()
    reg = _registry_of(m, registry)

    def app(environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/healthz":
            health = m.health()
            status = "200 OK" if health.ok else "503 Service Unavailable"
            body, ctype = health.to_json(), "application/json"
        elif path in ("/metrics", "/"):
            status = "200 OK"
            body, ctype = _render_metrics(reg, environ.get("HTTP_ACCEPT", ""))
        else:
            status, body, ctype = "404 Not Found", _NOT_FOUND, "text/plain; charset=utf-8"
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


def make_asgi_app(
    metrics: Metrics | None = None, registry: CollectorRegistry | None = None
) -> _ASGIApp:
    """The same as :func:`make_wsgi_app`, for embedding in an ASGI application (mount
    it, e.g. Starlette's ``Mount("/", app)``). The scrape runs in a worker thread, so
    it never blocks the event loop."""
    import anyio.to_thread

    m = metrics or default_metrics()
    reg = _registry_of(m, registry)

    async def app(scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path") or "/"
        if path == "/healthz":
            health = await anyio.to_thread.run_sync(m.health)
            status, body, ctype = (200 if health.ok else 503), health.to_json(), "application/json"
        elif path in ("/metrics", "/"):
            accept = ""
            for key, value in scope.get("headers") or ():
                if key.lower() == b"accept":
                    accept = value.decode("latin-1")
            body, ctype = await anyio.to_thread.run_sync(_render_metrics, reg, accept)
            status = 200
        else:
            status, body, ctype = 404, _NOT_FOUND, "text/plain; charset=utf-8"
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
        )

    return app


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


class _V6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """A running HTTP endpoint (``/metrics``, ``/healthz``) in a daemon thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.addr = str(server.server_address[0])
        self.port = int(server.server_address[1])

    @property
    def url(self) -> str:
        """``http://addr:port`` (where ``/metrics`` and ``/healthz`` live)."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and free the port. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def start_http_server(
    port: int = DEFAULT_PORT,
    addr: str = "127.0.0.1",
    *,
    metrics: Metrics | None = None,
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` (loopback by default;
    ``port=0`` picks a free one: see ``.port``) from a daemon thread."""
    app = make_wsgi_app(metrics, registry)
    server_class = _V6Server if ":" in addr else ThreadingWSGIServer
    server = make_server(addr, port, app, server_class, handler_class=_SilentHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.name = f"connman-metrics-{server.server_address[1]}"
    thread.start()
    return MetricsServer(server, thread)


def serve_metrics(
    manager: ConnectionManager,
    *,
    port: int = DEFAULT_PORT,
    addr: str = "127.0.0.1",
    metrics: Metrics | None = None,
) -> MetricsServer:
    """Instrument ``manager`` and serve ``/metrics`` and ``/healthz`` until
    ``.close()`` (what ``connman demo`` runs). Build the manager with
    ``observer=(metrics or default_metrics()).observer`` for the histograms."""
    m = metrics or default_metrics()
    m.instrument(manager)
    return start_http_server(port, addr, metrics=m)
