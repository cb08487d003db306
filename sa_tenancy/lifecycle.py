"""Create, clone, claim, rename, drop, list and check tenants.

A tenant is a schema (PostgreSQL), a database (MySQL/MariaDB) or a file (SQLite, see
:mod:`sa_tenancy.sqlite`) holding the tables of the application's ``MetaData`` that are declared
without a schema. Every name goes through the same validation as sessions use, and every DDL
statement quotes it with the dialect's ``identifier_preparer``.

Tables are created **through a translate map**, never through a ``search_path``: under a search
path, PostgreSQL's ``has_table`` check can see a same-named table in another schema on the path
and silently skip creating the tenant's own.

How a schema is known to be a tenant: on PostgreSQL, ``create_tenant`` marks it with the comment
``sa_tenancy:tenant``; ``list_tenants``, ``rename_tenant`` and ``drop_tenant`` only ever consider
marked schemas, so ``public``, shared and system schemas are never listed, renamed or dropped by
accident. The mark travels with the schema (renames, dumps and restores). Alongside it, every
operation writes the tenant's Alembic revision to the ledger table ``sa_tenancy.tenant_versions``
in the same transaction (see :mod:`sa_tenancy._ledger`), which is what makes a drift report over
thousands of tenants one query.

Provisioning fast, on PostgreSQL:

* :func:`clone_tenant` copies a template tenant server-side (types, sequences, tables,
  constraints, indexes, its Alembic version; optionally its rows) instead of replaying
  ``create_all`` or the migration history;
* :func:`fill_reservoir` prepares spare, fully built schemas ahead of time (marked
  ``sa_tenancy:spare``, migrated with the fleet) and :func:`claim_tenant` turns one into a
  tenant with ``ALTER SCHEMA ... RENAME``: a signup costs a few statements, not a build.

Dropping is safe at scale: a schema with many tables is dropped a batch of tables per
transaction, so one ``DROP SCHEMA ... CASCADE`` cannot exhaust ``max_locks_per_transaction``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import MetaData
from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine

from . import _ledger
from ._clone import clone_structure
from ._ledger import DROPPING_MARK
from ._ledger import SPARE_MARK
from ._ledger import TENANT_MARK
from .exc import InvalidSchemaName
from .exc import ReservoirEmpty
from .exc import TenancyError
from .exc import UnknownSchema
from .names import NamePolicy
from .sqlite import tenant_file

if TYPE_CHECKING:
    from alembic.config import Config

    AlembicConfig = str | os.PathLike[str] | Config

__all__ = [
    "TENANT_MARK",
    "claim_tenant",
    "clone_tenant",
    "create_tenant",
    "drop_tenant",
    "fill_reservoir",
    "list_tenants",
    "rename_tenant",
    "reservoir_size",
    "tenant_exists",
]

_DEFAULT_POLICY = NamePolicy()
#: Above this many catalog objects a schema is dropped in batches of tables.
_DROP_AT_ONCE = 1000


def _tenant_tables(metadata: MetaData) -> list[object]:
    return [t for t in metadata.sorted_tables if t.schema is None]


def _validate(schema: object, names: NamePolicy | None) -> str:
    checked = (names or _DEFAULT_POLICY).validate(schema)
    if checked == _ledger.LEDGER_SCHEMA:
        raise InvalidSchemaName(
            f"{checked!r} is sa_tenancy's own shared schema (the version ledger); "
            "choose another tenant name"
        )
    return checked


def _pg_only(bind: Engine, what: str) -> None:
    if bind.dialect.name != "postgresql":
        raise TenancyError(f"{what} is supported on PostgreSQL only, not {bind.dialect.name}")


def _mark(conn: Connection, schema: str) -> str | None:
    return conn.execute(
        text("SELECT obj_description(to_regnamespace(quote_ident(:s)), 'pg_namespace')"),
        {"s": schema},
    ).scalar()


def _set_mark(conn: Connection, schema: str, mark: str) -> None:
    quoted = _ledger.ident(schema)
    # The mark is one of this module's constants, never user input.
    _ledger.execute_ddl(conn, f"COMMENT ON SCHEMA {quoted} IS '{mark}'")


@contextmanager
def _duplicate_is_tenancy_error(schema: str) -> Iterator[None]:
    try:
        yield
    except sa_exc.DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == "42P06":  # duplicate_schema
            raise TenancyError(
                f"schema {schema!r} already exists; choose another name or drop it first"
            ) from None
        raise


def _build(
    conn: Connection,
    schema: str,
    *,
    mark: str,
    metadata: MetaData | None,
    alembic_config: AlembicConfig | None,
    template: str | None = None,
    data: bool = False,
) -> str | None:
    """Make ``schema`` complete inside the caller's transaction; return its recorded revision."""
    quoted = _ledger.ident(schema)
    _ledger.ensure(conn)
    with _duplicate_is_tenancy_error(schema):
        _ledger.execute_ddl(conn, f"CREATE SCHEMA {quoted}")
    _set_mark(conn, schema, mark)
    revision: str | None = None
    if template is not None:
        if _mark(conn, template) not in (TENANT_MARK, SPARE_MARK):
            raise UnknownSchema(f"template {template!r} is not a tenant; nothing was created")
        clone_structure(conn, template, schema, data=data)
        from .migrate import current_revision  # no Alembic import: it reads one table

        revision = current_revision(conn, schema)
    elif metadata is not None:
        _create_tables(conn, schema, metadata)
        if alembic_config is not None:
            from .migrate import stamp_tenant

            revision = stamp_tenant(conn, schema, alembic_config)
    elif alembic_config is not None:
        from .migrate import upgrade_tenant

        revision = upgrade_tenant(conn, schema, alembic_config, record=False)
    _ledger.record(conn, schema, revision, spare=mark == SPARE_MARK)
    return revision


def create_tenant(
    bind: Engine,
    schema: str,
    *,
    metadata: MetaData | None = None,
    names: NamePolicy | None = None,
    directory: str | os.PathLike[str] | None = None,
    exist_ok: bool = False,
    alembic_config: AlembicConfig | None = None,
) -> str:
    """Create tenant ``schema`` with the schema-less tables of ``metadata``, all or nothing.

    On PostgreSQL the schema, its tables, its tenant mark, its Alembic version and its ledger
    row are written in one transaction: a failure leaves nothing behind. With ``alembic_config``
    (a path to ``alembic.ini`` or an ``alembic.config.Config``) and ``metadata``, the new tenant
    is stamped at head, so later migrations do not replay history on tables that
    ``create_all`` already made current; with ``alembic_config`` and no ``metadata``, the tables
    come from running the migrations up to head, in the same transaction.

    On MySQL/MariaDB (``CREATE DATABASE`` is not transactional) the database is dropped again if
    creating a table fails. On SQLite the tenant is the file ``<directory>/<schema>.db``
    (default: beside the main database file).

    :param exist_ok: return quietly if the tenant already exists (its tables are not checked),
        for idempotent provisioning at start-up.
    :returns: the validated schema name.
    :raises InvalidSchemaName: before anything is sent.
    :raises TenancyError: if the tenant already exists and ``exist_ok`` is false.
    """
    schema = _validate(schema, names)
    if bind.dialect.name == "sqlite":
        _make_sqlite_directory(bind, directory)
    if tenant_exists(bind, schema, names=names, directory=directory):
        if exist_ok:
            return schema
        raise TenancyError(f"tenant {schema!r} already exists")
    dialect = bind.dialect.name
    if dialect == "sqlite":
        return _create_sqlite(bind, schema, metadata, directory)
    if dialect == "postgresql":
        with bind.begin() as conn:
            _build(conn, schema, mark=TENANT_MARK, metadata=metadata, alembic_config=alembic_config)
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


def clone_tenant(
    bind: Engine,
    template: str,
    schema: str,
    *,
    data: bool = False,
    names: NamePolicy | None = None,
) -> str:
    """Create tenant ``schema`` as a copy of tenant ``template`` (PostgreSQL), all or nothing.

    Copies enum types, sequences (owned by the copied columns), tables with their defaults,
    identity and generated columns, constraints, foreign keys and indexes, all pointing at the
    new schema, plus the template's ``alembic_version`` rows and ledger revision, so the clone is
    exactly as migrated as its template. With ``data=True`` every row is copied too (seed data)
    and sequences continue where the template's are. Views, functions and triggers are not
    copied.

    Much faster than ``create_all`` or replaying migrations: the catalog is read in a handful of
    queries and the whole DDL goes to the server in one round trip.

    :raises UnknownSchema: if ``template`` is not a tenant.
    """
    schema = _validate(schema, names)
    template = _validate(template, names)
    _pg_only(bind, "clone_tenant")
    with bind.begin() as conn:
        _build(conn, schema, mark=TENANT_MARK, metadata=None, alembic_config=None,
               template=template, data=data)  # fmt: skip
    return schema


def rename_tenant(bind: Engine, old: str, new: str, *, names: NamePolicy | None = None) -> str:
    """Rename tenant ``old`` to ``new`` (PostgreSQL); its ledger row follows in one transaction.

    Sequences, defaults and foreign keys refer to objects by OID and follow the rename. Refused
    while a migration holds the tenant's advisory lock.

    :raises UnknownSchema: if ``old`` is not a tenant.
    :raises TenancyError: if ``new`` already exists or the tenant is being migrated.
    """
    old = _validate(old, names)
    new = _validate(new, names)
    _pg_only(bind, "rename_tenant")
    with bind.begin() as conn:
        if _mark(conn, old) != TENANT_MARK:
            raise UnknownSchema(f"{old!r} is not a tenant; nothing was renamed")
        if not _ledger.try_lock(conn, old):
            raise TenancyError(f"tenant {old!r} is being migrated; retry when that is done")
        q = _ledger.ident
        with _duplicate_is_tenancy_error(new):
            _ledger.execute_ddl(conn, f"ALTER SCHEMA {q(old)} RENAME TO {q(new)}")
        if _ledger.exists(conn):
            _ledger.rename(conn, old, new)
    return new


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
    """Names of all tenants, sorted (spare reservoir schemas are not tenants yet)."""
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
    batch_size: int = 100,
) -> None:
    """Drop tenant ``schema`` and everything in it.

    On PostgreSQL a small tenant goes in one transaction. A tenant with more catalog objects
    than one transaction should lock is first unmarked (it stops being a tenant and leaves the
    ledger at once), then dropped ``batch_size`` tables per transaction, then the schema itself:
    a single ``DROP SCHEMA ... CASCADE`` takes a lock per object and can exhaust the server's
    shared lock table (``max_locks_per_transaction``). An interrupted drop can be finished by
    calling ``drop_tenant`` again.

    :raises UnknownSchema: if it is not a tenant (on PostgreSQL: not marked as one), so a
        typo can never drop ``public`` or a shared schema.
    """
    schema = _validate(schema, names)
    dialect = bind.dialect.name
    if dialect == "postgresql":
        _drop_pg(bind, schema, batch_size)
        return
    if not tenant_exists(bind, schema, names=names, directory=directory):
        raise UnknownSchema(f"{schema!r} is not a tenant; nothing was dropped")
    if dialect == "sqlite":
        with bind.connect() as conn:
            tenant_file(conn, schema, directory).unlink()
        return
    with bind.begin() as conn:
        quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
        conn.exec_driver_sql(f"DROP DATABASE {quoted}")


def _drop_pg(bind: Engine, schema: str, batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    q = _ledger.ident
    with bind.begin() as conn:
        mark = _mark(conn, schema)
        if mark not in (TENANT_MARK, DROPPING_MARK):
            raise UnknownSchema(f"{schema!r} is not a tenant; nothing was dropped")
        if _ledger.try_lock(conn, schema) is False:
            raise TenancyError(f"tenant {schema!r} is being migrated; retry when that is done")
        objects = conn.execute(
            text(
                "SELECT count(*) FROM pg_class "
                "WHERE relnamespace = to_regnamespace(quote_ident(:s))"
            ),
            {"s": schema},
        ).scalar_one()
        if _ledger.exists(conn):
            _ledger.forget(conn, schema)
        if objects <= _DROP_AT_ONCE:
            _ledger.execute_ddl(conn, f"DROP SCHEMA {q(schema)} CASCADE")
            return
        _set_mark(conn, schema, DROPPING_MARK)
    while True:
        with bind.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT relname, relkind FROM pg_class WHERE relnamespace = "
                    "to_regnamespace(quote_ident(:s)) AND relkind IN ('r', 'p', 'v', 'm', 'f') "
                    "ORDER BY relname LIMIT :n"
                ),
                {"s": schema, "n": batch_size},
            ).all()
            if not rows:
                _ledger.execute_ddl(conn, f"DROP SCHEMA {q(schema)} CASCADE")
                return
            kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW",
                     "f": "FOREIGN TABLE"}  # fmt: skip
            for kind in sorted({kinds[r[1]] for r in rows}):
                listed = ", ".join(f"{q(schema)}.{q(r[0])}" for r in rows if kinds[r[1]] == kind)
                _ledger.execute_ddl(conn, f"DROP {kind} IF EXISTS {listed} CASCADE")


def fill_reservoir(
    bind: Engine,
    count: int,
    *,
    metadata: MetaData | None = None,
    template: str | None = None,
    alembic_config: AlembicConfig | None = None,
    data: bool = False,
) -> list[str]:
    """Add ``count`` spare, fully built schemas to the reservoir (PostgreSQL).

    Each spare is built exactly like a tenant (from ``template`` by :func:`clone_tenant`'s copy,
    or from ``metadata``/``alembic_config`` as in :func:`create_tenant`), one transaction each,
    but marked ``sa_tenancy:spare``: it is not listed as a tenant, and the fleet migration runner
    migrates it with the tenants, so a claimed spare is always current. Run it from a scheduled
    job to keep the reservoir topped up (see :func:`reservoir_size`).

    :returns: the names of the new spares (``sa_spare_<hex>``).
    """
    _pg_only(bind, "fill_reservoir")
    if template is not None:
        template = _validate(template, None)
    made = []
    for _ in range(count):
        spare = f"sa_spare_{uuid.uuid4().hex[:16]}"
        with bind.begin() as conn:
            _build(conn, spare, mark=SPARE_MARK, metadata=metadata,
                   alembic_config=alembic_config, template=template, data=data)  # fmt: skip
        made.append(spare)
    return made


def reservoir_size(bind: Engine) -> int:
    """How many spare schemas are waiting to be claimed."""
    _pg_only(bind, "reservoir_size")
    with bind.connect() as conn:
        if not _ledger.exists(conn):
            return 0
        return int(
            conn.execute(text(f"SELECT count(*) FROM {_ledger.QUALIFIED} WHERE spare")).scalar_one()
        )


def claim_tenant(bind: Engine, schema: str, *, names: NamePolicy | None = None) -> str:
    """Create tenant ``schema`` by claiming a spare schema from the reservoir (PostgreSQL).

    One short transaction: take a spare's ledger row with ``FOR UPDATE SKIP LOCKED`` (so
    concurrent signups never claim the same spare and never wait for each other), ``ALTER
    SCHEMA ... RENAME`` it, mark it a tenant, record it. A few milliseconds instead of a build.

    :raises ReservoirEmpty: if no spare is left (call :func:`fill_reservoir`, or fall back to
        :func:`create_tenant`).
    :raises TenancyError: if ``schema`` already exists; the spare stays in the reservoir.
    """
    schema = _validate(schema, names)
    _pg_only(bind, "claim_tenant")
    table = f"{_ledger.LEDGER_SCHEMA}.{_ledger.LEDGER_TABLE}"
    empty = "the reservoir is empty: call fill_reservoir() (or create_tenant()) first"
    # Four round trips in all (BEGIN, take a spare, rename + mark + record, COMMIT): a signup
    # pays for these and nothing else.
    with bind.begin() as conn:
        try:
            row = conn.execute(
                text(
                    f"DELETE FROM {table} WHERE schema_name = (SELECT schema_name "
                    f"FROM {table} WHERE spare ORDER BY schema_name LIMIT 1 "
                    "FOR UPDATE SKIP LOCKED) RETURNING schema_name, revision"
                )
            ).first()
        except sa_exc.ProgrammingError as error:
            # A database that never had a reservoir has no ledger table at all.
            if getattr(error.orig, "sqlstate", None) == "42P01":  # undefined_table
                raise ReservoirEmpty(empty) from None
            raise
        if row is None:
            raise ReservoirEmpty(empty)
        q = _ledger.ident
        revision = "NULL" if row[1] is None else _literal(row[1])
        with _duplicate_is_tenancy_error(schema):
            _ledger.execute_ddl(
                conn,
                f"ALTER SCHEMA {q(row[0])} RENAME TO {q(schema)}; "
                f"COMMENT ON SCHEMA {q(schema)} IS '{TENANT_MARK}'; "
                f"INSERT INTO {table} (schema_name, revision) "
                f"VALUES ({_literal(schema)}, {revision})",
            )
    return schema


def _literal(value: str) -> str:
    """A SQL string literal (``standard_conforming_strings``: only quotes need doubling)."""
    return "'" + value.replace("'", "''") + "'"


def _create_tables(conn: Connection, schema: str, metadata: MetaData) -> None:
    # Connection.execution_options() changes the connection in place: undo it afterwards.
    # checkfirst=False: the schema was created in this transaction, so nothing can exist yet,
    # and PostgreSQL's has_table query scans every same-named table of every tenant.
    conn.execution_options(schema_translate_map={None: schema})
    try:
        metadata.create_all(
            conn,
            tables=_tenant_tables(metadata),  # type: ignore[arg-type]
            checkfirst=False,
        )
    finally:
        conn.execution_options(schema_translate_map=None)


def _make_sqlite_directory(bind: Engine, directory: str | os.PathLike[str] | None) -> None:
    """Create the folder of the tenant files (and of a main database file beside them).

    SQLite creates a missing database file but not a missing folder; creating the first tenant
    is the natural moment to make it, so a fresh checkout runs without a set-up step.
    """
    main = bind.url.database
    if directory is not None:
        Path(directory).mkdir(parents=True, exist_ok=True)
    if main and main != ":memory:" and not main.startswith("file:"):
        Path(main).resolve().parent.mkdir(parents=True, exist_ok=True)


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
