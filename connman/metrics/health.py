"""``/healthz``: can every instrumented manager serve leases? One answer, read by
the HTTP endpoints and by ``connman status --metrics-url``'s users."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connman.stats import pool_problem
from connman.urls import redact_text

if TYPE_CHECKING:
    from connman.manager import ConnectionManager
    from connman.stats import PoolStats

__all__ = ["Health", "check_health"]

# The fields of each pool in the /healthz answer, besides pool, ok and problem.
_POOL_KEYS = (
    "role",
    "reads",
    "dialect",
    "tier",
    "degraded",
    "size",
    "max_size",
    "in_use",
    "idle",
    "waiting",
)


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/healthz`` answers: ``ok`` (HTTP 200) or not (503, with ``reason``)."""

    ok: bool
    reason: str
    pools: tuple[Mapping[str, Any], ...] = ()
    degraded: bool = False
    """Serving, but from a fallback store rather than the one configured."""

    def to_json(self) -> bytes:
        """The HTTP body: status, reason, degraded and one entry per pool."""
        body = {
            "status": "ok" if self.ok else "unavailable",
            "reason": self.reason,
            "degraded": self.degraded,
            "pools": list(self.pools),
        }
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


def check_health(
    managers: Iterable[ConnectionManager],
    snapshot: Callable[[ConnectionManager], list[PoolStats]],
) -> Health:
    """Can every manager in ``managers`` serve leases from its default store, and
    every pool it opened (``snapshot(manager)``: its stats)? A manager not started
    yet, or whose start failed, cannot (503 with the reason); a degraded one can, but
    says so (200, ``degraded``, and why). A read replica that cannot serve is not a
    failure (its reads go to the other replicas or the primary): 200, and the reason
    names it."""
    managers = list(managers)
    if not managers:
        return Health(False, "no open ConnectionManager is instrumented")
    problems: list[str] = []
    notes: list[str] = []
    replica_notes: list[str] = []
    pools: list[Mapping[str, Any]] = []
    for manager in managers:
        default_problem = _default_store_problem(manager)
        if default_problem is not None:
            problems.append(default_problem)
        elif manager.degraded and manager.default_pool is not None:
            notes.append(
                f"degraded: serving from {manager.default_pool.name} instead of "
                f"{manager.storage.redacted_url} ({manager.degraded_reason})"
            )
        try:
            stats = snapshot(manager)
        except Exception as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
            continue
        for st in stats:
            problem = pool_problem(st)
            if problem is not None and st.role == "replica":
                replica_notes.append(f"replica {st.name} serves no reads: {problem}")
            elif problem is not None:
                problems.append(f"pool {st.name}: {problem}")
            pools.append(
                {"pool": st.name, "ok": problem is None, "problem": problem}
                | st.as_dict(*_POOL_KEYS)
                | {"replica_reason": None if st.replica is None else st.replica.reason}
            )
    degraded = bool(notes)
    if problems:
        return Health(False, redact_text("; ".join(problems)), tuple(pools), degraded)
    if degraded or replica_notes:
        text = redact_text("; ".join(notes + replica_notes))
        return Health(True, text, tuple(pools), degraded)
    return Health(True, "ok", tuple(pools))


def _default_store_problem(manager: ConnectionManager) -> str | None:
    """Why ``manager``'s default store cannot serve before or without its pool."""
    if manager.default_pool is not None:
        return None  # its pool's own state is checked with the others
    where = manager.storage.redacted_url
    error = manager.start_error
    if error is not None:
        return f"default store {where}: start failed ({error.reason}): {error}"
    return (
        f"default store {where}: not started (no pool opened yet; await manager.start() "
        "at start-up so that readiness reflects the database)"
    )
