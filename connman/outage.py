"""A pool's connect failures: the last one, what it means, and when to say so.

The one owner of the outage state a pool reports (``last_error`` in its stats; the
reason, hint and host of its :class:`~connman.errors.PoolUnavailable`) and logs: an
outage logs ``connect_failed`` at its start, when its reason changes, and otherwise at
most every :data:`LOG_EVERY` seconds (the pool retries about once a second while
someone waits), then one ``connect_recovered``.
"""

from __future__ import annotations

import time
from typing import Any, Final

from connman.diagnose import Diagnosis
from connman.errors import UnavailableReason

__all__ = ["LOG_EVERY", "Outage"]

LOG_EVERY: Final = 10.0
"""Seconds between two ``connect_failed`` lines of one outage, one reason."""


class Outage:
    """Connect failures since the last success, for one pool."""

    __slots__ = (
        "_log",
        "_logged_at",
        "_logged_reason",
        "_started",
        "diagnosis",
        "failures",
        "last_error",
    )

    def __init__(self, log: Any) -> None:
        self.last_error: str | None = None
        """The last connect error (redacted); kept after a recovery."""
        self.diagnosis: Diagnosis | None = None
        """What the last connect error means (:func:`~connman.diagnose.diagnose`), while
        the outage lasts; None when the last connect succeeded."""
        self.failures = 0
        """Failed connects in this outage."""
        self._started = 0.0
        self._logged_at = 0.0
        self._logged_reason: UnavailableReason | None = None
        self._log = log

    def failed(self, error: str, found: Diagnosis) -> None:
        """A connect failed with ``error``, diagnosed as ``found``."""
        now = time.monotonic()
        if self.diagnosis is None:
            self._started = now
            self.failures = 0
            self._logged_reason = None
        self.last_error = error
        self.diagnosis = found
        self.failures += 1
        if found.reason is self._logged_reason and now - self._logged_at < LOG_EVERY:
            return
        self._logged_reason = found.reason
        self._logged_at = now
        self._log.warning(
            "connect_failed",
            error=error,
            hint=found.hint,
            reason=found.reason.value,
            failures=self.failures,
            outage_seconds=round(now - self._started, 3),
            consumer=None,
        )

    def recovered(self) -> None:
        """A connect succeeded: the outage, if there was one, is over."""
        if self.diagnosis is None:
            return
        self.diagnosis = None
        self._log.warning(
            "connect_recovered",
            after_error=self.last_error,
            failures=self.failures,
            outage_seconds=round(time.monotonic() - self._started, 3),
            consumer=None,
        )
