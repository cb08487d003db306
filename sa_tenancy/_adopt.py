"""Adopting an existing schema as a tenant (PostgreSQL): the way in for a running deployment.

An application that predates sa_tenancy keeps its tables in one schema, usually ``public``.
:func:`adopt_schema` makes that schema a tenant without copying a row, in **one transaction**
(a failure anywhere leaves the database exactly as it was):

* a schema of its own (``legacy``) is marked ``sa_tenancy:tenant``, the mark
  :func:`~sa_tenancy.create_tenant` writes, optionally after ``ALTER SCHEMA ... RENAME``;
* ``public`` is never renamed or marked: extensions, default grants and every role's default
  ``search_path`` point at it, and other applications may share it. Its tables, sequences,
  views, materialized views and types are **moved** into a new schema with ``ALTER ... SET
  SCHEMA`` (a catalog update: no row is copied, OIDs stay, so defaults, foreign keys, views and
  sequence positions keep working). Functions, and every object an extension owns
  (``pg_depend`` deptype ``'e'``), stay in ``public``: the tenant reaches them through
  ``extra_schemas=["public"]``.

Either way the schema's ``alembic_version`` (if it has one) becomes the tenant's own and its
revision goes into the ledger; with ``alembic_config`` a schema that never used Alembic is
stamped at head instead. Only a schema that is not already sa_tenancy's (tenant, spare,
ledger) and not a system schema can be adopted, and every name is checked before any SQL.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from typing import NamedTuple

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine

from . import _ledger
from . import _namespace
from ._citus import refuse_worker
from ._citus import sharding
from ._lifecycle_checks import _name
from ._lifecycle_checks import _pg_only
from ._lifecycle_pg import _duplicate_is_tenancy_error
from ._lifecycle_pg import _set_mark
from .exc import InvalidSchemaName
from .exc import TenancyError
from .exc import UnknownSchema
from .names import NamePolicy
from .names import _base_check
from .names import _refuse_internal

if TYPE_CHECKING:
    from alembic.config import Config

    AlembicConfig = str | os.PathLike[str] | Config

__all__ = ["Adoption", "adopt", "adopt_schema", "check_names"]

PUBLIC = "public"
_DEFAULT_POLICY = NamePolicy()

#: What moves out of ``public``: ``(ALTER kind, name)``, for objects no extension owns.
#: Indexes, constraints, triggers and the sequences owned by a column (serial and identity,
#: deptype 'a'/'i') move with their table; a table's row type and a type's array move with
#: it, so only standalone composite types are listed. Extended statistics stay where they are
#: when their table moves: they are listed too.
_PUBLIC_OBJECTS = """
SELECT kind, name FROM (
    SELECT CASE c.relkind WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE'
                WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
           c.relname
    FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'f', 'S', 'v', 'm')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND (d.deptype = 'e' OR (c.relkind = 'S'
                      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))))
    UNION ALL
    SELECT 'TYPE', t.typname
    FROM pg_type t LEFT JOIN pg_class r ON r.oid = t.typrelid
    WHERE t.typnamespace = 'public'::regnamespace
      AND (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND r.relkind = 'c'))
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                      AND d.objid = t.oid AND d.deptype = 'e')
    UNION ALL
    SELECT 'STATISTICS', s.stxname
    FROM pg_statistic_ext s
    WHERE s.stxnamespace = 'public'::regnamespace
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_statistic_ext'::regclass
                      AND d.objid = s.oid AND d.deptype = 'e')
) AS o (kind, name) ORDER BY kind, name COLLATE "C"
"""


#: Multiranges left in ``public`` whose range type is now in tenant ``:s``.
_MULTIRANGES = """
SELECT m.typname FROM pg_range r JOIN pg_type m ON m.oid = r.rngmultitypid
JOIN pg_type t ON t.oid = r.rngtypid
WHERE m.typnamespace = 'public'::regnamespace AND t.typnamespace = to_regnamespace(quote_ident(:s))
ORDER BY m.typname COLLATE "C"
"""


class Adoption(NamedTuple):
    """What :func:`adopt` did: for the CLI's report."""

    schema: str
    tenant: str
    revision: str | None
    #: ``"table items"``, ... : what moved out of ``public`` (empty for other schemas).
    moved: list[str]


def adopt_schema(
    bind: Engine,
    schema: str,
    *,
    as_tenant: str | None = None,
    alembic_config: AlembicConfig | None = None,
    names: NamePolicy | None = None,
    namespace: str | None = None,
) -> str:
    """Make the existing schema ``schema`` a tenant, keeping every row (PostgreSQL).

    ``adopt_schema(engine, "legacy")`` marks schema ``legacy`` as tenant ``legacy``;
    ``as_tenant="acme"`` renames it to ``acme`` first. ``adopt_schema(engine, "public",
    as_tenant="acme")`` moves the tables, sequences, views and types of ``public`` into a new
    tenant ``acme`` (``as_tenant`` is required: ``public`` itself never becomes a tenant);
    functions and extension-owned objects stay in ``public``. Marking, renaming or moving,
    taking the schema's ``alembic_version`` into the ledger and, with ``alembic_config``,
    stamping a schema that has none at head: all in one transaction.

    .. warning::
       ``ALTER TABLE ... SET SCHEMA`` locks each table exclusively until the transaction ends:
       stop the application (or let it wait) while ``public`` is adopted, then start it with
       the tenant as session state. Stamping claims the schema matches the migrations' head:
       pass ``alembic_config`` only if it does.

    :param as_tenant: the tenant's name, if not ``schema``'s own.
    :param alembic_config: ``alembic.ini`` (or ``Config``), to stamp a schema without
        ``alembic_version`` at head and to check that an existing revision is known.
    :param names: the name policy for the tenant's name (default ``[a-z_][a-z0-9_]*``).
    :param namespace: the namespace the tenant joins (default: the default namespace).
    :returns: the tenant's name.
    :raises InvalidSchemaName: for a system, ledger or spare schema, an invalid tenant name,
        or ``public`` without ``as_tenant``, before anything is sent.
    :raises UnknownSchema: if ``schema`` does not exist.
    :raises TenancyError: if ``schema`` is already sa_tenancy's, the tenant's name is taken,
        or moving fails; nothing has changed.
    """
    return adopt(bind, schema, as_tenant=as_tenant, alembic_config=alembic_config,
                 names=names, namespace=namespace).tenant  # fmt: skip


def check_names(
    schema: object, as_tenant: object | None, names: NamePolicy | None = None
) -> tuple[str, str]:
    """``(schema, tenant)`` validated, with no database: the CLI calls it before connecting.

    The schema to adopt may have any name a schema can have (it is renamed if it is not a
    valid tenant name), but never a system schema or one of sa_tenancy's own.
    """
    source = _refuse_internal(_base_check(schema, what="schema to adopt", allow_public=True))
    if as_tenant is None:
        if source == PUBLIC:
            raise InvalidSchemaName(
                "'public' never becomes a tenant itself (extensions, grants and the default "
                "search_path use it); pass as_tenant=NAME (--as NAME) to move its objects"
            )
        as_tenant = source
    return source, (names or _DEFAULT_POLICY).validate(as_tenant)


def adopt(
    bind: Engine,
    schema: str,
    *,
    as_tenant: str | None = None,
    alembic_config: AlembicConfig | None = None,
    names: NamePolicy | None = None,
    namespace: str | None = None,
) -> Adoption:
    """:func:`adopt_schema`, reporting what moved and the recorded revision."""
    ns = _namespace.check(namespace)
    _pg_only(bind, "adopt_schema")
    source, tenant = check_names(schema, as_tenant, names)
    tenant = _name(bind, tenant, names)
    cfg = None
    if alembic_config is not None:
        from ._alembic import load_config
        from ._alembic import script_directory

        cfg = load_config(alembic_config)
        script_directory(cfg)  # an unreadable migration history fails before any SQL
    moved: list[str] = []
    with bind.begin() as conn:
        refuse_worker(conn, "adopt_schema")  # the ledger is on the coordinator
        _check_source(conn, source)
        _ledger.ensure(conn)
        q = _ledger.ident
        hint = "choose another name with as_tenant"
        if source == PUBLIC:
            with _duplicate_is_tenancy_error(tenant, hint), sharding(conn, on=True):
                _ledger.execute_ddl(conn, f"CREATE SCHEMA {q(tenant)}")
            moved = _move_public(conn, tenant)
        elif source != tenant:
            with _duplicate_is_tenancy_error(tenant, hint):
                _ledger.execute_ddl(conn, f"ALTER SCHEMA {q(source)} RENAME TO {q(tenant)}")
        _set_mark(conn, tenant, _ledger.tenant_mark(ns))
        revision = _record(conn, tenant, cfg, ns)
    return Adoption(source, tenant, revision, moved)


def _check_source(conn: Connection, schema: str) -> None:
    """Refuse a missing schema or one that is sa_tenancy's; lock it against a second adopter."""
    mark, locked = conn.execute(
        text(
            "SELECT obj_description(to_regnamespace(quote_ident(:lock_schema)), "
            f"'pg_namespace'), {_ledger.TRY_LOCK}"
        ),
        {"lock_schema": schema},
    ).one()
    if locked is None:
        raise UnknownSchema(f"schema {schema!r} does not exist; nothing was adopted")
    if mark is not None and mark.startswith(_ledger.TENANT_MARK):
        raise TenancyError(
            f"{schema!r} is already a tenant; nothing changed (rename it with rename_tenant)"
        )
    if mark is not None and mark.startswith(("sa_tenancy:spare", "sa_tenancy:dropping")):
        raise TenancyError(
            f"{schema!r} is sa_tenancy's own ({mark}); nothing changed: finish with drop_tenant"
        )
    if not locked:
        raise TenancyError(f"schema {schema!r} is being adopted or migrated; retry when done")


def _move_public(conn: Connection, tenant: str) -> list[str]:
    """``ALTER ... SET SCHEMA`` every movable object of ``public``, one statement each.

    One message per statement: Citus refuses DDL inside a multi-statement message.
    """
    q = _ledger.ident
    objects = [(r[0], r[1]) for r in conn.execute(text(_PUBLIC_OBJECTS))]
    if not objects:
        return []
    try:
        for kind, name in objects:
            _ledger.execute_ddl(conn, f"ALTER {kind} public.{q(name)} SET SCHEMA {q(tenant)}")
        if (conn.dialect.server_version_info or (0,)) >= (14,):
            # A range's multirange (PostgreSQL 14+) may stay behind when its range moves
            # (PostgreSQL 15 leaves it): it follows in a second round trip.
            for row in conn.execute(text(_MULTIRANGES), {"s": tenant}).all():
                _ledger.execute_ddl(conn, f"ALTER TYPE public.{q(row[0])} SET SCHEMA {q(tenant)}")
                objects.append(("TYPE", row[0]))
    except sa_exc.DBAPIError as error:
        if isinstance(error, sa_exc.OperationalError):
            raise
        first = str(error.orig).strip().splitlines()[0]
        raise TenancyError(f"moving public's objects failed, nothing moved: {first}") from error
    return sorted(f"{kind.lower()} {name}" for kind, name in objects)


def _record(conn: Connection, tenant: str, cfg: Config | None, namespace: str) -> str | None:
    """Take the tenant's ``alembic_version`` into the ledger (stamping it first if asked)."""
    table = f"{_ledger.ident(tenant)}.alembic_version"
    has_table = conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is not None
    if not has_table:
        revision = None
        if cfg is not None:
            from ._alembic import stamp_tenant

            revision = stamp_tenant(conn, tenant, cfg)
        _ledger.record(conn, tenant, revision, namespace=namespace)
        return revision
    revision = _ledger.record_from_table(conn, tenant)  # the namespace: from the new mark
    if cfg is not None and revision is not None:
        _check_known(cfg, tenant, revision)
    return revision


def _check_known(cfg: Config, tenant: str, revision: str) -> None:
    """Refuse a revision the migration scripts do not know: no later migration could run."""
    from alembic.script.revision import RevisionError

    from ._alembic import script_directory

    try:
        script_directory(cfg).revision_map.get_revisions(tuple(revision.split(",")))
    except RevisionError:
        raise TenancyError(
            f"{tenant!r}'s alembic_version says {revision!r}, which these migrations do not "
            "know; nothing changed: pass the Alembic configuration that made this schema"
        ) from None
