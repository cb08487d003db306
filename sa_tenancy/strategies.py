"""How a tenant is applied to a transaction's connection.

A :class:`Strategy` is called once at the start of every session transaction (never for a
savepoint) with the :class:`~sqlalchemy.engine.Connection` the transaction will use and the
validated tenant schema. Whatever it changes must last for that transaction only: the DBAPI
connection goes back to a pool afterwards and must carry nothing to its next user.

Two strategies ship with the library:

:class:`SearchPath`
    The transaction-scoped ``search_path`` (``SET LOCAL`` / ``set_config(..., true)``) on
    PostgreSQL. Every statement of the transaction sees the tenant, raw
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
    in a tenant transaction is refused (:class:`~sa_tenancy.RawSQLRefused`, see
    :mod:`sa_tenancy._guard`) unless explicitly allowed. What SQLAlchemy does not translate
    *inside* a statement (a ``text()`` fragment, a lightweight ``table()``) cannot be recognised
    reliably, so the default schema is made unreachable instead: on PostgreSQL the transaction's
    path names no schema at all (:mod:`sa_tenancy._pgpath`); on MySQL/MariaDB the default
    database must share no table name with the tenant; on SQLite (:class:`~sa_tenancy.SQLiteFiles`)
    neither may ``main``. Such a fragment then fails with the database's own "does not exist"
    error.

:class:`~sa_tenancy.Auto` (``strategy="auto"``) picks one per dialect; it lives in
:mod:`sa_tenancy._auto`, which imports this module and :mod:`sa_tenancy.sqlite` (never the
other way round).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol
from typing import runtime_checkable

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.util import LRUCache

from . import _dialect_names
from . import _pgpath
from . import _roles
from ._guard import ensure_guard
from ._keys import ALLOW_RAW_SQL
from ._keys import DEFAULT_DB_CHECKED
from ._keys import SAVED_MAP_OPTION
from ._keys import TENANT_OPTION
from .exc import InvalidSchemaName
from .exc import TenancyError
from .names import validate_extra_schema

if TYPE_CHECKING:
    from ._roles import TenantRoles

__all__ = ["ALLOW_RAW_SQL", "SearchPath", "Strategy", "TranslateMap"]


@runtime_checkable
class Strategy(Protocol):
    """Applies a tenant to the connection of one transaction.

    ``apply`` runs inside :meth:`SessionEvents.after_begin
    <sqlalchemy.orm.SessionEvents.after_begin>`, before any statement of the transaction. It may
    only use ``connection`` (the one the transaction will run on), must limit its effect to this
    transaction, and must raise rather than silently do nothing when it cannot work on this
    connection. ``schema`` is already validated; it is ``None`` when the session has no tenant
    (and the installation does not require one), in which case the strategy undoes anything it
    may have left on this very ``Connection`` object. It is also called with ``None`` when a
    session's transaction ends on a ``Connection`` that outlives it (a session bound to a
    ``Connection``), so that the ``Connection`` goes back to its owner as it was.
    """

    def apply(self, connection: Connection, schema: str | None) -> None:
        """Make ``connection`` serve ``schema`` for the current transaction."""


def _autocommit(connection: Connection) -> bool:
    """Whether the DBAPI connection is in autocommit (what SQLAlchemy itself sets)."""
    dbapi = connection.connection.dbapi_connection
    return bool(getattr(dbapi, "autocommit", False))


class SearchPath:
    """Transaction-scoped ``search_path`` on PostgreSQL.

    :param extra_schemas: schemas searched after the tenant, e.g. ``("public",)`` when extension
        types such as ``citext`` live in ``public``. Never added implicitly: a tenant table must
        not silently resolve to a same-named table in a shared schema.
    :param check_exists: confirm, in the same statement, that the schema exists and the role
        may use it; raise :class:`~sa_tenancy.UnknownSchema` otherwise. Leave it on. Without
        ``extra_schemas`` it runs the first time a pooled connection serves a tenant: the path
        then holds nothing else, so a tenant dropped or made unusable later fails closed
        ("relation does not exist", which the web integrations still answer with 404).
    :param tenant_roles: also run each tenant transaction as the tenant's own PostgreSQL role
        (``True`` or a :class:`~sa_tenancy.TenantRoles`), so that the server itself refuses
        another tenant's tables; see :func:`sa_tenancy.tenant_role`.

    The path ends with ``pg_temp``: PostgreSQL otherwise searches temporary tables *first*, and
    a temporary table named like a tenant table would shadow it. Temporary objects never cross
    tenants: a pooled connection that may hold another tenant's discards them first, in the same
    message.

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

    def __init__(
        self,
        *,
        extra_schemas: Iterable[str] = (),
        check_exists: bool = True,
        tenant_roles: bool | TenantRoles = False,
    ) -> None:
        self.tenant_roles = _roles.resolve(tenant_roles)
        if isinstance(extra_schemas, str):
            raise TenancyError(
                f"extra_schemas must be a list of schema names, not the str {extra_schemas!r} "
                f"(which would be read letter by letter); write [{extra_schemas!r}]"
            )
        self.extra_schemas = tuple(validate_extra_schema(s) for s in extra_schemas)
        self.check_exists = check_exists
        self._suffix = "".join(", " + _pgpath.pg_identifier(s) for s in self.extra_schemas)
        self._suffix += ", pg_temp"

    def search_path(self, connection: Connection, schema: str) -> str:
        """The ``search_path`` value for ``schema``: quoted tenant, extras, then ``pg_temp``."""
        return _pgpath.pg_identifier(schema) + self._suffix

    def apply(self, connection: Connection, schema: str | None) -> None:
        if schema is None:
            _pgpath.restore(connection)
            return
        dialect = connection.dialect
        if dialect.name != "postgresql":
            raise TenancyError(
                f"the search_path strategy needs PostgreSQL, not {dialect.name}; "
                "use strategy='translate_map' on this database"
            )
        if _autocommit(connection):
            raise TenancyError(
                "the search_path strategy cannot work on an AUTOCOMMIT connection: SET LOCAL "
                "would end with each statement and queries would read the default schema. "
                "Use a transactional engine for tenant sessions, or strategy='translate_map'."
            )
        if schema == "$user":
            raise InvalidSchemaName(
                "tenant schema name '$user' cannot be used with the search_path strategy: on a "
                "search_path it always means the schema named after the current role. Rename "
                "the tenant or use strategy='translate_map'."
            )
        roles = self.tenant_roles
        if roles is not None:
            _roles.check_login(connection)
        _pgpath.apply(
            connection,
            self.search_path(connection, schema),
            tenant=schema,
            check=self.check_exists,
            # With extra schemas a missing tenant would fall through to them: check every time.
            once=not self.extra_schemas,
            role=None if roles is None else roles.role(schema),
        )

    def __repr__(self) -> str:
        roles = "" if self.tenant_roles is None else f", tenant_roles={self.tenant_roles!r}"
        return f"SearchPath(extra_schemas={self.extra_schemas!r}{roles})"


_ENGINE_DEFAULT = object()

# MySQL/MariaDB: does the connection's default database hold a table named like one of the
# tenant's? Untranslated SQL would read it.
_SHARED_NAMES = text(
    "SELECT d.table_name FROM information_schema.tables AS d "
    "JOIN information_schema.tables AS t ON t.table_name = d.table_name "
    "WHERE d.table_schema = DATABASE() AND t.table_schema = :schema LIMIT 1"
).execution_options(**{ALLOW_RAW_SQL: True})


def give_back_map(connection: Connection) -> str | None:
    """Put back the translate map and compiled cache a tenant replaced on ``connection``.

    :returns: the tenant whose map was removed, or None if the Connection carried none.
    """
    options = connection.get_execution_options()
    saved = options.get(SAVED_MAP_OPTION)
    schema: str | None = options.get(TENANT_OPTION)
    if saved is None:
        return schema
    previous_map, previous_cache = saved
    if previous_cache is _ENGINE_DEFAULT:
        previous_cache = connection.engine._compiled_cache
    connection.execution_options(
        schema_translate_map=previous_map,
        compiled_cache=previous_cache,
        **{TENANT_OPTION: None, SAVED_MAP_OPTION: None},
    )
    return schema


class TranslateMap:
    """SQLAlchemy's ``schema_translate_map``, set in place on the transaction's connection.

    :param placeholders: the schema keys that mean "the tenant". ``None`` (tables declared
        without a schema) is the usual one; add names such as ``"tenant"`` if some models use an
        explicit placeholder schema. Tables with any other explicit schema (shared tables) are
        never rewritten.
    :param allow_raw_sql: let ``text()`` and driver-level SQL run in tenant transactions. They are
        **not** translated: they must qualify every name themselves.
    :param tenant_roles: PostgreSQL only: also run each tenant transaction as the tenant's own
        role (``True`` or a :class:`~sa_tenancy.TenantRoles`). Sound with the translate map:
        the role decides what a statement may touch, whichever schema its names resolve to,
        and ``SET LOCAL ROLE`` travels in the message that already sets the empty path.

    Setting the map *in place* matters: options given to ``Session(execution_options=...)`` do not
    reach flushes on SQLAlchemy 2.0, while a connection's own options cover everything the ORM
    sends on it. What the Connection had before is restored when a session's transaction ends
    on a Connection that outlives it.

    Tenant statements compile into a compiled cache of their own: SQLAlchemy's cache key does
    not say whether a statement was compiled with ``None`` in the map, so a statement compiled
    elsewhere on the engine with a map lacking ``None`` would otherwise make every tenant
    transaction running it fail.

    Untranslated SQL fails closed: on PostgreSQL the transaction's ``search_path`` names no
    schema (it travels with psycopg's ``BEGIN``, so no round trip more; one
    more with other drivers), on MySQL/MariaDB the default database must share no table name
    with the tenant (checked once per pooled connection and tenant), on SQLite neither may
    ``main``. A fragment SQLAlchemy did not translate then fails with "does not exist".

    .. warning::
       A missing schema is not detected in advance (that would cost a round trip); the first
       statement fails with the database's "relation does not exist" error instead. Under
       ``AUTOCOMMIT`` on PostgreSQL no transaction-scoped path can be set: only top-level raw
       SQL is refused there.
    """

    name = "translate_map"

    def __init__(
        self,
        *,
        placeholders: Iterable[str | None] = (None,),
        allow_raw_sql: bool = False,
        tenant_roles: bool | TenantRoles = False,
    ) -> None:
        self.tenant_roles = _roles.resolve(tenant_roles)
        self.placeholders: tuple[str | None, ...] = tuple(placeholders)
        if not self.placeholders:
            raise TenancyError("TranslateMap needs at least one placeholder, usually None")
        for placeholder in self.placeholders:
            if placeholder is not None:
                validate_extra_schema(placeholder)
        self.allow_raw_sql = allow_raw_sql
        self._caches: weakref.WeakKeyDictionary[Engine, LRUCache[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )

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
        dialect = connection.dialect.name
        if schema is None:
            give_back_map(connection)
            if dialect == "postgresql":
                _pgpath.restore(connection)
            return
        roles = self.tenant_roles
        if roles is not None and (dialect != "postgresql" or _autocommit(connection)):
            raise TenancyError(
                "tenant_roles needs PostgreSQL and a transaction (SET LOCAL ROLE does nothing "
                f"under AUTOCOMMIT); this connection is {dialect}"
                + (" in AUTOCOMMIT" if dialect == "postgresql" else "")
            )
        if dialect == "postgresql":
            _pgpath.fits_server(connection, schema)
            if roles is not None:
                _roles.check_login(connection)
            if not _autocommit(connection):
                role = None if roles is None else roles.role(schema)
                _pgpath.apply(connection, _pgpath.NO_SCHEMA, tenant=schema, check=False, role=role)
        elif dialect in ("mysql", "mariadb"):
            self._check_default_database(connection, schema)
        saved = options.get(SAVED_MAP_OPTION)
        if saved is None:
            saved = (
                options.get("schema_translate_map"),
                options.get("compiled_cache", _ENGINE_DEFAULT),
            )
        extra: dict[str, Any] = {
            TENANT_OPTION: schema,
            SAVED_MAP_OPTION: saved,
            "schema_translate_map": self.translate_map(schema, saved[0]),
        }
        cache = self._cache_for(connection.engine)
        if cache is not None:
            extra["compiled_cache"] = cache
        if self.allow_raw_sql:
            extra[ALLOW_RAW_SQL] = True  # another installation may have guarded this engine
        connection.execution_options(**extra)
        if not self.allow_raw_sql:
            ensure_guard(connection.engine)

    def _cache_for(self, engine: Engine) -> LRUCache[Any, Any] | None:
        root: Engine = getattr(engine, "_proxied", engine)
        cache = self._caches.get(root)
        if cache is None:
            shared = root._compiled_cache
            if shared is None:
                return None  # the engine caches nothing (query_cache_size=0)
            cache = self._caches.setdefault(root, LRUCache(getattr(shared, "capacity", 500)))
        return cache

    @staticmethod
    def _check_default_database(connection: Connection, schema: str) -> None:
        _dialect_names.check_mysql(schema, connection.engine.url.database)
        home = connection.connection.info
        checked: set[str] = home.setdefault(DEFAULT_DB_CHECKED, set())
        if schema in checked:
            return
        shared = connection.execute(_SHARED_NAMES, {"schema": schema}).scalar()
        if shared is not None:
            raise TenancyError(
                f"the connection's default database holds a table {shared!r} like tenant "
                f"{schema!r}: SQL that SQLAlchemy does not translate would read it. Connect "
                "without a default database (no database in the URL), or keep tenant tables "
                "out of it."
            )
        checked.add(schema)

    def __repr__(self) -> str:
        return (
            f"TranslateMap(placeholders={self.placeholders!r}, "
            f"allow_raw_sql={self.allow_raw_sql!r}"
            + ("" if self.tenant_roles is None else f", tenant_roles={self.tenant_roles!r}")
            + ")"
        )


for _cls in (Strategy, SearchPath, TranslateMap):
    _cls.__module__ = "sa_tenancy"
del _cls
