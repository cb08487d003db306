"""An opt-in pool-leak detector: prove, connection by connection, that no tenant stays behind.

sa_tenancy's strategies leave nothing on a pooled connection by construction: the
``search_path`` is set with ``set_config(..., true)`` (gone at ``COMMIT``/``ROLLBACK``) and the
translate map lives on a ``Connection`` object for one transaction. That is a claim about *this*
library. An application also runs other code on the same engine: a hand-written
``SET search_path``, a ``SET ROLE``, a ``CREATE TEMP TABLE``, a listener from another package, a
``USE tenant`` on MySQL, an ``ATTACH`` on SQLite. Any of them can leave a tenant on a connection
that the pool then hands to the next request.

:func:`verify_checkin` watches an engine's pool. When a DBAPI connection is first made it
records the server's default state, and every time the connection is checked in it reads the
state again. A difference is a leak:

PostgreSQL (one ``SELECT``, one round trip)
    the ``search_path``; ``current_user`` and ``session_user`` (a ``SET ROLE`` or
    ``SET SESSION AUTHORIZATION`` left behind: the next user runs with another role's
    privileges and ``"$user"`` schema); and the number of relations in the connection's own
    temporary schema (``pg_my_temp_schema()``). A ``TEMP`` table outlives the transaction that
    made it, and PostgreSQL searches ``pg_temp`` *first* unless the path names it: the next user
    of the connection, whatever its tenant, reads the temporary ``notes`` instead of its own.
MySQL/MariaDB
    ``SELECT DATABASE()`` (a ``USE tenant`` left behind).
SQLite
    ``PRAGMA database_list``: a database attached beyond the ones the connection had when it
    was made. SQLite resolves an unqualified table name in ``temp``, ``main`` and then every
    attached database, so a tenant file still attached answers for any table the main database
    lacks.

A tenant translate map is client-side state on a ``Connection`` object, not on the pooled
connection. It outlives its transaction only on a ``Connection`` that outlives a session (a
session bound to a ``Connection``). Two engine events catch it: ``engine_connect`` (a new
``Connection`` that already carries a tenant map: the map was set on the engine) and ``begin``
(a ``Connection`` that starts a transaction while still carrying the tenant map of an earlier
one). Tenant state is transaction-scoped, so a map present when a transaction *begins* is
always left over; it is removed from the ``Connection`` (the map it replaced is put back) so
the transaction runs as its caller wrote it. When the transaction was begun by a statement
(autobegin), that statement was compiled with the map before ``begin`` fired: a dialect
``do_execute`` hook refuses it with :class:`PoolLeak` instead of running it for the tenant. No
check sends SQL: one dictionary lookup per new ``Connection``, per transaction begin and per
statement.

Whatever leaked:

* the connection is **discarded** at once (the DBAPI connection invalidated; the translate
  map removed from the ``Connection``), so the leaked state cannot reach anyone;
* ``on_leak="log"`` logs an error on the ``sa_tenancy.verify`` logger;
* ``on_leak="raise"`` (the default) also logs, then raises :class:`PoolLeak` at the next
  checkout from that engine. Raising inside the pool's check-in would lose the pool slot (and
  inside ``begin`` would leave the ``Connection`` half begun), so the error surfaces at the next
  ``engine.connect()`` or session transaction instead.

It costs one round trip per check-in on PostgreSQL with psycopg (the query runs in
``autocommit`` for that one statement, so no ``BEGIN``/``ROLLBACK`` is sent); other drivers,
and a connection checked in inside a transaction, pay the query and the ``ROLLBACK`` that ends
the transaction it opened. On a backend that has ever made a temporary object, the query also
scans ``pg_class`` (no index serves "relations of this namespace"): its cost grows with the
number of relations in the database. It is off by default: turn it on in tests, staging, or a
canary.

.. warning::
   What the ``begin`` check cannot see: statements run on a ``Connection`` *inside* an outer
   transaction (``conn.begin()``) that a session joined, after that session ended and before the
   outer transaction ends. No transaction begins there. The leftover map is found at the
   ``Connection``'s next transaction; the conformance kit
   (:func:`sa_tenancy.conformance.check_isolation`) tests that case directly.

Example::

    engine = create_engine(url)
    detector = sa_tenancy.verify_checkin(engine)   # raise on the next checkout after a leak
    ...
    assert detector.leaks == []
    detector.remove()
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any
from typing import Literal

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool import PoolProxiedConnection

from ._events import remove as remove_listener
from ._keys import TENANT_OPTION as _TENANT_OPTION
from .exc import TenancyError
from .strategies import give_back_map

__all__ = ["LeakDetector", "PoolLeak", "verify_checkin"]

logger = logging.getLogger("sa_tenancy.verify")

_DEFAULT_KEY = "sa_tenancy_default_state"

# One statement, one round trip: everything a PostgreSQL session can carry to its next user that
# changes what an unqualified name or a privilege check means. pg_class has no index on the
# namespace alone, so counting temporary relations scans it; pg_my_temp_schema() is 0 until the
# backend first makes a temporary object, and the scan (an InitPlan) then never runs.
_PG_STATE = (
    "SELECT current_setting('search_path'), current_user, session_user, "
    "CASE WHEN pg_catalog.pg_my_temp_schema() = 0 THEN 0 ELSE "
    "(SELECT count(*) FROM pg_catalog.pg_class "
    "WHERE relnamespace = pg_catalog.pg_my_temp_schema()) END"
)
_PG_FIELDS = ("search_path", "current_user", "session_user", "temporary relations")

# How each kind of leak is told to the user: what to change so it does not happen again.
_ADVICE = {
    "search_path": "a session-level SET search_path (use SET LOCAL / set_config(..., true))",
    "current_user": "a SET ROLE not undone (use SET LOCAL ROLE, or RESET ROLE before check-in)",
    "session_user": "a SET SESSION AUTHORIZATION not undone (RESET SESSION AUTHORIZATION)",
    "temporary relations": (
        "TEMP tables outlive their transaction and are searched first through pg_temp (drop "
        "them, create them ON COMMIT DROP, or DISCARD TEMP before check-in)"
    ),
    "database": "a USE <database> not undone (qualify names or USE the default again)",
    "attached databases": (
        "an ATTACH not undone (DETACH DATABASE before check-in); unqualified names fall "
        "through to attached databases"
    ),
}


class PoolLeak(TenancyError):
    """A pooled connection came back carrying a tenant (or other session state) it should not.

    The connection has already been discarded. The message says what was found and the usual
    cause: a session-level ``SET search_path`` / ``SET ROLE`` / ``USE``, a ``TEMP`` table, an
    ``ATTACH``, or a translate map kept on a long-lived ``Connection``.
    """


class LeakDetector:
    """The check-in verification of one engine, made by :func:`verify_checkin`.

    :attr:`leaks` lists a description of every leak found so far; :attr:`checked` counts the
    check-ins verified. :meth:`remove` turns the detector off.
    """

    def __init__(self, engine: Engine, *, on_leak: Literal["raise", "log"]) -> None:
        if on_leak not in ("raise", "log"):
            raise TenancyError(f"on_leak must be 'raise' or 'log', not {on_leak!r}")
        self.engine = engine
        self.on_leak = on_leak
        self.dialect = engine.dialect.name
        self.leaks: list[str] = []
        self.checked = 0
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._listeners: list[tuple[Any, str, Any]] = []
        # Connections whose leftover map _on_begin removed, until a stale statement is refused.
        self._stripped: weakref.WeakKeyDictionary[Connection, str] = weakref.WeakKeyDictionary()

    # -- reading a connection's state --------------------------------------------------------

    def _state(self, dbapi_connection: Any) -> dict[str, object] | None:
        """What the connection would carry to its next user, by name; ``None``: not checked."""
        if self.dialect == "postgresql":
            row = self._fetch(dbapi_connection, _PG_STATE, one_statement=True)[0]
            return dict(zip(_PG_FIELDS, row, strict=True))
        if self.dialect in ("mysql", "mariadb"):
            return {"database": self._fetch(dbapi_connection, "SELECT DATABASE()")[0][0]}
        if self.dialect == "sqlite":
            rows = self._fetch(dbapi_connection, "PRAGMA database_list")
            names = sorted(str(row[1]) for row in rows if row[1] not in ("main", "temp"))
            return {"attached databases": names}
        return None

    def _fetch(self, dbapi_connection: Any, sql: str, *, one_statement: bool = False) -> list[Any]:
        """Run ``sql`` and leave the connection as idle as it was.

        Checked in, the connection is idle (the pool rolled it back). A query would open a
        transaction that must then be rolled back: a ``BEGIN`` and a ``ROLLBACK`` around it.
        Where the driver switches ``autocommit`` locally (psycopg, and any PostgreSQL adapter
        with a boolean ``autocommit``), the query runs alone in autocommit instead: one round
        trip. If the switch is refused (a transaction is open), the slow path is taken.
        """
        fast = False
        if one_statement and getattr(dbapi_connection, "autocommit", None) is False:
            try:
                dbapi_connection.autocommit = True
                fast = True
            except Exception:
                fast = False
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(sql)
                rows = list(cursor.fetchall())
            finally:
                cursor.close()
        finally:
            if fast:
                dbapi_connection.autocommit = False
        if not fast and getattr(dbapi_connection, "autocommit", False) is not True:
            dbapi_connection.rollback()  # end the transaction the query opened
        return rows

    # -- listeners ---------------------------------------------------------------------------

    def _on_connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_DEFAULT_KEY] = self._state(dbapi_connection)

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is None or _DEFAULT_KEY not in record.info:
            return  # invalidated or never verified: nothing to hand out again
        expected = record.info[_DEFAULT_KEY]
        try:
            found = self._state(dbapi_connection)
        except Exception as exc:
            # The state is unknown: discard the connection rather than hand it out unchecked.
            logger.warning("could not verify a checked-in connection (%s); discarded", exc)
            record.invalidate(exc)
            return
        with self._lock:
            self.checked += 1
        if found == expected or found is None or expected is None:
            return
        differences = [
            f"{name} {found[name]!r} instead of the server default {expected.get(name)!r} "
            f"(its value when the connection was made; cause: {_ADVICE[name]})"
            for name in found
            if found[name] != expected.get(name)
        ]
        self._leak(
            "a connection was checked in with "
            + "; ".join(differences)
            + ". It was discarded. Tenant state must end with its transaction."
        )
        record.invalidate()

    def _tenant_map_leak(self, connection: Connection, where: str) -> str | None:
        # Put back the map the tenant's replaced, so this Connection serves no tenant any more.
        schema = give_back_map(connection)
        if schema is None:
            return None
        message = f"{where} carries the translate map of tenant {schema!r}; it was removed"
        self._leak(message)
        return message

    def _on_engine_connect(self, connection: Connection) -> None:
        if connection.get_execution_options().get(_TENANT_OPTION) is not None:
            self._tenant_map_leak(
                connection,
                "a new Connection (execution options were set on the engine instead of on one "
                "transaction's Connection)",
            )
            connection.invalidate()
        self._raise_pending()

    def _on_begin(self, connection: Connection) -> None:
        # No raise here: SQLAlchemy is half-way through Connection.begin(). The transaction goes
        # on untenanted, as its caller wrote it.
        message = self._tenant_map_leak(
            connection,
            "a Connection beginning a new transaction (a session bound to this Connection ended "
            "and left the map of its transaction behind)",
        )
        if message is not None:
            with self._lock:
                self._stripped[connection] = message

    def _refuse_stale(self, context: Any) -> None:
        """Refuse a statement compiled with a tenant map that its ``Connection`` no longer has.

        When a statement's own execution begins the transaction (autobegin), SQLAlchemy has
        already merged the ``Connection``'s options and compiled the statement, tenant schema
        included, before ``begin`` fires. Removing the map there is too late for that one
        statement, and it cannot be recompiled here: it is refused, in either ``on_leak`` mode,
        rather than run against the tenant. Its leak is reported by this error, not again at
        the next checkout.
        """
        if context is None:
            return
        schema = context.execution_options.get(_TENANT_OPTION)
        if schema is None:
            return
        connection = context.root_connection
        if connection.get_execution_options().get(_TENANT_OPTION) == schema:
            return
        with self._lock:
            message = self._stripped.pop(connection, None)
            if message is not None and message in self._pending:
                self._pending.remove(message)
        raise PoolLeak(
            f"{message or f'a statement was compiled for tenant {schema!r}'}; this statement "
            "was compiled with that map before it was removed and was not run: run it again"
        )

    def _do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        self._refuse_stale(context)

    def _do_execute_no_params(self, cursor: Any, statement: str, context: Any) -> None:
        self._refuse_stale(context)

    def _on_checkout(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        self._raise_pending()

    def _leak(self, message: str) -> None:
        logger.error("sa_tenancy pool leak: %s", message)
        with self._lock:
            self.leaks.append(message)
            if self.on_leak == "raise":
                self._pending.append(message)

    def _raise_pending(self) -> None:
        if not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            raise PoolLeak(f"{len(pending)} leak(s) found at check-in: {pending[0]}")

    # -- life cycle --------------------------------------------------------------------------

    def _register(self) -> None:
        listeners: list[tuple[Any, str, Any]] = [
            (self.engine.pool, "checkout", self._on_checkout),
            (self.engine.pool, "connect", self._on_connect),
            (self.engine.pool, "checkin", self._on_checkin),
            (self.engine, "engine_connect", self._on_engine_connect),
            (self.engine, "begin", self._on_begin),
            (self.engine.dialect, "do_execute", self._do_execute),
            (self.engine.dialect, "do_execute_no_params", self._do_execute_no_params),
            (self.engine.dialect, "do_executemany", self._do_execute),
        ]
        for target, name, fn in listeners:
            # insert=True on the dialect hooks: before any hook that runs the statement itself.
            event.listen(target, name, fn, insert=name.startswith("do_"))
            self._listeners.append((target, name, fn))
        self.engine.pool.__dict__["_sa_tenancy_leak_detector"] = self

    def remove(self) -> None:
        """Stop verifying. Idempotent."""
        for target, name, fn in self._listeners:
            remove_listener(target, name, fn)
        self._listeners.clear()
        if self.engine.pool.__dict__.get("_sa_tenancy_leak_detector") is self:
            del self.engine.pool.__dict__["_sa_tenancy_leak_detector"]

    def __repr__(self) -> str:
        return (
            f"LeakDetector(on_leak={self.on_leak!r}, checked={self.checked}, "
            f"leaks={len(self.leaks)})"
        )


def verify_checkin(engine: Any, *, on_leak: Literal["raise", "log"] = "raise") -> LeakDetector:
    """Verify, at every check-in, that ``engine``'s pooled connections carry no tenant.

    :param engine: an ``Engine`` or ``AsyncEngine`` (its ``sync_engine`` is used). Call this
        before the engine makes its first connection: connections made earlier have no recorded
        default and are not verified.
    :param on_leak: ``"raise"`` (default): log, discard the connection and raise
        :class:`PoolLeak` at the next checkout; ``"log"``: log and discard only.
    :returns: a :class:`LeakDetector`; ``.leaks`` lists what was found, ``.remove()`` undoes it.
    :raises TenancyError: if the engine already has a detector.

    .. warning::
       One extra round trip per check-in on PostgreSQL with psycopg (a query and a
       ``ROLLBACK`` on other drivers). Use it in tests, staging or a canary, not on every
       production connection.
    """
    sync_engine: Engine = getattr(engine, "sync_engine", engine)
    if "_sa_tenancy_leak_detector" in sync_engine.pool.__dict__:
        raise TenancyError("this engine already has a leak detector; call .remove() on it first")
    detector = LeakDetector(sync_engine, on_leak=on_leak)
    detector._register()
    return detector


for _cls in (LeakDetector, PoolLeak):
    _cls.__module__ = "sa_tenancy"
del _cls
