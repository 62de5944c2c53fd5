"""The pool bridge: a SQLAlchemy ``Pool`` whose every connection is a connman lease.

SQLAlchemy's pools own their connections; here connman does. :class:`ConnmanPool`
keeps no connection of its own: each checkout leases one from the manager and each
checkin gives it back, so connman's limits, FIFO queue, health checks, lifetimes and
metrics apply to the engine like to any other consumer.

What SQLAlchemy needs per physical connection (its ``_ConnectionRecord``, and in it the
DBAPI adapter object that wraps the asyncpg/aiosqlite connection and on which the
dialect ran its ``connect`` setup: SQLite functions...) is
kept in :attr:`connman.Lease.connection_state`, which lives exactly as long as the
physical connection. A checkout of a connection this pool has seen before reuses its
record: no reconnect, no second ``connect`` event, the adapter's prepared-statement
cache intact. (The naive ``async_creator`` + ``NullPool`` recipe closes the socket on
every checkin.)

The connection state holds only a weak reference to the record; the pool holds the
strong ones. So an engine that is disposed of or dropped takes its records (and
their server-side prepared statements) with it, while the physical connections stay
in connman for everyone else.
"""

from __future__ import annotations

import asyncio
import importlib
import weakref
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import ConnectionPoolEntry, Pool
from sqlalchemy.pool.base import _ConnectionRecord
from sqlalchemy.util import await_only
from sqlalchemy.util import concurrency as _sa_concurrency

from connman.adapters.sqlalchemy_json import decode_json_columns
from connman.errors import AcquireTimeout, ConnectionLost, ConnmanError
from connman.manager import ConnectionManager, Lease, get_manager
from connman.stats import PoolStats
from connman.urls import parse_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
    from sqlalchemy.pool.base import _CreatorWRecFnType

__all__ = ["ConnmanPool", "PoolTimeout"]

_T = TypeVar("_T")


class PoolTimeout(sa_exc.TimeoutError, AcquireTimeout):
    """No connection within the deadline: connman's :class:`~connman.AcquireTimeout`
    (with its message naming the pool's state) that is also SQLAlchemy's
    ``sqlalchemy.exc.TimeoutError``, so handlers written for either catch it."""


class _Slot:
    """Key of one pool's record in a connection's ``connection_state``."""

    __slots__ = ()


class ConnmanPool(Pool):
    """A SQLAlchemy pool that leases every connection from a connman manager.

    Built by :func:`connman.adapters.sqlalchemy.create_async_engine`; not meant to be
    constructed by hand.

    Args:
        manager: the manager to lease from; ``None`` follows
            :func:`connman.get_manager` at every checkout (so an engine kept in a module
            global survives the process-wide manager being replaced).
        consumer: the connman consumer name of every lease.
        url: the database (``None``: the manager's default one).
        readonly: lease read leases (a read replica when one is usable).
        timeout: acquire deadline in seconds (``None``: connman's ``acquire_timeout``).
        sa_url: the engine's URL (no password): what the dialect derives its DBAPI
            adapter options from.
        connect_args: extra options for the DBAPI adapter (e.g.
            ``prepared_statement_cache_size``); connection parameters are connman's.
        **kw: :class:`sqlalchemy.pool.Pool` options (``pre_ping``, ``echo``,
            ``reset_on_return``, ``logging_name``, ``events``, ``dialect``...).
    """

    # An asyncio pool (create_engine checks it against the dialect).
    _is_asyncio = True

    def __init__(
        self,
        *,
        manager: ConnectionManager | None,
        consumer: str,
        url: str | None,
        timeout: float | None,
        sa_url: URL,
        readonly: bool = False,
        connect_args: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        # connman retires connections itself (max_lifetime); SQLAlchemy's recycle
        # would close connman's connections behind its back.
        kw["recycle"] = -1
        super().__init__(cast("_CreatorWRecFnType", self._connect_record), **kw)
        self._manager = manager
        self._consumer = consumer
        self._url = url
        self._readonly = readonly
        self._timeout = timeout
        self._sa_url = sa_url
        self._connect_args = dict(connect_args or {})
        self._connect_params: tuple[list[Any], dict[str, Any]] | None = None
        self._slot = _Slot()
        # Strong references to this pool's records; connection_state holds weak ones.
        self._records: set[_ConnectionRecord] = set()
        self._out: dict[ConnectionPoolEntry, Lease] = {}  # checked out -> its lease
        # Leases whose connection SQLAlchemy detached (Connection.detach()): kept
        # until the holder closes the detached DBAPI connection. id(raw) -> lease.
        self._detached: dict[int, Lease] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what the engine and its users see ------------------------------------------

    @property
    def manager(self) -> ConnectionManager:
        """The manager this pool leases from."""
        return self._manager if self._manager is not None else get_manager()

    @property
    def consumer(self) -> str:
        """The connman consumer name of this pool's leases."""
        return self._consumer

    def checkedout(self) -> int:
        """Connections this pool has checked out now (detached ones included)."""
        return len(self._out) + len(self._detached)

    def status(self) -> str:
        """One line: this pool's checkouts and the connman pool behind them."""
        text = f"ConnmanPool consumer={self._consumer!r} checked out {len(self._out)}" + (
            f" (+{len(self._detached)} detached)" if self._detached else ""
        )
        stats = self._connman_stats()
        if stats is None:
            return text + "; connman pool not opened yet"
        limit = stats.consumer_limits.get(self._consumer)
        return text + (
            f"; connman {stats.url}: size {stats.size}/{stats.max_size}, in use "
            f"{stats.in_use} ({self._consumer} {stats.consumers.get(self._consumer, 0)}"
            + (f" of {limit}" if limit is not None else "")
            + f"), idle {stats.idle}, waiting {stats.waiting}"
        )

    def _connman_stats(self) -> PoolStats | None:
        manager = self.manager
        if self._url is None:
            pool = manager.default_pool
            return None if pool is None else pool.stats()
        # A URL the manager degraded away from is served by its replacement.
        wanted = parse_url(self._url).redacted()
        return next(
            (s for s in manager.stats() if wanted in (s.url, s.requested_url)),
            None,
        )

    def recreate(self) -> ConnmanPool:
        """A new pool with the same settings (``engine.dispose()`` calls this)."""
        self.logger.info("Pool recreating")
        return self.__class__(
            manager=self._manager,
            consumer=self._consumer,
            url=self._url,
            readonly=self._readonly,
            timeout=self._timeout,
            sa_url=self._sa_url,
            connect_args=self._connect_args,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    def dispose(self) -> None:
        """Forget this pool's records. Every connection it does not have checked out
        is already back in connman, where it stays open for the other consumers;
        checked-out ones come back to connman when their holders close them."""
        self._records.clear()
        self.logger.info("Pool disposed. %s", self.status())

    # -- checkout and checkin (called by SQLAlchemy inside its greenlet) ---------------

    def _do_get(self) -> ConnectionPoolEntry:
        lease = self._acquire()
        try:
            ref = lease.connection_state.get(self._slot)
            record = ref() if ref is not None else None
            if record is None or record.dbapi_connection is None:
                record = self._new_record(lease)
        except BaseException:
            self._release(lease, failed=True)
            raise
        self._out[record] = lease
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        lease = self._out.pop(record, None)
        if lease is None:
            return
        rec = cast(_ConnectionRecord, record)
        if rec.dbapi_connection is not None:
            if rec._soft_invalidate_time <= rec.starttime:
                if not _in_transaction(lease.connection):
                    self._release(lease, failed=False)  # the hot path
                    return
                # Returned inside a transaction SQLAlchemy did not end (one opened on
                # the driver connection, or reset_on_return=None): connman rolls it
                # back before anyone else gets the connection, which leaves the
                # adapter's client-side transaction state stale. Forget the record;
                # the connection stays.
                self._forget(rec, lease)
                self._release(lease, failed=False)
                return
            # Soft-invalidated ("recycle on next use"): only closing gets a new
            # physical connection from connman.
            rec.invalidate()
        self._forget(rec, lease)
        raw = lease.connection
        if _is_closed(raw):  # invalidated: SQLAlchemy closed it, connman drops it
            self._release(lease, failed=True)
        else:  # detached: the holder still uses it; the lease ends when they close it
            self._detached[id(raw)] = lease

    def _close_connection(self, connection: DBAPIConnection, *, terminate: bool = False) -> None:
        try:
            super()._close_connection(connection, terminate=terminate)
        finally:
            # A detached connection ends its lease here, closed or not (the garbage
            # collector's cleanup cannot close an aiosqlite connection): connman
            # drops it if it is closed, cleans it if it is not.
            if self._detached:
                raw = self._dialect.get_driver_connection(connection)
                lease = self._detached.pop(id(raw), None)
                if lease is not None:
                    self._release(lease, failed=True)

    def holder_error(self, record: object, exc: BaseException) -> ConnectionLost | None:
        """``exc`` reached the engine on the connection of ``record``: the lease's
        verdict (:meth:`connman.Lease.holder_error`), None if it is not ours."""
        lease = self._out.get(cast(ConnectionPoolEntry, record))
        return None if lease is None else lease.holder_error(exc)

    def _invalidate(
        self,
        connection: Any,
        exception: BaseException | None = None,
        _checkin: bool = True,
    ) -> None:
        # SQLAlchemy's pool-wide invalidation ("a disconnect was seen: recycle every
        # connection opened before now") would close connections connman shares with
        # other consumers. connman health-checks every connection idle longer than
        # health_check_after before lending it, so only the connection itself goes.
        if _checkin and getattr(connection, "is_valid", False):
            connection.invalidate(exception)

    # -- connecting a record ----------------------------------------------------------

    @property
    def _engine_dialect(self) -> Dialect:
        # create_engine() replaces the pool's stub dialect with the engine's.
        return cast("Dialect", self._dialect)

    def _new_record(self, lease: Lease) -> _ConnectionRecord:
        """A record for a physical connection this pool has not seen (connected by
        SQLAlchemy right after, through :meth:`_connect_record`)."""
        dialect = self._engine_dialect
        if lease.dialect != dialect.name:
            raise ConnmanError(
                f"the engine was created for {dialect.name} but connman leases "
                f"{lease.dialect} connections ({lease.url}): the manager degraded to "
                "another database after the engine was created. Create the engine "
                "after `await manager.start()` so it gets the dialect of the database "
                "actually serving"
                + (
                    " (the engine follows the process-wide manager: `await "
                    "connman.get_manager().start()` first)."
                    if self._manager is None
                    else "."
                )
            )
        self._loop = asyncio.get_running_loop()
        self._prune(lease)
        record = _ConnectionRecord(self, connect=False)
        self._records.add(record)
        lease.connection_state[self._slot] = weakref.ref(record)
        return record

    def _connect_record(self, record: ConnectionPoolEntry) -> DBAPIConnection:
        """The pool's creator: wrap the leased connection in the dialect's DBAPI
        adapter. The dialect's ``connect`` events (codecs...) run right after."""
        lease = self._out.get(record)
        if lease is None:
            raise sa_exc.InvalidRequestError("connman pool: this record is not checked out")
        if _is_closed(lease.connection):
            # A reconnect after SQLAlchemy invalidated (closed) the connection, e.g.
            # a failed pre-ping: the same record moves to a new lease.
            self._out.pop(record)
            self._release(lease, failed=True)
            lease = self._acquire()
            self._out[record] = lease
            previous = lease.connection_state.get(self._slot)
            if previous is not None and previous() is not None:
                self._records.discard(previous())
            lease.connection_state[self._slot] = weakref.ref(record)
        raw = lease.connection

        async def leased(*_args: Any, **_kw: Any) -> Any:
            return raw

        args, params = self._connect_parameters()
        dialect = self._engine_dialect
        adapted = dialect.loaded_dbapi.connect(*args, async_creator_fn=leased, **params)
        if dialect.name == "postgresql":
            # Decode JSON as the codecs connman leaves uninstalled would have
            # (sqlalchemy_json): on this adapter object only, never the connection.
            decode_json_columns(adapted, getattr(dialect, "_json_deserializer", None))
        return cast("DBAPIConnection", adapted)

    def _connect_parameters(self) -> tuple[list[Any], dict[str, Any]]:
        # Connection parameters (host, user...) go to the creator, which ignores
        # them; what matters are the adapter's own options the dialect reads from
        # the URL (prepared_statement_cache_size...), plus connect_args.
        if self._connect_params is None:
            args, params = self._engine_dialect.create_connect_args(self._sa_url)
            self._connect_params = (list(args), {**params, **self._connect_args})
        return self._connect_params

    # -- leases -----------------------------------------------------------------------

    def _acquire(self) -> Lease:
        manager = self._manager if self._manager is not None else get_manager()
        lease = manager.lease(
            self._consumer, url=self._url, timeout=self._timeout, readonly=self._readonly
        )
        if lease.try_acquire():  # an idle connection: no coroutine at all
            return lease
        acquiring = lease.acquire()
        if not in_greenlet():
            await_only(acquiring)  # raises MissingGreenlet (and closes the coroutine)
        try:
            return _await_eagerly(acquiring)
        except AcquireTimeout as exc:
            raise PoolTimeout(str(exc)) from None

    def _release(self, lease: Lease, *, failed: bool) -> None:
        if in_greenlet():
            # Clean or broken: no I/O, no coroutine; else the release, eagerly.
            if not lease.release_nowait(failed=failed):
                _await_eagerly(lease.release(failed=failed))
            return
        # Outside SQLAlchemy's greenlet: the garbage collector finalizing a
        # connection nobody closed (SQLAlchemy has terminated it), maybe in another
        # thread. Release on the manager's loop.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(lease.release(failed=True), loop)

    def _forget(self, record: _ConnectionRecord, lease: Lease) -> None:
        lease.connection_state.pop(self._slot, None)
        self._records.discard(record)

    def _prune(self, lease: Lease) -> None:
        """Drop records whose physical connection connman has closed (it does not
        tell us), and this connection's entries for records that are gone (engines
        disposed of or dropped). Runs when a new connection shows up, so both stay
        bounded."""
        state = lease.connection_state
        for key in [k for k, v in state.items() if isinstance(k, _Slot) and v() is None]:
            del state[key]
        dead = [
            rec
            for rec in self._records
            if rec not in self._out
            and (rec.dbapi_connection is None or _is_closed(rec.driver_connection))
        ]
        for rec in dead:
            self._records.discard(rec)


def _in_sqlalchemy_greenlet() -> bool:
    # SQLAlchemy < 2.0.2x has no in_greenlet(); its greenlet class had this name in
    # every version since 1.4. (greenlet ships no type information: imported as Any.)
    current = importlib.import_module("greenlet").getcurrent()
    return type(current).__name__ == "_AsyncIoGreenlet"


in_greenlet: Callable[[], bool] = getattr(_sa_concurrency, "in_greenlet", _in_sqlalchemy_greenlet)
"""True inside SQLAlchemy's ``greenlet_spawn``, where ``await_only`` works."""


def _await_eagerly(coro: Coroutine[Any, Any, _T]) -> _T:
    """``await_only(coro)`` without the round trip through SQLAlchemy's greenlet
    driver when ``coro`` completes without suspending.

    A lease of an idle connection, and the release of a clean one, finish without
    ever suspending; ``await_only`` would still switch to the driver greenlet and
    back (two switches each way per checkout). Here the coroutine is started in
    place; only if it suspends is the rest handed to ``await_only``. The code runs
    in the same task and context either way: this greenlet runs inside the task's
    step. The caller checks that it runs in SQLAlchemy's greenlet.
    """
    try:
        suspended_on = coro.send(None)
    except StopIteration as done:
        return cast(_T, done.value)
    return cast(_T, await_only(_Resumed(coro, suspended_on)))


class _Resumed:
    """Awaitable: the rest of a coroutine already advanced to its first suspension,
    i.e. ``yield from`` (PEP 380) picked up after its first step."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, thrown in by the task
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as done:
                    return done.value


def _in_transaction(raw: Any) -> bool:
    """True if the driver connection has a transaction open (asyncpg or aiosqlite)."""
    is_in_transaction = getattr(raw, "is_in_transaction", None)
    if is_in_transaction is not None:
        return bool(is_in_transaction())
    return bool(raw.in_transaction)


def _is_closed(raw: Any) -> bool:
    """True if the driver connection is closed (asyncpg or aiosqlite), without I/O."""
    if raw is None:
        return True
    is_closed = getattr(raw, "is_closed", None)
    if is_closed is not None:
        return bool(is_closed())
    return raw._connection is None or not getattr(raw, "_running", True)
