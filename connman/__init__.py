"""connman: one process-wide connection manager for kgents storage.

Resolve storage once (:func:`resolve_storage`), keep one pool per database
(:class:`ConnectionManager`), lease connections to named consumers
(``manager.lease("dgent")``), and report what happens (:meth:`ConnectionManager.stats`).
"""

from connman.config import CredentialProvider, PoolConfig
from connman.errors import (
    AcquireTimeout,
    AdapterError,
    CausalParentMissing,
    ConfigError,
    ConnectionLost,
    ConnmanError,
    DatumConflict,
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
