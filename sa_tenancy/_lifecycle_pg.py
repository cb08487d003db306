"""Tenant lifecycle on PostgreSQL: a tenant is a schema marked ``sa_tenancy:tenant`` (private).

:mod:`sa_tenancy.lifecycle` validates every name (policy and backend rules) before calling in
here; this module only ever sees names that may be tenants, plus the reservoir's own spares.

How a schema is known to be a tenant: ``create``, ``clone`` and ``claim`` set its comment to
``sa_tenancy:tenant``; listing, renaming and dropping only ever consider schemas carrying it,
so ``public``, shared and system schemas are never touched. The mark travels with the schema
(renames, dumps and restores). A tenant of a namespace other than the default carries
``sa_tenancy:tenant:<namespace>`` instead (see :mod:`sa_tenancy._namespace`): every function
here takes the (validated) namespace, '' for the default, and sees only that namespace's
tenants and spares. Every operation also writes the tenant's Alembic revision to the
ledger ``sa_tenancy.tenant_versions`` in the same transaction (see :mod:`sa_tenancy._ledger`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import MetaData
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine

from . import _ledger
from . import _role_ddl
from ._citus import refuse_worker
from ._citus import sharding
from ._clone import clone_structure
from ._ledger import SPARE_MARK
from ._ledger import TENANT_MARK
from ._ledger import dropping_mark
from ._ledger import spare_mark
from ._ledger import tenant_mark
from ._namespace import label
from ._namespace import namespace_of_mark
from ._roles import TenantRoles
from ._tenant_tables import create_tables
from .exc import ReservoirEmpty
from .exc import TenancyError
from .exc import UnknownSchema
from .names import SPARE_PREFIX

if TYPE_CHECKING:
    from alembic.config import Config

    AlembicConfig = str | os.PathLike[str] | Config

__all__ = [
    "claim",
    "clone",
    "create",
    "drop",
    "fill_reservoir",
    "list_marked",
    "rename",
    "reservoir_size",
]


def _mark(conn: Connection, schema: str) -> str | None:
    return conn.execute(
        text("SELECT obj_description(to_regnamespace(quote_ident(:s)), 'pg_namespace')"),
        {"s": schema},
    ).scalar()


def _set_mark(conn: Connection, schema: str, mark: str) -> None:
    quoted = _ledger.ident(schema)
    # The mark is one of the ledger's constants, never user input.
    _ledger.execute_ddl(conn, f"COMMENT ON SCHEMA {quoted} IS '{mark}'")


#: What to do about an existing schema that is not a tenant, when creating one.
_NOT_A_TENANT_HINT = "choose another name, or make it a tenant with adopt_schema()"


@contextmanager
def _duplicate_is_tenancy_error(
    schema: str, hint: str = "choose another name or drop it first"
) -> Iterator[None]:
    try:
        yield
    except sa_exc.DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == "42P06":  # duplicate_schema
            raise TenancyError(f"schema {schema!r} already exists; {hint}") from None
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
    hint: str = "choose another name or drop it first",
    namespace: str = "",
    roles: TenantRoles | None = None,
) -> str | None:
    """Make ``schema`` complete inside the caller's transaction; return its recorded revision."""
    quoted = _ledger.ident(schema)
    refuse_worker(conn, "creating a tenant")  # the ledger is on the coordinator
    _ledger.ensure(conn)
    with _duplicate_is_tenancy_error(schema, hint), sharding(conn, on=True):
        # On Citus: a distributed schema, placed on a worker, whatever the database's default.
        _ledger.execute_ddl(conn, f"CREATE SCHEMA {quoted}")
    _set_mark(conn, schema, mark)
    revision: str | None = None
    if template is not None:
        if _mark(conn, template) not in (tenant_mark(namespace), spare_mark(namespace)):
            raise UnknownSchema(
                f"template {template!r} is not a tenant of {label(namespace)}; "
                "nothing was created (list them with list_tenants)"
            )
        clone_structure(conn, template, schema, data=data)
        from .migrate import current_revision  # no Alembic import: it reads one table

        revision = current_revision(conn, schema)
    elif metadata is not None:
        create_tables(conn, schema, metadata)
        if alembic_config is not None:
            from .migrate import stamp_tenant

            revision = stamp_tenant(conn, schema, alembic_config)
    elif alembic_config is not None:
        from .migrate import upgrade_tenant

        revision = upgrade_tenant(conn, schema, alembic_config, record=False)
    _ledger.record(conn, schema, revision, spare=mark == spare_mark(namespace), namespace=namespace)
    if roles is not None:
        _role_ddl.ensure(conn, schema, roles)
    return revision


def create(
    bind: Engine,
    schema: str,
    *,
    metadata: MetaData | None,
    alembic_config: AlembicConfig | None,
    namespace: str = "",
    roles: TenantRoles | None = None,
) -> None:
    """Schema, tables, mark, Alembic version and ledger row (and role) in one transaction."""
    try:
        with bind.begin() as conn:
            _build(conn, schema, mark=tenant_mark(namespace), metadata=metadata,
                   alembic_config=alembic_config, hint=_NOT_A_TENANT_HINT,
                   namespace=namespace, roles=roles)  # fmt: skip
    except TenancyError:
        # Only after a failure (the transaction is gone): say whose tenant has the name, since
        # the adopt_schema hint is wrong for it.
        with bind.connect() as conn:
            mark = _mark(conn, schema)
        if mark is None or not mark.startswith((TENANT_MARK, SPARE_MARK)):
            raise
        raise TenancyError(
            f"{schema!r} is already a tenant of {label(namespace_of_mark(mark))}: tenant names "
            "are unique per database, whatever the namespace; choose another name"
        ) from None


def clone(bind: Engine, template: str, schema: str, *, data: bool, namespace: str = "",
          roles: TenantRoles | None = None) -> None:  # fmt: skip
    """``schema`` as a server-side copy of tenant ``template``, in one transaction."""
    with bind.begin() as conn:
        _build(conn, schema, mark=tenant_mark(namespace), metadata=None, alembic_config=None,
               template=template, data=data, namespace=namespace, roles=roles)  # fmt: skip


def rename(bind: Engine, old: str, new: str, *, namespace: str = "",
           roles: TenantRoles | None = None) -> None:  # fmt: skip
    """Rename a marked tenant; its ledger row follows in the same transaction."""
    with bind.begin() as conn:
        if _mark(conn, old) != tenant_mark(namespace):
            raise UnknownSchema(
                f"{old!r} is not a tenant of {label(namespace)}; nothing was renamed"
            )
        if not _ledger.try_lock(conn, old):
            raise TenancyError(f"tenant {old!r} is being migrated; retry when that is done")
        q = _ledger.ident
        with _duplicate_is_tenancy_error(new):
            _ledger.execute_ddl(conn, f"ALTER SCHEMA {q(old)} RENAME TO {q(new)}")
        if _ledger.exists(conn):
            _ledger.rename(conn, old, new)
        if roles is not None:
            _role_ddl.rename(conn, old, new, roles)


def list_marked(bind: Engine, only: str | None = None, *, namespace: str = "") -> list[str]:
    """Schemas marked as tenants of ``namespace`` (only ``only``, if given), sorted."""
    with bind.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT nspname FROM pg_namespace "
                "WHERE obj_description(oid, 'pg_namespace') = :mark "
                "AND (CAST(:only AS text) IS NULL OR nspname = :only) ORDER BY nspname"
            ),
            {"mark": tenant_mark(namespace), "only": only},
        )
        return [r[0] for r in rows]


def drop(bind: Engine, schema: str, *, batch_size: int, at_once: int, namespace: str = "",
         roles: TenantRoles | None = None) -> None:  # fmt: skip
    """Drop a marked tenant: at once up to ``at_once`` catalog objects, else in batches."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    q = _ledger.ident
    with bind.begin() as conn:
        mark = _mark(conn, schema)
        if mark not in (tenant_mark(namespace), dropping_mark(namespace)):
            raise UnknownSchema(
                f"{schema!r} is not a tenant of {label(namespace)}; nothing was dropped"
            )
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
        if objects <= at_once:
            _ledger.execute_ddl(conn, f"DROP SCHEMA {q(schema)} CASCADE")
            if roles is not None:
                _role_ddl.drop(conn, schema, roles)
            return
        _set_mark(conn, schema, dropping_mark(namespace))
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
                if roles is not None:
                    _role_ddl.drop(conn, schema, roles)
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
    metadata: MetaData | None,
    template: str | None,
    alembic_config: AlembicConfig | None,
    data: bool,
    namespace: str = "",
    roles: TenantRoles | None = None,
) -> list[str]:
    """Build ``count`` spares marked ``sa_tenancy:spare[:<namespace>]``, one transaction each."""
    made = []
    for _ in range(count):
        # Public name policies refuse this prefix: a spare is never served before it is claimed.
        spare = f"{SPARE_PREFIX}{uuid.uuid4().hex[:16]}"
        with bind.begin() as conn:
            _build(conn, spare, mark=spare_mark(namespace), metadata=metadata,
                   alembic_config=alembic_config, template=template, data=data,
                   namespace=namespace, roles=roles)  # fmt: skip
        made.append(spare)
    return made


def reservoir_size(bind: Engine, *, namespace: str = "") -> int:
    """How many spares of ``namespace`` the ledger holds."""
    with bind.begin() as conn:
        if not _ledger.exists(conn):
            return 0
        _ledger.ensure(conn)  # a ledger made before namespaces gets its column
        return int(
            conn.execute(
                text(f"SELECT count(*) FROM {_ledger.QUALIFIED} WHERE spare AND namespace = :ns"),
                {"ns": namespace},
            ).scalar_one()
        )


def claim(bind: Engine, schema: str, *, namespace: str = "",
          roles: TenantRoles | None = None) -> None:  # fmt: skip
    """Rename a spare of ``namespace`` to ``schema``, mark and record it: one transaction."""
    refuse_worker(bind, "claim_tenant")  # asked once per engine
    try:
        _claim(bind, schema, namespace, roles)
    except sa_exc.ProgrammingError as error:
        # A ledger made before namespaces: add the column once, then claim as usual. Not
        # checked up front, so a current ledger costs a signup no extra round trip.
        if getattr(error.orig, "sqlstate", None) != "42703":  # undefined_column
            raise
        with bind.begin() as conn:
            _ledger.ensure(conn)
        _claim(bind, schema, namespace, roles)


def _claim(bind: Engine, schema: str, namespace: str, roles: TenantRoles | None) -> None:
    table = f"{_ledger.LEDGER_SCHEMA}.{_ledger.LEDGER_TABLE}"
    empty = (
        f"the reservoir of {label(namespace)} is empty: call fill_reservoir() with the same "
        "namespace (or create_tenant()) first"
    )
    # Five round trips in all (BEGIN, take a spare and record the tenant, rename, mark,
    # COMMIT): a signup pays for these and nothing else (plus the role's rename and grants
    # with tenant_roles). DDL goes one statement per message
    # (Citus refuses DDL in a multi-statement message); the ledger's two changes share one.
    with bind.begin() as conn:
        try:
            row = conn.execute(
                text(
                    f"WITH taken AS (DELETE FROM {table} WHERE schema_name = (SELECT schema_name "
                    f"FROM {table} WHERE spare AND namespace = :ns ORDER BY schema_name "
                    "LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING schema_name, revision) "
                    f"INSERT INTO {table} (schema_name, revision, namespace) "
                    "SELECT :new, revision, :ns FROM taken "
                    "RETURNING (SELECT schema_name FROM taken)"
                ),
                {"ns": namespace, "new": schema},
            ).first()
        except sa_exc.ProgrammingError as error:
            # A database that never had a reservoir has no ledger table at all.
            if getattr(error.orig, "sqlstate", None) == "42P01":  # undefined_table
                raise ReservoirEmpty(empty) from None
            raise
        except sa_exc.IntegrityError as error:
            # The ledger already has a row of that name: a tenant holds it.
            if getattr(error.orig, "sqlstate", None) == "23505":  # unique_violation
                raise TenancyError(
                    f"schema {schema!r} already exists; choose another name or drop it first"
                ) from None
            raise
        if row is None:
            raise ReservoirEmpty(empty)
        q = _ledger.ident
        with _duplicate_is_tenancy_error(schema):
            _ledger.execute_ddl(conn, f"ALTER SCHEMA {q(row[0])} RENAME TO {q(schema)}")
        _set_mark(conn, schema, tenant_mark(namespace))
        if roles is not None:  # the spare's role follows its schema (made if it had none)
            _role_ddl.rename(conn, row[0], schema, roles)
