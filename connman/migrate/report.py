"""What the user sees: the plan, progress, the summary, the rejects file, the
verify table. Every URL shown is redacted by the caller (DatabaseURL.redacted)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = ["Progress", "RejectsFile", "format_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: numbers right-aligned, the rest left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[i], int | float) for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


@dataclass(slots=True)
class _Bar:
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)


class Progress:
    """One progress bar per table being copied: redrawn in place (``\\r``) on a TTY,
    a plain line every ``interval`` seconds otherwise (logs, CI)."""

    def __init__(self, stream: IO[str] | None = None, *, interval: float = 5.0) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._bars: dict[str, _Bar] = {}
        self._interval = interval if not self._tty else 0.1
        self._last = time.monotonic()
        self._drawn = False
        self.rows_written = 0
        """Rows committed on the target so far (what an interrupted run reports)."""

    def start(self, table: str, total: int) -> None:
        """A table's copy begins; ``total`` rows to read."""
        self._bars[table] = _Bar(total)

    def advance(self, table: str, rows: int) -> None:
        """``rows`` more rows of ``table`` read."""
        bar = self._bars.get(table)
        if bar is None:
            return
        bar.done += rows
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._draw()

    def written(self, rows: int) -> None:
        """``rows`` more rows committed on the target."""
        self.rows_written += rows

    def finish(self, table: str) -> None:
        """A table is done (its summary line is printed by the caller)."""
        self._bars.pop(table, None)
        self.clear()

    def clear(self) -> None:
        """Take the bar off the terminal's line (before anything else is printed)."""
        if self._tty and self._drawn:
            self._stream.write("\r\x1b[K")
            self._drawn = False
            self._stream.flush()

    def _draw(self) -> None:
        parts = []
        for name, bar in self._bars.items():
            share = bar.done / bar.total if bar.total else 1.0
            rate = bar.done / max(1e-6, time.monotonic() - bar.started)
            if self._tty:
                filled = int(share * 20)
                parts.append(
                    f"{name} [{'#' * filled}{'.' * (20 - filled)}] {share:4.0%} "
                    f"{bar.done:,}/{bar.total:,} {rate:,.0f} rows/s"
                )
            else:
                parts.append(
                    f"{name}: {bar.done:,}/{bar.total:,} rows ({share:.0%}, {rate:,.0f} rows/s)"
                )
        if not parts:
            return
        if self._tty:
            self._stream.write("\r\x1b[K" + "  |  ".join(parts))
            self._drawn = True
        else:
            self._stream.write("progress " + "; ".join(parts) + "\n")
        self._stream.flush()


class RejectsFile:
    """JSON lines, one per rejected row (``table``, ``key``, ``reason``); created on
    the first reject only."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.count = 0
        self._handle: IO[str] | None = None

    def write(self, table: str, key: Any, reason: str) -> None:
        """Record one rejected row."""
        self.count += 1
        if self.path is None:
            return
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        record = {"table": table, "key": key, "reason": reason}
        self._handle.write(json.dumps(record, default=repr, ensure_ascii=False) + "\n")

    def close(self) -> None:
        """Flush and close (fsync: the report of a crash-proof migration should
        survive a crash too)."""
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
