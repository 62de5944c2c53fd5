"""A TCP proxy on loopback that can stall, for fault tests.

``stall()`` stops forwarding in both directions and leaves new connections hanging
(accepted, never connected upstream): to the client the server looks alive but silent,
the failure that timeouts exist for. ``resume()`` lets everything through again;
``reset_all()`` drops every proxied connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

from connman.urls import parse_url

__all__ = ["StallingProxy"]

_CHUNK = 65536


class StallingProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        if target_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("StallingProxy only forwards to loopback targets")
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> StallingProxy:
        """Listen on a free loopback port (``self.port``)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, user: str = "postgres", database: str = "postgres") -> str:
        """A Postgres URL through the proxy, without a password (a trust server's);
        :meth:`route` keeps the password of a URL of the target."""
        return f"postgresql+asyncpg://{user}@127.0.0.1:{self.port}/{database}"

    def route(self, url: str) -> str:
        """``url`` (of the target server) sent through the proxy: its host and port
        replaced, user, password, database and parameters kept. Holds the password:
        never log it."""
        return dataclasses.replace(parse_url(url), host="127.0.0.1", port=self.port).key

    def stall(self) -> None:
        """Stop forwarding bytes; new connections hang before reaching the server."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again."""
        self._flowing.set()

    def reset_all(self) -> None:
        """Drop every proxied connection (both sides see the socket close)."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def aclose(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        self.resume()
        self.reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def __aenter__(self) -> StallingProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except (OSError, asyncio.CancelledError):
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await src.read(_CHUNK)
                if not data:
                    break
                # Read while flowing, then hold the bytes if a stall began meanwhile.
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()
            self._writers.discard(dst)
