"""Create, drop, list and check tenants.

A tenant is a schema (PostgreSQL), a database (MySQL/MariaDB) or a file (SQLite, see
:mod:`sa_tenancy.sqlite`) holding the tables of the application's ``MetaData`` that are declared
without a schema. Every name goes through the same validation as sessions use, and every DDL
statement quotes it with the dialect's ``identifier_preparer``.

Tables are created **through a translate map**, never through a ``search_path``: under a search
path, PostgreSQL's ``has_table`` check can see a same-named table in another schema on the path
and silently skip creating the tenant's own.

How a schema is known to be a tenant: on PostgreSQL, ``create_tenant`` marks it with the comment
``sa_tenancy:tenant``; ``list_tenants`` and ``drop_tenant`` only ever consider marked schemas, so
``public``, shared and system schemas are never listed or dropped by accident.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import MetaData
from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine

from .exc import TenancyError
from .exc import UnknownSchema
from .names import NamePolicy
from .sqlite import tenant_file

__all__ = ["TENANT_MARK", "create_tenant", "drop_tenant", "list_tenants", "tenant_exists"]

#: The comment that marks a PostgreSQL schema as a tenant.
TENANT_MARK = "sa_tenancy:tenant"

_DEFAULT_POLICY = NamePolicy()


def _tenant_tables(metadata: MetaData) -> list[object]:
    return [t for t in metadata.sorted_tables if t.schema is None]


def create_tenant(
    bind: Engine,
    schema: str,
    *,
    metadata: MetaData | None = None,
    names: NamePolicy | None = None,
    directory: str | os.PathLike[str] | None = None,
    exist_ok: bool = False,
) -> str:
    """Create tenant ``schema`` with the schema-less tables of ``metadata``, all or nothing.

    On PostgreSQL the schema, its tables and its tenant mark are created in one transaction: a
    failure leaves nothing behind. On MySQL/MariaDB (``CREATE DATABASE`` is not transactional) the
    database is dropped again if creating a table fails. On SQLite the tenant is the file
    ``<directory>/<schema>.db`` (default: beside the main database file).

    :param exist_ok: return quietly if the tenant already exists (its tables are not checked),
        for idempotent provisioning at start-up.
    :returns: the validated schema name.
    :raises InvalidSchemaName: before anything is sent.
    :raises TenancyError: if the tenant already exists and ``exist_ok`` is false.
    """
    schema = (names or _DEFAULT_POLICY).validate(schema)
    if tenant_exists(bind, schema, names=names, directory=directory):
        if exist_ok:
            return schema
        raise TenancyError(f"tenant {schema!r} already exists")
    dialect = bind.dialect.name
    if dialect == "sqlite":
        return _create_sqlite(bind, schema, metadata, directory)
    if dialect == "postgresql":
        with bind.begin() as conn:
            quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
            conn.exec_driver_sql(f"CREATE SCHEMA {quoted}")
            conn.exec_driver_sql(f"COMMENT ON SCHEMA {quoted} IS '{TENANT_MARK}'")
            if metadata is not None:
                _create_tables(conn, schema, metadata)
        return schema
    if dialect in ("mysql", "mariadb"):
        quoted = bind.dialect.identifier_preparer.quote_identifier(schema)
        with bind.begin() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
        try:
            if metadata is not None:
                with bind.begin() as conn:
                    _create_tables(conn, schema, metadata)
        except BaseException:
            with bind.begin() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
            raise
        return schema
    raise TenancyError(f"create_tenant does not support the {dialect} dialect")


def _create_tables(conn: Connection, schema: str, metadata: MetaData) -> None:
    # Connection.execution_options() changes the connection in place: undo it afterwards.
    conn.execution_options(schema_translate_map={None: schema})
    try:
        metadata.create_all(conn, tables=_tenant_tables(metadata))  # type: ignore[arg-type]
    finally:
        conn.execution_options(schema_translate_map=None)


def _create_sqlite(
    bind: Engine, schema: str, metadata: MetaData | None, directory: str | os.PathLike[str] | None
) -> str:
    with bind.connect() as conn:
        path = tenant_file(conn, schema, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".db-creating")
    engine = create_engine(f"sqlite:///{partial}")
    try:
        if metadata is not None:
            metadata.create_all(engine, tables=_tenant_tables(metadata))  # type: ignore[arg-type]
        else:
            with engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA user_version = 0")
        engine.dispose()
        os.replace(partial, path)  # the tenant appears complete or not at all
    finally:
        engine.dispose()
        partial.unlink(missing_ok=True)
    return schema


def tenant_exists(
    bind: Engine,
    schema: str,
    *,
    names: NamePolicy | None = None,
    directory: str | os.PathLike[str] | None = None,
) -> bool:
    """Whether tenant ``schema`` exists (on PostgreSQL: a schema marked as a tenant)."""
    schema = (names or _DEFAULT_POLICY).validate(schema)
    return schema in _list(bind, directory, only=schema)


def list_tenants(bind: Engine, *, directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of all tenants, sorted."""
    return _list(bind, directory)


def _list(
    bind: Engine, directory: str | os.PathLike[str] | None, only: str | None = None
) -> list[str]:
    dialect = bind.dialect.name
    with bind.connect() as conn:
        if dialect == "postgresql":
            rows = conn.execute(
                text(
                    "SELECT nspname FROM pg_namespace "
                    "WHERE obj_description(oid, 'pg_namespace') = :mark "
                    "AND (CAST(:only AS text) IS NULL OR nspname = :only) ORDER BY nspname"
                ),
                {"mark": TENANT_MARK, "only": only},
            )
            return [r[0] for r in rows]
        if dialect in ("mysql", "mariadb"):
            rows = conn.execute(
                text("SELECT schema_name FROM information_schema.schemata ORDER BY schema_name")
            )
            system = {"information_schema", "mysql", "performance_schema", "sys"}
            found = [r[0] for r in rows if r[0] not in system and r[0] != conn.engine.url.database]
            return [n for n in found if only is None or n == only]
        if dialect == "sqlite":
            folder = tenant_file(conn, "x", directory).parent
            main = Path(conn.engine.url.database or "").resolve()
            found = sorted(
                p.stem for p in folder.glob("*.db") if p.resolve() != main and _valid(p.stem)
            )
            return [n for n in found if only is None or n == only]
    raise TenancyError(f"tenants are not supported on the {dialect} dialect")


def _valid(name: str) -> bool:
    try:
        _DEFAULT_POLICY.validate(name)
    except TenancyError:
        return False
    return True


def drop_tenant(
    bind: Engine,
    schema: str,
    *,
    names: NamePolicy | None = None,
    directory: str | os.PathLike[str] | None = None,
) -> None:
    """Drop tenant ``schema`` and everything in it.

    :raises UnknownSchema: if it is not a tenant (on PostgreSQL: not marked as one), so a
        typo can never drop ``public`` or a shared schema.
    """
    schema = (names or _DEFAULT_POLICY).validate(schema)
    if not tenant_exists(bind, schema, names=names, directory=directory):
        raise UnknownSchema(f"{schema!r} is not a tenant; nothing was dropped")
    if bind.dialect.name == "sqlite":
        with bind.connect() as conn:
            tenant_file(conn, schema, directory).unlink()
        return
    with bind.begin() as conn:
        quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
        kw = "SCHEMA" if bind.dialect.name == "postgresql" else "DATABASE"
        conn.exec_driver_sql(f"DROP {kw} {quoted}" + (" CASCADE" if kw == "SCHEMA" else ""))
