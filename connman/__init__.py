"""connman: one process-wide connection manager for kgents storage.

Resolve storage once (:func:`resolve_storage`), keep one pool per database
(:class:`ConnectionManager`), lease connections to named consumers
(``manager.lease("dgent")``), and report what happens (:meth:`ConnectionManager.stats`).
"""

from typing import TYPE_CHECKING, Any

from connman import errors
from connman.config import CredentialProvider, PoolConfig
from connman.errors import (
    DOMAIN_ERRORS,
    AcquireTimeout,
    AdapterError,
    ConfigError,
    ConnectionLost,
    ConnmanError,
    InvalidInput,
    LeaseError,
    PoolClosed,
    PoolUnavailable,
    QueryParameterError,
    UnavailableReason,
)
from connman.manager import ConnectionManager, Lease, get_manager
from connman.replicas import ReplicaPolicy
from connman.resolve import Storage, Tier, resolve_storage
from connman.stats import PoolObserver, PoolStats, ReplicaStatus
from connman.urls import DatabaseURL, parse_url, redact_text

if TYPE_CHECKING:
    from connman.kgents.errors import CausalParentMissing, DatumConflict

__all__ = [
    "AcquireTimeout",
    "AdapterError",
    "CausalParentMissing",
    "ConfigError",
    "ConnectionLost",
    "ConnectionManager",
    "ConnmanError",
    "CredentialProvider",
    "DatabaseURL",
    "DatumConflict",
    "InvalidInput",
    "Lease",
    "LeaseError",
    "PoolClosed",
    "PoolConfig",
    "PoolObserver",
    "PoolStats",
    "PoolUnavailable",
    "QueryParameterError",
    "ReplicaPolicy",
    "ReplicaStatus",
    "Storage",
    "Tier",
    "UnavailableReason",
    "get_manager",
    "parse_url",
    "redact_text",
    "resolve_storage",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # kgents' domain errors (connman.errors loads them on first use, PEP 562):
    # ``import connman`` imports the core only.
    if name in DOMAIN_ERRORS:
        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
