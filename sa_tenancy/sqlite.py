"""SQLite as the embedded default: one database file per tenant, attached on demand.

SQLite has no schemas, but it can ``ATTACH`` another database file under a name, and then
``"acme".notes`` means the ``notes`` table of that file. So a tenant is a file,
``<directory>/<schema>.db``, whose tables have no schema at all, and :class:`SQLiteFiles` is a
:class:`~sa_tenancy.TranslateMap` that, at each transaction begin, makes sure the tenant's file
is the one attached to the connection under the tenant's name.

Only the current tenant's file is attached, and only while a tenant session uses the
connection: it is detached when the connection goes back to the pool (together with any
temporary table made meanwhile), so a plain checkout never reaches a tenant, and SQLite's limit
of ten attached databases never matters. ``ATTACH`` is only allowed outside a transaction; the
pysqlite driver opens its transaction lazily, after the begin event, which is when this runs.

What SQLAlchemy does not translate (a ``text()`` fragment inside a ``select()``, a lightweight
``table()``) resolves in ``main``; so a tenant is refused while ``main`` holds a table or view
named like one of the tenant's: such a fragment then fails with "no such table" instead of
reading the main database. A tenant name must be a plain file name, not ``main``/``temp``, and
its file must not be the main database file (:mod:`sa_tenancy._dialect_names`).

By default the tenant files live beside the main database file (``sqlite:///data/app.db`` →
``data/acme.db``); :func:`sa_tenancy.create_tenant` follows the same convention.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.pool import ConnectionPoolEntry

from ._dialect_names import check_sqlite_file
from ._dialect_names import check_sqlite_name
from ._events import listen_once
from ._keys import SQLITE_ATTACHED
from ._lifecycle_sqlite import APPLICATION_ID
from ._lifecycle_sqlite import is_marked
from .exc import TenancyError
from .exc import UnknownSchema
from .strategies import TranslateMap

__all__ = ["SQLiteFiles", "tenant_file"]


def tenant_file(
    connection: Connection, schema: str, directory: str | os.PathLike[str] | None
) -> Path:
    """The file holding tenant ``schema``: in ``directory``, else beside the main database."""
    if directory is None:
        main = connection.engine.url.database
        if not main or main == ":memory:" or main.startswith("file:"):
            raise TenancyError(
                "an in-memory SQLite database has no directory for tenant files; "
                "pass SQLiteFiles(directory=...) / create_tenant(..., directory=...)"
            )
        directory = Path(main).resolve().parent
    return Path(directory) / f"{schema}.db"


def _run(dbapi: Any, statement: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
    cursor = dbapi.cursor()
    try:
        cursor.execute(statement, parameters)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _clean(dbapi: Any, info: dict[str, Any]) -> None:
    """Detach the tenant file and drop temporary tables and views: nothing crosses a checkout."""
    attached = info.pop(SQLITE_ATTACHED, None)
    if attached is None:
        return
    for kind, name in _run(
        dbapi, "SELECT type, name FROM temp.sqlite_master WHERE type IN ('table', 'view')"
    ):
        _run(dbapi, f"DROP {kind.upper()} IF EXISTS temp.{_quote(name)}")
    _run(dbapi, f"DETACH DATABASE {_quote(attached[0])}")


def _on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    if dbapi_connection is None or SQLITE_ATTACHED not in record.info:
        return
    try:
        _clean(dbapi_connection, record.info)
    except Exception:
        record.invalidate()  # unknown state: never hand it out again


class SQLiteFiles(TranslateMap):
    """Tenants as SQLite files attached on demand, addressed through a translate map.

    :param directory: where ``<schema>.db`` files live; default: beside the main database file.
    :param create: create a missing tenant file (an empty database) instead of raising
        :class:`~sa_tenancy.UnknownSchema`.

    Example::

        engine = create_engine("sqlite:///data/app.db")
        sa_tenancy.install(SessionLocal, strategy=SQLiteFiles())
    """

    name = "sqlite_files"

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        create: bool = False,
        allow_raw_sql: bool = False,
    ) -> None:
        super().__init__(allow_raw_sql=allow_raw_sql)
        self.directory = directory
        self.create = create

    def apply(self, connection: Connection, schema: str | None) -> None:
        if schema is not None:
            if connection.dialect.name != "sqlite":
                raise TenancyError(
                    f"SQLiteFiles works on SQLite only, not {connection.dialect.name}"
                )
            self._attach(connection, check_sqlite_name(schema))
        else:
            pooled = connection.connection
            dbapi = pooled.dbapi_connection
            if SQLITE_ATTACHED in pooled.info and not getattr(dbapi, "in_transaction", True):
                _clean(dbapi, pooled.info)
        super().apply(connection, schema)

    def _attach(self, connection: Connection, schema: str) -> None:
        pooled = connection.connection
        path = tenant_file(connection, schema, self.directory)
        if pooled.info.get(SQLITE_ATTACHED) == (schema, path):
            return
        check_sqlite_file(schema, path, connection.engine.url.database)
        created = not path.exists()
        if created and not self.create:
            raise UnknownSchema(
                f"no SQLite file for tenant {schema!r} at {path}; create the tenant first "
                "(sa_tenancy.create_tenant) or use SQLiteFiles(create=True)"
            )
        if not created and not is_marked(path):
            raise UnknownSchema(
                f"{path} is not a tenant file (it carries no sa_tenancy mark); create tenants "
                "with sa_tenancy.create_tenant, or mark an existing one (docs/lifecycle.md)"
            )
        dbapi = pooled.dbapi_connection
        assert dbapi is not None  # a checked-out connection always has one
        if getattr(dbapi, "in_transaction", False):  # ATTACH/DETACH would fail
            raise TenancyError(
                "cannot attach the tenant's SQLite file inside a transaction that is already "
                "open; do not emit BEGIN before the session's first statement"
            )
        listen_once(connection.engine.pool, "checkin", _on_checkin)  # before anything is attached
        _clean(dbapi, pooled.info)
        _run(dbapi, f"ATTACH DATABASE ? AS {_quote(schema)}", (str(path),))
        pooled.info[SQLITE_ATTACHED] = (schema, path)
        if created:  # made just now by ATTACH: mark it as a tenant, like create_tenant does
            _run(dbapi, f"PRAGMA {_quote(schema)}.application_id = {APPLICATION_ID}")
        shared = _run(
            dbapi,
            f"SELECT m.name FROM main.sqlite_master AS m JOIN {_quote(schema)}.sqlite_master "
            "AS t ON t.name = m.name WHERE m.type IN ('table', 'view') LIMIT 1",
        )
        if shared:
            _clean(dbapi, pooled.info)
            raise TenancyError(
                f"the main database holds a table {shared[0][0]!r} like tenant {schema!r}: SQL "
                "that SQLAlchemy does not translate would read it. Keep tenant tables out of the "
                "main database file."
            )

    def __repr__(self) -> str:
        return f"SQLiteFiles(directory={self.directory!r}, create={self.create!r})"


SQLiteFiles.__module__ = "sa_tenancy"
