"""Small tools shared by the integration tests (no mocks: a recording observer and a
log capture)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from connman import logging as cm_logging
from tests.support.faultkit import wait_until

__all__ = ["RecordingObserver", "captured_logs", "wait_until"]


class RecordingObserver:
    """A PoolObserver that records every call and lets a test await a condition."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = asyncio.Event()

    def _record(self, name: str, *args: Any) -> None:
        self.events.append((name, args))
        self._changed.set()

    def lease_acquired(self, pool: str, consumer: str, wait: float) -> None:
        self._record("lease_acquired", consumer, wait)

    def lease_released(self, pool: str, consumer: str, used: float) -> None:
        self._record("lease_released", consumer, used)

    def acquire_failed(self, pool: str, consumer: str, reason: str) -> None:
        self._record("acquire_failed", consumer, reason)

    def connection_opened(self, pool: str, seconds: float) -> None:
        self._record("connection_opened", seconds)

    def connection_closed(self, pool: str, lost: bool) -> None:
        self._record("connection_closed", lost)

    def connect_failed(self, pool: str) -> None:
        self._record("connect_failed")

    def leak_detected(self, pool: str, consumer: str) -> None:
        self._record("leak_detected", consumer)

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.events if n == name)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, woken by each recorded event."""
        with anyio.fail_after(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@contextmanager
def captured_logs(level: str = "debug") -> Iterator[list[dict[str, Any]]]:
    """Route connman's own log output (JSON lines) into a list for the block."""
    stream = io.StringIO()
    cm_logging.configure(level=level, json=True, stream=stream)
    records: list[dict[str, Any]] = []
    try:
        yield records
    finally:
        cm_logging.configure()
        for line in stream.getvalue().splitlines():
            records.append(json.loads(line))
