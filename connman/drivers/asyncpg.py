"""The PostgreSQL driver: asyncpg connections, cleaned without a round trip when clean.

asyncpg.Pool sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
every release. We decide from state the client already has:

- transaction status (from every ReadyForQuery): roll back only if a transaction is open
  or failed;
- ParameterStatus (the server reports TimeZone, DateStyle, client_encoding,
  application_name, IntervalStyle, standard_conforming_strings,
  default_transaction_read_only, is_superuser/session_authorization... whenever they
  change): ``RESET ALL`` only if one differs from its value at connect time;
- client-side registrations (LISTEN callbacks): a full reset, because the server keeps
  the LISTEN.

What the server does not report (search_path before PG 18, advisory locks, temp tables,
cursors WITH HOLD, sequence caches) needs ``Lease.request_full_reset()``, which runs
:data:`FULL_RESET`. Never cleaned: prepared statements (asyncpg's cache owns them) and
type codecs set with ``set_type_codec`` (client-side, per connection).

Failover. A URL with several hosts (``postgresql://u@h1:5432,h2:5432/db``) wants the
writable one: ``target_session_attrs=read-write`` unless the URL says otherwise. The
driver tries the hosts in order itself (not asyncpg's loop, which keeps only the last
error) so that every host's outcome is known (:attr:`AsyncpgDriver.hosts`, and the
:class:`~connman.diagnose.HostsFailed` message). A connection of a writable pool that
meets a read-only server afterwards (SQLSTATE 25006 through a lease, or the server's
``in_hot_standby``/``default_transaction_read_only`` reports) is checked at release
(``pg_is_in_recovery()``); if the server is read-only the connection is ``demoted``
and the pool retires every connection to that server.
"""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg

from connman import tls
from connman.config import PoolConfig
from connman.diagnose import HostsFailed, host_outcome
from connman.drivers import BROKEN, NEEDS_FULL_RESET, Verdict
from connman.errors import UnavailableReason
from connman.logging import get_logger
from connman.urls import DatabaseURL, Dialect

__all__ = ["FULL_RESET", "AsyncpgConnection", "AsyncpgDriver"]

# Everything DISCARD ALL does except DEALLOCATE ALL / DISCARD PLANS, which would drop
# the statements asyncpg has cached client-side ("prepared statement does not exist").
FULL_RESET = """
CLOSE ALL;
UNLISTEN *;
SELECT pg_advisory_unlock_all();
RESET ALL;
SET SESSION AUTHORIZATION DEFAULT;
DISCARD TEMP;
DISCARD SEQUENCES;
"""

# Reported parameters that only the server changes (a standby promoted, a server
# upgrade): a difference in these is not the lease's doing and RESET cannot undo it.
_SERVER_OWNED = frozenset(
    {"in_hot_standby", "server_version", "server_encoding", "integer_datetimes"}
)


# target_session_attrs values that ask for a writable server.
_WRITABLE = frozenset({"read-write", "primary"})
# SQLSTATE read_only_sql_transaction: a write refused by a read-only session or server.
_READ_ONLY_SQLSTATE = "25006"
# Is the server itself read-only (not this session)? Asked after the session's own
# settings were reset, so a lease's SET default_transaction_read_only does not count.
_SERVER_READ_ONLY = (
    "SELECT pg_catalog.pg_is_in_recovery() "
    "OR pg_catalog.current_setting('default_transaction_read_only')::bool"
)


class AsyncpgConnection:
    """One asyncpg connection and what we know of its session state, through asyncpg's
    public API only: nothing tells what a lease left behind, so every release is a
    full reset, in one round trip. The driver makes an
    :class:`~connman.drivers._asyncpg_private.InternalsConnection` instead, which
    decides without a round trip, whenever this asyncpg has the internals it reads."""

    __slots__ = (
        "_live",
        "_outcomes",
        "_recheck",
        "_snapshot",
        "_writable",
        "demoted",
        "raw",
        "server",
    )

    def __init__(
        self,
        raw: asyncpg.Connection,
        *,
        server: str,
        writable: bool = False,
        outcomes: dict[str, str] | None = None,
    ) -> None:
        self.raw = raw
        self.server = server
        """``host:port`` this connection reached: the unit of a failover."""
        self.demoted = False
        """Found read-only in a writable pool: retire every connection to ``server``."""
        self._writable = writable
        self._outcomes = outcomes
        # A write was refused as read-only: find out at release whether the server is.
        self._recheck = False
        # The server's ParameterStatus values, live (only with asyncpg's internals),
        # and as they were after connect or the last reset.
        self._live: dict[str, str] | None = None
        self._snapshot: dict[str, str] | str = repr(raw.get_settings())

    def is_closed(self) -> bool:
        return bool(self.raw.is_closed())

    def checkout(self) -> bool:
        return not self.raw.is_closed()

    def checkin(self) -> None:
        return None

    def checked(self) -> None:
        return None

    def is_lost_error(self, exc: BaseException) -> bool:
        # asyncpg's own states, never the server's: its protocol lost track of the
        # conversation (after an unexpected FATAL: "cannot switch to state N; another
        # operation (2) is in progress"), or it found the connection closed.
        if isinstance(exc, asyncpg.InternalClientError):
            return True
        return isinstance(exc, asyncpg.InterfaceError) and self.raw.is_closed()

    def saw_error(self, exc: BaseException) -> None:
        if self._writable and getattr(exc, "sqlstate", None) == _READ_ONLY_SQLSTATE:
            self._recheck = True

    def verdict(self, failed: bool) -> Verdict:
        # The public API cannot tell what the lease left (callbacks, LISTEN, a
        # cancellation in flight): a full reset after every lease.
        return BROKEN if self.raw.is_closed() else NEEDS_FULL_RESET

    def _parameters_unchanged(self) -> bool:
        if self._live is not None:
            return self._live == self._snapshot
        return repr(self.raw.get_settings()) == self._snapshot

    async def reset(self, full: bool) -> bool:
        """One round trip: the rollback and the full reset in one simple query (asyncpg
        first waits for a cancelled query's acknowledgement, as before any query).
        Client-side callbacks stay registered (nothing public removes them without the
        callback in hand); the UNLISTEN * keeps them silent."""
        raw = self.raw
        if raw.is_closed():
            return False
        rollback = "ROLLBACK;" if raw.is_in_transaction() else ""
        await raw.execute(rollback + FULL_RESET)
        if raw.is_in_transaction():  # a cancelled BEGIN landed after the look above
            await raw.execute("ROLLBACK")
        return await self._after_reset()

    async def _after_reset(self) -> bool:
        """The end of every reset: a writable pool's check that the server is still
        writable, and the session parameters' check."""
        raw = self.raw
        if self._writable and (self._recheck or self._reports_read_only()):
            self._recheck = False
            if await raw.fetchval(_SERVER_READ_ONLY):
                self.demoted = True
                if self._outcomes is not None:
                    self._outcomes[self.server] = "read-only"
                return False
        return self._accept_parameters()

    def _reports_read_only(self) -> bool:
        """The server reported itself read-only (PG 14+ sends both on change)."""
        live = self._live
        return live is not None and (
            live.get("in_hot_standby") == "on" or live.get("default_transaction_read_only") == "on"
        )

    def _accept_parameters(self) -> bool:
        """After a reset: clean if every session-settable parameter is back."""
        if self._live is None:
            self._snapshot = repr(self.raw.get_settings())
            return True
        assert isinstance(self._snapshot, dict)
        for name, value in self._live.items():
            if name not in _SERVER_OWNED and self._snapshot.get(name) != value:
                # e.g. SET SESSION AUTHORIZATION, which RESET ALL does not undo.
                return False
        self._snapshot = dict(self._live)
        return True

    async def ping(self) -> None:
        # Simple-query protocol: one round trip. (asyncpg cannot take an empty query.)
        await self.raw.execute("SELECT 1")

    async def close(self) -> None:
        await self.raw.close()

    def terminate(self) -> None:
        self.raw.terminate()


class AsyncpgDriver:
    """Opens asyncpg connections to one PostgreSQL database."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: DatabaseURL, config: PoolConfig) -> None:
        # Files (sslrootcert, passfile...) resolved now: a missing one is a config
        # error naming it, not an anonymous OSError at every connect.
        url = tls.resolve_files(url)
        warning = tls.check_tls(url, require=config.require_tls)
        if warning is not None:
            get_logger("connman.pool", pool=url.redacted()).warning(
                "tls_unverified", warning=warning, consumer=None
            )
        self._dsn = url.connect_dsn()
        self._config = config
        self._url = url
        params = {k.lower(): v for k, v in url.query}
        target = params.get("target_session_attrs")
        if target is None and url.hosts:
            target = "read-write"  # several hosts: the default pool writes
        self._target = target
        self._writable = target in _WRITABLE
        # Several hosts and a writable target: connect host by host (see the module
        # doc). Other targets (prefer-standby...) are asyncpg's own multi-host loop.
        self._each_host = self._host_urls(url) if self._writable and url.hosts else ()
        self._outcomes: dict[str, str] = {}
        self._where = _where(url)
        # An application_name in the URL wins over the configured default.
        named = any(k.lower() == "application_name" for k, _ in url.query)
        self._server_settings = None if named else {"application_name": config.application_name}
        # Probe each new connection for a transaction-mode pooler only when the
        # statement cache would otherwise be on (see _behind_pooler).
        self._probe = config.pgbouncer == "auto" and config.statement_cache_size > 0
        self._pooler_logged = False
        self._log = get_logger("connman.pool", pool=url.redacted())

    @property
    def hosts(self) -> dict[str, str]:
        """Each host's outcome at the last connect (``ok``, ``refused``, ``read-only``...)
        for a multi-host URL; a host found read-only later says so too. Empty else."""
        return dict(self._outcomes)

    @staticmethod
    def _host_urls(url: DatabaseURL) -> tuple[tuple[str, DatabaseURL], ...]:
        query = tuple((k, v) for k, v in url.query if k.lower() != "target_session_attrs")
        return tuple(
            (
                f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                dataclasses.replace(url, host=host, port=port, query=query),
            )
            for host, port in url.hosts
        )

    async def start(self) -> None:
        return None

    async def connect(self) -> AsyncpgConnection:
        # Imported here: the module builds on this one (its connection class is a
        # subclass of ours).
        from connman.drivers import _asyncpg_private as private

        provider = self._config.credential_provider
        try:
            raw, server = await self._connect()
        except asyncpg.InvalidAuthorizationSpecificationError:
            if provider is None:
                raise
            # The secret may have rotated since the provider last answered: ask it
            # again (asyncpg calls it per connect) before the pool fails its waiters.
            raw, server = await self._connect()
        if self._probe:
            try:
                async with asyncio.timeout(self._config.connect_timeout):
                    pooled = await self._behind_pooler(raw)
            except BaseException:
                raw.terminate()
                raise
            if not pooled:
                private.enable_statement_cache(raw, self._config.statement_cache_size)
        # Read per connect: tests turn the internals off.
        kind = private.InternalsConnection if private.AVAILABLE else AsyncpgConnection
        return kind(raw, server=server, writable=self._writable, outcomes=self._outcomes)

    async def _connect(self) -> tuple[asyncpg.Connection, str]:
        """A new connection and the ``host:port`` it reached."""
        if not self._each_host:
            return await self._connect_to(self._dsn, self._config.connect_timeout), self._where
        # connect_timeout bounds the whole walk: each host gets a fair share of what
        # is left, so one host that swallows packets cannot starve the others.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.connect_timeout
        outcomes: list[tuple[str, str]] = []
        reasons: list[UnavailableReason] = []
        for i, (where, url) in enumerate(self._each_host):
            share = (deadline - loop.time()) / (len(self._each_host) - i)
            try:
                raw = await self._connect_to(url.connect_dsn(), max(share, 0.001))
            except Exception as exc:
                what, reason = host_outcome(exc, url)
                outcomes.append((where, what))
                reasons.append(reason)
                continue
            self._record([*outcomes, (where, "ok")])
            return raw, where
        self._record(outcomes)
        raise HostsFailed(outcomes, reasons)

    def _record(self, outcomes: list[tuple[str, str]]) -> None:
        # In place: connections hold this dict to mark their server read-only.
        self._outcomes.clear()
        self._outcomes.update(outcomes)

    async def _connect_to(self, dsn: str, timeout: float) -> asyncpg.Connection:
        cfg = self._config
        return await asyncpg.connect(
            dsn,
            password=cfg.credential_provider,
            timeout=timeout,
            target_session_attrs=self._target,
            command_timeout=cfg.command_timeout,
            # With the probe, the cache starts off and is turned on once the server
            # is known to be PostgreSQL itself.
            statement_cache_size=0 if self._probe else cfg.statement_cache_size,
            server_settings=self._server_settings,
        )

    async def _behind_pooler(self, raw: asyncpg.Connection) -> bool:
        """True when a pooler (PgBouncer, pgcat, RDS Proxy...) sits between us and the
        server. Such a pooler answers the startup itself and hands out a cancel key of
        its own, so the backend pid in BackendKeyData is not the pid of the backend
        that runs our queries; a plain TCP proxy forwards both unchanged. In transaction
        mode the next transaction may run on another backend, where a named prepared
        statement is unknown or, worse, is another client's statement of the same name
        (wrong results with no error); so behind a pooler the statement cache stays
        off. The query runs unnamed (the cache is off), which such poolers handle."""
        backend = await raw.fetchval("SELECT pg_backend_pid()")
        if backend == raw.get_server_pid():
            return False
        if not self._pooler_logged:
            self._pooler_logged = True
            self._log.warning(
                "pooler_detected",
                hint="a connection pooler answers for the server: the statement cache "
                "stays off. Set KGENTS_POOL_PGBOUNCER=transaction to skip this check, or "
                "=off if the pooler keeps prepared statements (session mode, PgBouncer "
                ">= 1.21 with max_prepared_statements)",
                consumer=None,
            )
        return True

    async def stop(self) -> None:
        return None


def _where(url: DatabaseURL) -> str:
    host = url.host or "localhost"
    return f"[{host}]:{url.port}" if ":" in host and "," not in host else f"{host}:{url.port}"
