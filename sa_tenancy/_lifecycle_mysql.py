"""Tenant lifecycle on MySQL/MariaDB: a tenant is a database holding a marker table (private).

A MySQL server's databases are all alike: the URL's own database, other applications' databases
and tenants sit side by side. So a database is a tenant only if ``create`` marked it: it holds
the one-row table :data:`MARK_TABLE`, whose row reads ``sa_tenancy:tenant``. A table, rather
than a comment, because MariaDB's database comments do not exist on MySQL; and a table travels
with the database through ``mysqldump`` and is found for every database in one query on
``information_schema.tables``.

The marker is created after the tenant's tables, in the same step: a database whose build failed
half-way is never marked (and ``create`` drops it again, since it made it). Listing, existence
checks and drops consider marked databases only; ``create`` never takes over a database that
exists, marked or not. Exclude the table from Alembic autogenerate
(``include_name=lambda name, type_, parent: name != "_sa_tenancy_tenant"``). A tenant database
made by an older version of sa_tenancy has no marker; add it once by hand (see
``docs/lifecycle.md``).

The row names the tenant's namespace: ``sa_tenancy:tenant`` for the default namespace (every
tenant made before namespaces existed), ``sa_tenancy:tenant:<namespace>`` otherwise. Listing a
namespace reads the rows of the marked databases, 500 at a time in one ``UNION ALL`` query.

:mod:`sa_tenancy.lifecycle` validates every name (the URL's database and the system databases
are never tenants) before calling in here.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine

from ._ledger import tenant_mark
from ._namespace import label
from ._tenant_tables import create_tables
from .exc import TenancyError
from .exc import UnknownSchema

__all__ = ["MARK_TABLE", "create", "drop", "list_marked"]

#: The marker table inside each tenant database.
MARK_TABLE = "_sa_tenancy_tenant"
_DATABASE_EXISTS = 1007  # ER_DB_CREATE_EXISTS


def list_marked(bind: Engine, only: str | None = None, *, namespace: str = "") -> list[str]:
    """Databases holding the marker table of ``namespace`` (only ``only``, if given), sorted."""
    with bind.connect() as conn:
        return _marked(conn, only, namespace)


def _marked(conn: Connection, only: str | None, namespace: str) -> list[str]:
    found = _with_table(conn, only)

    # Quoted by hand: the dialect's quoting also doubles ``%``, which text() does once more.
    def quote(name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    wanted = tenant_mark(namespace)
    mine: list[str] = []
    for start in range(0, len(found), 500):
        part = found[start : start + 500]
        sql = " UNION ALL ".join(
            f"SELECT :n{i} AS s, mark FROM {quote(name)}.{MARK_TABLE}"
            for i, name in enumerate(part)
        )
        rows = conn.execute(text(sql), {f"n{i}": name for i, name in enumerate(part)})
        mine.extend(r[0] for r in rows if r[1] == wanted)
    return sorted(set(mine))


def _with_table(conn: Connection, only: str | None) -> list[str]:
    rows = conn.execute(
        text(
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name = :t AND (:only IS NULL OR table_schema = :only)"
        ),
        {"t": MARK_TABLE, "only": only},
    )
    # information_schema compares case-insensitively; a tenant is exactly its name.
    return sorted(r[0] for r in rows if only is None or r[0] == only)


def create(bind: Engine, schema: str, metadata: MetaData | None, *, namespace: str = "") -> None:
    """Create the database, its tables and its marker; drop the database if that fails.

    :raises TenancyError: if a database of that name exists: it is never taken over.
    """
    quoted = bind.dialect.identifier_preparer.quote_identifier(schema)
    with bind.begin() as conn:
        try:
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
        except sa_exc.DBAPIError as error:
            args = getattr(error.orig, "args", ())
            if args and args[0] == _DATABASE_EXISTS and _with_table(conn, schema):
                raise TenancyError(
                    f"{schema!r} is already a tenant of another namespace: tenant names are "
                    "unique per server, whatever the namespace; choose another name"
                ) from None
            if args and args[0] == _DATABASE_EXISTS:
                raise TenancyError(
                    f"database {schema!r} already exists and is not a tenant (it has no "
                    f"{MARK_TABLE} table): create_tenant never takes over a database; "
                    "choose another name"
                ) from None
            raise
    # From here on the database is this call's own: dropping it on failure destroys nothing
    # that existed before. CREATE DATABASE and CREATE TABLE commit implicitly on MySQL, so one
    # transaction cannot make the tenant all or nothing.
    try:
        with bind.begin() as conn:
            if metadata is not None:
                create_tables(conn, schema, metadata)
            conn.exec_driver_sql(
                f"CREATE TABLE {quoted}.{MARK_TABLE} (mark VARCHAR(64) NOT NULL PRIMARY KEY)"
            )
            conn.exec_driver_sql(
                # A validated namespace: letters, digits and underscores only.
                f"INSERT INTO {quoted}.{MARK_TABLE} (mark) VALUES ('{tenant_mark(namespace)}')"
            )
    except BaseException:
        with bind.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
        raise


def drop(bind: Engine, schema: str, *, namespace: str = "") -> None:
    """Drop database ``schema`` if it carries the marker table.

    :raises UnknownSchema: if it does not (nothing is dropped).
    """
    quoted = bind.dialect.identifier_preparer.quote_identifier(schema)
    with bind.begin() as conn:
        if not _marked(conn, schema, namespace):
            raise UnknownSchema(
                f"{schema!r} is not a tenant of {label(namespace)}; nothing was dropped"
            )
        conn.exec_driver_sql(f"DROP DATABASE {quoted}")
