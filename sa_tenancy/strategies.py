"""How a tenant is applied to a transaction's connection.

A :class:`Strategy` is called once at the start of every session transaction (never for a
savepoint) with the :class:`~sqlalchemy.engine.Connection` the transaction will use and the
validated tenant schema. Whatever it changes must last for that transaction only: the DBAPI
connection goes back to a pool afterwards and must carry nothing to its next user.

Two strategies ship with the library:

:class:`SearchPath`
    ``SELECT set_config('search_path', :path, true)``, the transaction-scoped form of
    ``SET LOCAL``, on PostgreSQL. Every statement of the transaction sees the tenant, raw
    ``text()`` SQL included. The server forgets the setting at ``COMMIT`` or ``ROLLBACK``, so a
    pooled connection (or a PgBouncer server connection in transaction mode) never keeps it. The
    same statement checks that the schema exists and is usable, because PostgreSQL silently
    skips a missing schema on the path and would read ``public`` instead. With psycopg 3 the
    path (as ``SET LOCAL``) and the check travel in the same message as the transaction's
    ``BEGIN``, so a tenant transaction needs no more round trips than a plain one (see
    :func:`sa_tenancy._psycopg.begin_with_path_sql`).

:class:`TranslateMap`
    ``connection.execution_options(schema_translate_map={None: schema})`` in place. SQLAlchemy
    writes the schema into every statement it compiles from :class:`~sqlalchemy.schema.Table`
    metadata: queries, flushes, lazy loads, refreshes. No round trip and no server state, and it
    works on PostgreSQL, MySQL/MariaDB and SQLite. SQLAlchemy cannot rewrite raw SQL, so raw SQL
    in a tenant transaction is refused (:class:`~sa_tenancy.RawSQLRefused`) unless explicitly
    allowed. The refusal is a dialect-level ``do_execute`` hook rather than a
    ``before_cursor_execute`` engine event: engine events make SQLAlchemy dispatch half a dozen
    hooks around every statement of every connection, a dialect hook costs one loop per
    statement.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any
from typing import Protocol
from typing import runtime_checkable

from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import TextClause

from . import _psycopg
from .exc import FAIL_CLOSED
from .exc import InvalidSchemaName
from .exc import RawSQLRefused
from .exc import TenancyError
from .exc import UnknownSchema
from .names import validate_extra_schema

__all__ = ["ALLOW_RAW_SQL", "Auto", "SearchPath", "Strategy", "TranslateMap", "resolve_strategy"]

#: Execution option that lets one statement (or a whole connection) run raw SQL in a
#: ``translate_map`` tenant transaction:
#: ``text(...).execution_options(sa_tenancy_allow_raw_sql=True)``.
ALLOW_RAW_SQL = "sa_tenancy_allow_raw_sql"

# Execution options set, in place, on a tenant transaction's connection by TranslateMap: the
# tenant (read by the raw-SQL guard) and the translate map that was there before (restored when
# the same Connection object later serves a transaction without a tenant).
_TENANT_OPTION = "sa_tenancy_schema"
_PREVIOUS_MAP_OPTION = "sa_tenancy_previous_map"


@runtime_checkable
class Strategy(Protocol):
    """Applies a tenant to the connection of one transaction.

    ``apply`` runs inside :meth:`SessionEvents.after_begin
    <sqlalchemy.orm.SessionEvents.after_begin>`, before any statement of the transaction. It may
    only use ``connection`` (the one the transaction will run on), must limit its effect to this
    transaction, and must raise rather than silently do nothing when it cannot work on this
    connection. ``schema`` is already validated; it is ``None`` when the session has no tenant
    (and the installation does not require one), in which case the strategy undoes anything it
    may have left on this very ``Connection`` object.
    """

    def apply(self, connection: Connection, schema: str | None) -> None:
        """Make ``connection`` serve ``schema`` for the current transaction."""


# One statement: set the transaction-local path and report whether the schema exists and may be
# used. to_regnamespace() takes an identifier (so the quoted form is passed: "Acme" must not be
# folded to acme); it returns NULL instead of raising for a missing schema.
_CHECK_SQL = (
    "n IS NOT NULL, coalesce(has_schema_privilege(n, 'USAGE'), false) "
    "FROM (SELECT to_regnamespace(CAST({schema} AS text)) AS n) AS tenant"
)
_SET_PATH = text(
    "SELECT set_config('search_path', :path, true), " + _CHECK_SQL.format(schema=":schema")
)


def _pg_identifier(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier, for use as a *value* or in unprocessed SQL.

    Not the dialect's ``quote_identifier``: for pyformat drivers (psycopg) SQLAlchemy also
    doubles ``%`` there, which is right in SQL text that goes through parameter formatting and
    wrong in a bound value or a parameterless simple query, where ``"%%"`` names another schema.
    """
    return '"' + name.replace('"', '""') + '"'


def _path_only(error: UnknownSchema) -> UnknownSchema:
    """Mark ``error`` as leaving a path that names only the unusable tenant (and ``pg_temp``).

    Unqualified names then resolve nowhere, so the connection cannot reach the default schema
    and need not be invalidated: an unknown tenant (a 404 in a web app) costs no reconnect.
    """
    setattr(error, FAIL_CLOSED, True)
    return error


class SearchPath:
    """Transaction-scoped ``search_path`` on PostgreSQL.

    :param extra_schemas: schemas searched after the tenant, e.g. ``("public",)`` when extension
        types such as ``citext`` live in ``public``. Never added implicitly: a tenant table must
        not silently resolve to a same-named table in a shared schema.
    :param check_exists: confirm, in the same statement, that the schema exists and the role
        may use it; raise :class:`~sa_tenancy.UnknownSchema` otherwise. Leave it on.

    The path ends with ``pg_temp``: PostgreSQL otherwise searches temporary tables *first*, and
    a temporary table named like a tenant table would shadow it.

    On psycopg 3 (sync and async) the path and the check travel in one message with the
    transaction's ``BEGIN``, which psycopg would otherwise send on its own before the first
    statement: a tenant transaction takes exactly as many round trips as a plain one. Other
    drivers (asyncpg, whose SQLAlchemy adapter opens its transaction itself) run
    ``set_config`` as a statement of its own at the start of the transaction: one round trip
    more.

    .. warning::
       ``SET LOCAL`` does nothing outside a transaction block. On an ``AUTOCOMMIT`` connection
       this strategy raises :class:`~sa_tenancy.TenancyError` instead of running the
       transaction against the default schema.
    """

    name = "search_path"

    def __init__(self, *, extra_schemas: Iterable[str] = (), check_exists: bool = True) -> None:
        self.extra_schemas = tuple(validate_extra_schema(s) for s in extra_schemas)
        self.check_exists = check_exists

    def search_path(self, connection: Connection, schema: str) -> str:
        """The ``search_path`` value for ``schema``: quoted tenant, extras, then ``pg_temp``."""
        parts = [_pg_identifier(schema)]
        parts.extend(_pg_identifier(s) for s in self.extra_schemas)
        parts.append("pg_temp")
        return ", ".join(parts)

    def apply(self, connection: Connection, schema: str | None) -> None:
        if schema is None:
            return
        dialect = connection.dialect
        if dialect.name != "postgresql":
            raise TenancyError(
                f"the search_path strategy needs PostgreSQL, not {dialect.name}; "
                "use strategy='translate_map' on this database"
            )
        pooled = connection.connection
        if getattr(pooled.dbapi_connection, "autocommit", False):
            raise TenancyError(
                "the search_path strategy cannot work on an AUTOCOMMIT connection: SET LOCAL "
                "would end with each statement and queries would read the default schema. "
                "Use a transactional engine for tenant sessions, or strategy='translate_map'."
            )
        if schema == "$user":
            connection.invalidate()  # nothing applied: no statement may run on it
            raise InvalidSchemaName(
                "tenant schema name '$user' cannot be used with the search_path strategy: on a "
                "search_path it always means the schema named after the current role. Rename "
                "the tenant or use strategy='translate_map'."
            )
        path = self.search_path(connection, schema)
        quoted = _pg_identifier(schema)
        if dialect.driver == "psycopg":
            current = _psycopg.begin_with_path(
                connection, pooled.driver_connection, path, check=self.check_exists
            )
            if current is not _psycopg.NOT_SENT and (current == schema or not self.check_exists):
                return
            # Not sent (a transaction is already open on the server), or the tenant is not the
            # first usable schema of the path: the statement below applies it, or says why not.
        _, exists, usable = connection.execute(_SET_PATH, {"path": path, "schema": quoted}).one()
        if self.check_exists and not exists:
            raise _path_only(
                UnknownSchema(
                    f"schema {schema!r} does not exist; create the tenant first "
                    "(sa_tenancy.create_tenant) or check the name"
                )
            )
        if self.check_exists and not usable:
            raise _path_only(
                UnknownSchema(
                    f"schema {schema!r} exists but the current role has no USAGE privilege on "
                    "it; PostgreSQL would skip it on the search_path. GRANT USAGE to the app's "
                    "role."
                )
            )

    def __repr__(self) -> str:
        return f"SearchPath(extra_schemas={self.extra_schemas!r})"


def _refuse_raw_sql(statement: str, context: Any) -> None:
    """No untranslatable SQL in a translate-map tenant transaction.

    It acts only on connections that a :class:`TranslateMap` marked for a tenant; every other
    statement of the engine pays one dictionary lookup.
    """
    if context is None:
        return
    options = context.execution_options
    schema = options.get(_TENANT_OPTION)
    if schema is None or options.get(ALLOW_RAW_SQL):
        return
    compiled = context.compiled
    if compiled is not None and not isinstance(compiled.statement, TextClause):
        return
    raise RawSQLRefused(
        f"raw SQL in a tenant transaction for schema {schema!r}: the translate_map strategy "
        "cannot rewrite it and it would run against the default schema. Qualify the names "
        "yourself, use the search_path strategy, or allow it explicitly with "
        f"execution_options({ALLOW_RAW_SQL}=True) (or install(..., allow_raw_sql=True)). "
        f"Statement: {statement[:200]!r}"
    )


# The guard as DialectEvents hooks: they run just before the DBAPI call, inside SQLAlchemy's
# error handling (so the transaction stays usable after a refusal), and returning None lets the
# dialect execute as usual.


def _guard_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
    _refuse_raw_sql(statement, context)


def _guard_execute_no_params(cursor: Any, statement: str, context: Any) -> None:
    _refuse_raw_sql(statement, context)


_GUARDS = (
    ("do_execute", _guard_execute),
    ("do_execute_no_params", _guard_execute_no_params),
    ("do_executemany", _guard_execute),
)


class TranslateMap:
    """SQLAlchemy's ``schema_translate_map``, set in place on the transaction's connection.

    :param placeholders: the schema keys that mean "the tenant". ``None`` (tables declared
        without a schema) is the usual one; add names such as ``"tenant"`` if some models use an
        explicit placeholder schema. Tables with any other explicit schema (shared tables) are
        never rewritten.
    :param allow_raw_sql: let ``text()`` and driver-level SQL run in tenant transactions. They are
        **not** translated: they must qualify every name themselves.

    Setting the map *in place* matters: options given to ``Session(execution_options=...)`` do not
    reach flushes on SQLAlchemy 2.0, while a connection's own options cover everything the ORM
    sends on it. A ``Connection`` object lives for one session transaction, so nothing survives
    to the next checkout.

    .. warning::
       A missing schema is not detected in advance (that would cost a round trip); the first
       statement fails with the database's "relation does not exist" error instead.
    """

    name = "translate_map"

    def __init__(
        self, *, placeholders: Iterable[str | None] = (None,), allow_raw_sql: bool = False
    ) -> None:
        self.placeholders: tuple[str | None, ...] = tuple(placeholders)
        if not self.placeholders:
            raise TenancyError("TranslateMap needs at least one placeholder, usually None")
        for placeholder in self.placeholders:
            if placeholder is not None:
                validate_extra_schema(placeholder)
        self.allow_raw_sql = allow_raw_sql
        self._guarded: weakref.WeakSet[Engine] = weakref.WeakSet()
        self._lock = threading.Lock()

    def translate_map(
        self, schema: str, base: Mapping[str | None, str | None] | None = None
    ) -> dict[str | None, str | None]:
        """The translate map for ``schema``, on top of any map the connection already had."""
        result: dict[str | None, str | None] = dict(base) if base else {}
        for placeholder in self.placeholders:
            result[placeholder] = schema
        return result

    def apply(self, connection: Connection, schema: str | None) -> None:
        options = connection.get_execution_options()
        if schema is None:
            # Only a Connection object that outlives a transaction (a session bound to a
            # Connection) can still carry our map; give it back the map it had.
            if _TENANT_OPTION in options:
                connection.execution_options(
                    schema_translate_map=options.get(_PREVIOUS_MAP_OPTION),
                    **{_TENANT_OPTION: None, _PREVIOUS_MAP_OPTION: None},
                )
            return
        if _TENANT_OPTION in options and options[_TENANT_OPTION] is not None:
            base = options.get(_PREVIOUS_MAP_OPTION)
        else:
            base = options.get("schema_translate_map")
        extra: dict[str, Any] = {_TENANT_OPTION: schema, _PREVIOUS_MAP_OPTION: base}
        if self.allow_raw_sql:
            extra[ALLOW_RAW_SQL] = True  # another installation may have guarded this engine
        connection.execution_options(schema_translate_map=self.translate_map(schema, base), **extra)
        if not self.allow_raw_sql:
            self._guard(connection.engine)

    def _guard(self, engine: Engine) -> None:
        # An OptionEngine (engine.execution_options(...)) shares its parent's dialect; guard
        # the parent once instead of every short-lived proxy.
        root: Engine = getattr(engine, "_proxied", engine)
        if root in self._guarded:
            return
        with self._lock:
            for name, fn in _GUARDS:
                if not event.contains(root, name, fn):
                    # insert=True: before any hook that executes the statement itself
                    event.listen(root, name, fn, insert=True)
            self._guarded.add(root)

    def __repr__(self) -> str:
        return (
            f"TranslateMap(placeholders={self.placeholders!r}, "
            f"allow_raw_sql={self.allow_raw_sql!r})"
        )


class Auto:
    """Pick the strategy by dialect, per connection: the one-line default for portable code.

    PostgreSQL gets :class:`SearchPath` (raw SQL follows the tenant), SQLite gets
    :class:`~sa_tenancy.SQLiteFiles` (tenants as attached files beside the main database), and
    every other dialect :class:`TranslateMap`.
    """

    name = "auto"

    def __init__(self, *, extra_schemas: Iterable[str] = (), allow_raw_sql: bool = False) -> None:
        from .sqlite import SQLiteFiles  # sqlite builds on this module

        self.by_dialect: dict[str, Strategy] = {
            "postgresql": SearchPath(extra_schemas=extra_schemas),
            "sqlite": SQLiteFiles(allow_raw_sql=allow_raw_sql),
        }
        self.default: Strategy = TranslateMap(allow_raw_sql=allow_raw_sql)

    def apply(self, connection: Connection, schema: str | None) -> None:
        self.by_dialect.get(connection.dialect.name, self.default).apply(connection, schema)

    def __repr__(self) -> str:
        return "Auto()"


for _cls in (Strategy, SearchPath, TranslateMap, Auto):
    _cls.__module__ = "sa_tenancy"
del _cls


def resolve_strategy(
    strategy: str | Strategy,
    *,
    extra_schemas: Iterable[str] = (),
    allow_raw_sql: bool = False,
) -> Strategy:
    """Turn ``install()``'s ``strategy=`` argument into a :class:`Strategy` object."""
    if strategy == "search_path":
        return SearchPath(extra_schemas=extra_schemas)
    if strategy == "auto":
        return Auto(extra_schemas=extra_schemas, allow_raw_sql=allow_raw_sql)
    if strategy == "translate_map":
        if tuple(extra_schemas):
            raise TenancyError(
                "extra_schemas applies to the search_path strategy only; with translate_map, "
                "declare shared tables with an explicit schema instead"
            )
        return TranslateMap(allow_raw_sql=allow_raw_sql)
    if isinstance(strategy, str):
        raise TenancyError(
            f"unknown strategy {strategy!r}: use 'search_path', 'translate_map', 'auto' or an "
            "object with an apply(connection, schema) method"
        )
    if not isinstance(strategy, Strategy):
        raise TenancyError(f"{strategy!r} is not a Strategy: it needs apply(connection, schema)")
    return strategy
