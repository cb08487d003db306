"""SQLite as the embedded default: one database file per tenant, attached on demand.

SQLite has no schemas, but it can ``ATTACH`` another database file under a name, and then
``"acme".notes`` means the ``notes`` table of that file. So a tenant is a file,
``<directory>/<schema>.db``, whose tables have no schema at all, and :class:`SQLiteFiles` is a
:class:`~sa_tenancy.TranslateMap` that, at each transaction begin, makes sure the tenant's file
is the one attached to the connection under the tenant's name.

Only the current tenant's file is attached: switching tenants detaches the previous one, so a
pooled connection can reach one tenant at a time, and SQLite's limit of ten attached databases
never matters. ``ATTACH`` is only allowed outside a transaction; the pysqlite driver opens its
transaction lazily, after the begin event, which is when this runs.

By default the tenant files live beside the main database file (``sqlite:///data/app.db`` →
``data/acme.db``); :func:`sa_tenancy.create_tenant` follows the same convention.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import Connection

from .exc import TenancyError
from .exc import UnknownSchema
from .strategies import TranslateMap

__all__ = ["SQLiteFiles", "tenant_file"]

# Pool-level (per DBAPI connection) record of which tenant file is attached, and under what name.
_ATTACHED = "sa_tenancy_sqlite_attached"


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
            self._attach(connection, schema)
        elif _ATTACHED in connection.connection.info:
            self._detach(connection)
        super().apply(connection, schema)

    def _detach(self, connection: Connection) -> None:
        pooled = connection.connection
        name, _ = pooled.info.pop(_ATTACHED)
        quote = connection.dialect.identifier_preparer.quote_identifier
        dbapi = pooled.dbapi_connection
        assert dbapi is not None  # a checked-out connection always has one
        cursor = dbapi.cursor()
        try:
            cursor.execute(f"DETACH DATABASE {quote(name)}")
        finally:
            cursor.close()

    def _attach(self, connection: Connection, schema: str) -> None:
        pooled = connection.connection
        path = tenant_file(connection, schema, self.directory)
        if pooled.info.get(_ATTACHED) == (schema, path):
            return
        if not self.create and not path.exists():
            raise UnknownSchema(
                f"no SQLite file for tenant {schema!r} at {path}; create the tenant first "
                "(sa_tenancy.create_tenant) or use SQLiteFiles(create=True)"
            )
        dbapi = pooled.dbapi_connection
        assert dbapi is not None  # a checked-out connection always has one
        if getattr(dbapi, "in_transaction", False):  # ATTACH/DETACH would fail
            raise TenancyError(
                "cannot attach the tenant's SQLite file inside a transaction that is already "
                "open; do not emit BEGIN before the session's first statement"
            )
        if _ATTACHED in pooled.info:
            self._detach(connection)
        quote = connection.dialect.identifier_preparer.quote_identifier
        cursor = dbapi.cursor()
        try:
            cursor.execute(f"ATTACH DATABASE ? AS {quote(schema)}", (str(path),))
        finally:
            cursor.close()
        pooled.info[_ATTACHED] = (schema, path)

    def __repr__(self) -> str:
        return f"SQLiteFiles(directory={self.directory!r}, create={self.create!r})"


SQLiteFiles.__module__ = "sa_tenancy"
