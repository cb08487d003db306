"""The version ledger: one row per tenant (and spare) in a shared schema.

Knowing which revision 10,000 tenants are at must not mean opening 10,000 ``alembic_version``
tables: one backend that touches every tenant's tables keeps their catalog entries for its
lifetime (hundreds of megabytes at that scale). So every operation that changes a tenant's
revision (create, clone, claim, rename, migrate, drop) also writes one row of
``sa_tenancy.tenant_versions`` **in the same transaction**; a drift report is then a single
indexed query, and it cannot disagree with the tenants except through changes made behind the
library's back (which ``verify`` finds, a bounded number of tenants per connection).

Which schemas are tenants is still decided by the schema comment (``sa_tenancy:tenant``, or
``sa_tenancy:spare`` for a reservoir schema not yet claimed): it travels with the schema through
``pg_dump``/``pg_restore`` and ``ALTER SCHEMA ... RENAME``, and it cannot be forgotten by a
ledger row that was never written. The ledger only records versions and lets claims of spare
schemas queue with ``FOR UPDATE SKIP LOCKED``.

Namespaces (:mod:`sa_tenancy._namespace`) add a suffix to the marks
(``sa_tenancy:tenant:billing``) and a ``namespace`` column to the ledger ('' for the default
namespace), so a claim takes a spare of its own namespace through the partial index
``tenant_versions_spare_ns``. A ledger made before namespaces gets the column on first use
(:func:`ensure`): ``ADD COLUMN ... DEFAULT ''`` changes only the catalog, and every existing row
reads '' (the default namespace), which is what its tenants' marks say too.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ._citus import sharding
from ._namespace import mark as _mark
from .names import LEDGER_SCHEMA as LEDGER_SCHEMA  # the shared schema; never a tenant

LEDGER_TABLE = "tenant_versions"
#: Comment marking a tenant schema.
TENANT_MARK = "sa_tenancy:tenant"
#: Comment marking a spare (reservoir) schema, migrated like a tenant but not listed as one.
SPARE_MARK = "sa_tenancy:spare"
#: Comment marking a schema being dropped in batches: no longer a tenant, not yet gone.
DROPPING_MARK = "sa_tenancy:dropping"
#: First half of the advisory lock key space used for per-tenant locks (the second half is the
#: schema's OID, unique in the database and stable across renames).
LOCK_CLASS = 0x5A7E

#: The ledger's DDL, one statement per message: Citus cannot run ``CREATE INDEX`` or
#: ``ADD COLUMN`` inside a multi-statement message ("cannot insert multiple commands into a
#: prepared statement"). The schema itself is created by :func:`ensure`, with sharding off.
_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {LEDGER_SCHEMA}.{LEDGER_TABLE} (
    schema_name text PRIMARY KEY,
    revision text,
    spare boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
)""",
    f"ALTER TABLE {LEDGER_SCHEMA}.{LEDGER_TABLE} ADD COLUMN IF NOT EXISTS namespace text "
    "NOT NULL DEFAULT ''",
    f"CREATE INDEX IF NOT EXISTS tenant_versions_spare_ns ON {LEDGER_SCHEMA}.{LEDGER_TABLE} "
    "(namespace, schema_name) WHERE spare",
)

QUALIFIED = _QUALIFIED = f"{LEDGER_SCHEMA}.{LEDGER_TABLE}"
#: The mark's namespace, in SQL, from the ``:mark_of`` schema's comment ('' for the default).
_NAMESPACE_OF = (
    "COALESCE(substring(obj_description(to_regnamespace(quote_ident(:mark_of)), "
    "'pg_namespace') from :ns_pattern), '')"
)
#: Whether the ``:mark_of`` schema's comment marks a spare (of any namespace).
_IS_SPARE = (
    "COALESCE(obj_description(to_regnamespace(quote_ident(:mark_of)), 'pg_namespace') "
    "~ :spare_pattern, false)"
)
#: The parameters of :data:`_NAMESPACE_OF` and :data:`_IS_SPARE` (bound: a ``:`` inside
#: ``text()`` would read as a parameter).
_PATTERNS = {
    "ns_pattern": "^sa_tenancy:(?:tenant|spare):(.+)$",
    "spare_pattern": "^sa_tenancy:spare(:|$)",
}


def tenant_mark(namespace: str = "") -> str:
    """The comment of a tenant of ``namespace`` ('' is the default: :data:`TENANT_MARK`)."""
    return _mark("tenant", namespace)


def spare_mark(namespace: str = "") -> str:
    return _mark("spare", namespace)


def dropping_mark(namespace: str = "") -> str:
    return _mark("dropping", namespace)


def ensure(conn: Connection) -> None:
    """Create the ledger schema and table if missing, or add ``namespace`` to an old one.

    Cheap when they are current (one catalog lookup). Concurrent first uses are serialised by
    an advisory lock held to the end of the caller's transaction, so two ``CREATE ... IF NOT
    EXISTS`` never collide on the catalog's unique index.
    """
    current = conn.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(:t) "
            "AND attname = 'namespace' AND NOT attisdropped)"
        ),
        {"t": _QUALIFIED},
    ).scalar()
    if current:
        return
    conn.execute(text("SELECT pg_advisory_xact_lock(:k, 1)"), {"k": LOCK_CLASS + 1})
    # Sharding off: on Citus the ledger stays a plain coordinator table (its upserts, advisory
    # locks and SKIP LOCKED claims need it there), whatever the database's default.
    with sharding(conn, on=False):
        execute_ddl(conn, f"CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA}")
    for statement in _DDL:
        execute_ddl(conn, statement)


def exists(conn: Connection) -> bool:
    return conn.execute(text("SELECT to_regclass(:t)"), {"t": _QUALIFIED}).scalar() is not None


def record(
    conn: Connection,
    schema: str,
    revision: str | None,
    *,
    spare: bool = False,
    namespace: str = "",
) -> None:
    """Upsert ``schema``'s row (in the caller's transaction, after :func:`ensure`)."""
    conn.execute(
        text(
            f"INSERT INTO {_QUALIFIED} (schema_name, revision, spare, namespace, updated_at) "
            "VALUES (:s, :r, :spare, :ns, now()) ON CONFLICT (schema_name) DO UPDATE "
            "SET revision = EXCLUDED.revision, spare = EXCLUDED.spare, "
            "namespace = EXCLUDED.namespace, updated_at = EXCLUDED.updated_at"
        ),
        {"s": schema, "r": revision, "spare": spare, "ns": namespace},
    )


def forget(conn: Connection, schema: str) -> None:
    conn.execute(text(f"DELETE FROM {_QUALIFIED} WHERE schema_name = :s"), {"s": schema})


def rename(conn: Connection, old: str, new: str) -> None:
    conn.execute(
        text(
            f"UPDATE {_QUALIFIED} SET schema_name = :new, updated_at = now() "
            "WHERE schema_name = :old"
        ),
        {"old": old, "new": new},
    )


def revision_of(conn: Connection, schema: str) -> str | None:
    return conn.execute(
        text(f"SELECT revision FROM {_QUALIFIED} WHERE schema_name = :s"), {"s": schema}
    ).scalar()


def join_revisions(heads: Iterable[str]) -> str | None:
    """One text value for a set of heads (a branched history has several): sorted, comma-joined."""
    ordered = sorted(heads)
    return ",".join(ordered) if ordered else None


def marked_schemas(
    conn: Connection, marks: Sequence[str] = (TENANT_MARK, SPARE_MARK)
) -> list[tuple[str, str, str | None, bool]]:
    """``(schema, mark, ledger revision, in ledger)`` for every schema carrying one of ``marks``.

    One query over ``pg_namespace``/``pg_description`` and the ledger: no tenant table is opened.
    A namespace's tenants are those whose marks are ``(tenant_mark(ns), spare_mark(ns))``.
    """
    has_ledger = exists(conn)
    join = (
        f"LEFT JOIN {_QUALIFIED} l ON l.schema_name = n.nspname"
        if has_ledger
        else "LEFT JOIN (SELECT NULL::text AS schema_name, NULL::text AS revision) l ON false"
    )
    rows = conn.execute(
        text(
            "SELECT n.nspname, d.description, l.revision, l.schema_name IS NOT NULL "
            "FROM pg_namespace n JOIN pg_description d ON d.objoid = n.oid "
            "AND d.classoid = 'pg_namespace'::regclass AND d.objsubid = 0 "
            f"{join} WHERE d.description = ANY(:marks) ORDER BY n.nspname"
        ),
        {"marks": list(marks)},
    )
    return [(r[0], r[1], r[2], bool(r[3])) for r in rows]


#: SQL expression taking the per-tenant lock named by the ``:lock_schema`` parameter; NULL if
#: there is no such schema. The OID (unsigned) is shifted into the signed int4 range.
TRY_LOCK = (
    f"pg_try_advisory_xact_lock({LOCK_CLASS}, CAST(CAST(CAST("
    "to_regnamespace(quote_ident(:lock_schema)) AS oid) AS bigint) - 2147483648 AS integer))"
)


def try_lock(conn: Connection, schema: str) -> bool | None:
    """Take the per-tenant advisory lock for this transaction without waiting.

    :returns: True if taken, False if another session holds it, None if no such schema.
    """
    got = conn.execute(text(f"SELECT {TRY_LOCK}"), {"lock_schema": schema}).scalar()
    return None if got is None else bool(got)


def set_revision(conn: Connection, schema: str, revision: str | None) -> None:
    """Record ``schema``'s new revision; a new row takes spare and namespace from its mark."""
    conn.execute(
        text(
            f"INSERT INTO {_QUALIFIED} (schema_name, revision, spare, namespace, updated_at) "
            f"VALUES (:s, :r, {_IS_SPARE}, {_NAMESPACE_OF}, now()) "
            "ON CONFLICT (schema_name) DO UPDATE SET revision = EXCLUDED.revision, "
            "updated_at = EXCLUDED.updated_at"
        ),
        {"s": schema, "r": revision, "mark_of": schema, **_PATTERNS},
    )


def execute_ddl(conn: Connection, statement: str) -> Any:
    """Run SQL built from quoted identifiers and literals, with no parameters.

    The driver still scans the text for ``%`` placeholders, so a ``%`` inside a quoted name,
    default or enum label is doubled. One statement per call: Citus refuses DDL inside a
    multi-statement message, so callers never join statements with ``;``.
    """
    return conn.exec_driver_sql(statement.replace("%", "%%"))


def record_from_table(conn: Connection, schema: str) -> str | None:
    """Copy ``schema.alembic_version`` into its ledger row in one statement; return it.

    The value is formatted as :func:`join_revisions` does (sorted, comma-joined, NULL if none).
    """
    quoted = ident(schema)
    return conn.execute(
        text(
            f"INSERT INTO {_QUALIFIED} (schema_name, revision, spare, namespace, updated_at) "
            "SELECT :s, NULLIF(array_to_string(ARRAY(SELECT version_num FROM "
            f"{quoted}.alembic_version ORDER BY version_num COLLATE \"C\"), ','), ''), "
            f"{_IS_SPARE}, {_NAMESPACE_OF}, now() ON CONFLICT (schema_name) DO UPDATE "
            "SET revision = EXCLUDED.revision, updated_at = EXCLUDED.updated_at RETURNING revision"
        ),
        {"s": schema, "mark_of": schema, **_PATTERNS},
    ).scalar()


def ident(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier, exactly (always quoted, ``"`` doubled).

    Not the dialect's ``quote_identifier``: for pyformat drivers (psycopg) SQLAlchemy also
    doubles ``%`` in it, which is right only in SQL text that goes through parameter
    formatting once. Here names are used as bound values (``set_config``, ``to_regclass``),
    inside ``text()`` (which doubles ``%`` itself) and through :func:`execute_ddl` (which
    does too), so the percent doubling happens exactly once, where the SQL is sent.
    """
    return '"' + name.replace('"', '""') + '"'
