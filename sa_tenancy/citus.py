"""Scaling out on Citus schema-based sharding: shared tables, tenant placement and moves.

With Citus (12 or later) every tenant schema sa_tenancy creates becomes a *distributed schema*:
its tables live together on one worker node, and the application keeps talking to the
coordinator with the same ``search_path`` or translate map. The lifecycle needs nothing from
you for that (see :mod:`sa_tenancy._citus`); this module adds the three things that are
Citus-specific:

* :func:`create_shared_tables`: the shared schema (plans, countries, ...) that tenant tables
  reference with foreign keys. On Citus a tenant table may only reference a *reference table*
  (copied to every node), and a table in a distributed schema cannot become one, so the shared
  schema is created with sharding off and each table made a reference table. On plain
  PostgreSQL the same call makes plain tables, so one code path serves both.
* :func:`tenant_placement`: which node holds each tenant (``None`` for a tenant without tables:
  Citus has nothing to place until its first table exists).
* :func:`move_tenant`: ``citus_schema_move`` for one tenant, e.g. to a node just added.

See ``docs/citus.md`` for setting up a cluster and rebalancing.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine

from . import _ledger
from . import _namespace
from . import _role_ddl
from . import _roles
from ._citus import server_of
from ._citus import sharding
from ._roles import TenantRoles
from .exc import CitusRequired
from .exc import InvalidSchemaName
from .exc import TenancyError
from .exc import UnknownSchema
from .names import NamePolicy
from .names import _base_check
from .names import _refuse_internal

__all__ = ["TRANSFER_MODES", "create_shared_tables", "move_tenant", "tenant_placement"]

#: The ``shard_transfer_mode`` values of ``citus_schema_move``. ``auto`` and ``force_logical``
#: copy with logical replication, so writes continue during the move, but every table needs
#: a primary key (or replica identity); ``block_writes`` blocks writes to the tenant instead
#: and works for any table.
TRANSFER_MODES = ("auto", "force_logical", "block_writes")

_DEFAULT_POLICY = NamePolicy()

#: One row per marked tenant of a namespace: the node holding its first shard, if any. Only
#: Citus metadata tables are read (``citus_shards`` would ask every worker for shard sizes).
_PLACEMENT = """
SELECT n.nspname, p.nodename, p.nodeport
FROM pg_namespace n
LEFT JOIN LATERAL (
    SELECT nd.nodename, nd.nodeport
    FROM pg_dist_shard sh JOIN pg_class c ON c.oid = sh.logicalrelid
    JOIN pg_dist_placement pl ON pl.shardid = sh.shardid
    JOIN pg_dist_node nd ON nd.groupid = pl.groupid AND nd.noderole = 'primary'
    WHERE c.relnamespace = n.oid ORDER BY sh.shardid LIMIT 1
) AS p ON true
WHERE obj_description(n.oid, 'pg_namespace') = :mark
  AND (CAST(:only AS text) IS NULL OR n.nspname = :only)
ORDER BY n.nspname
"""


def create_shared_tables(
    engine: Engine,
    metadata: MetaData,
    schema: str = "shared",
    *,
    tenant_roles: bool | TenantRoles | None = None,
) -> list[str]:
    """Create ``schema`` and the tables of ``metadata`` declared in it; tenants may reference them.

    Idempotent: a schema or table that exists is kept (tables are created with
    ``checkfirst``), and on Citus a table that is already a reference table stays one. Only
    the tables of ``metadata`` whose ``schema`` is ``schema`` are touched: tenant tables
    (declared without a schema) are created per tenant by :func:`~sa_tenancy.create_tenant`.

    On Citus the schema is created with ``citus.enable_schema_based_sharding`` off (a table in
    a distributed schema cannot become a reference table) and each table becomes a reference
    table with ``create_reference_table``, so that a tenant's foreign key to it is accepted
    (Citus refuses one to a plain coordinator table: "referenced table must be a distributed
    table or a reference table"). On plain PostgreSQL they are plain tables.

    Example::

        class Plan(Base):
            __tablename__ = "plans"
            __table_args__ = {"schema": "shared"}
            ...

        sa_tenancy.create_shared_tables(engine, Base.metadata)   # before create_tenant

    With ``tenant_roles`` (``True`` or the :class:`~sa_tenancy.TenantRoles` given to the
    lifecycle), the shared-readers group role (``<prefix>shared``) may read the schema's
    tables, these and any the same role creates there later; tenant roles made with
    ``TenantRoles(shared_schemas=[schema])`` are its members (``sync_tenant_roles`` with the
    same settings makes existing tenants members).

    :returns: the qualified names of the shared tables, in dependency order.
    :raises InvalidSchemaName: for a system schema, the ledger, a spare or an invalid name,
        before any SQL.
    :raises TenancyError: if ``schema`` is a tenant, or (on Citus) a distributed schema.
    """
    schema = _shared_name(schema)
    roles = _roles.resolve(tenant_roles)
    tables = [t for t in metadata.sorted_tables if t.schema == schema]
    q = _ledger.ident
    with engine.begin() as conn:
        _refuse_tenant_schema(conn, schema)
        with sharding(conn, on=False):
            _ledger.execute_ddl(conn, f"CREATE SCHEMA IF NOT EXISTS {q(schema)}")
        citus = server_of(conn).citus
        if citus:
            _refuse_distributed_schema(conn, schema)
        metadata.create_all(conn, tables=tables, checkfirst=True)
        names = [f"{q(schema)}.{q(t.name)}" for t in tables]
        if citus:
            for name in names:
                conn.execute(
                    text(
                        "SELECT create_reference_table(CAST(:t AS regclass)) WHERE NOT EXISTS "
                        "(SELECT 1 FROM pg_dist_partition WHERE logicalrelid = "
                        "CAST(:t AS regclass))"
                    ),
                    {"t": name},
                )
        if roles is not None:
            _role_ddl.ensure_shared(conn, roles, [schema])
    return [f"{schema}.{t.name}" for t in tables]


def tenant_placement(
    engine: Engine, *, namespace: str | None = None
) -> dict[str, tuple[str, int] | None]:
    """``{tenant: (host, port)}``: the worker node holding each tenant of ``namespace``.

    A tenant maps to ``None`` when Citus has no shard of it: it has no table yet (Citus places
    a distributed schema with its first table), or it was created as a plain schema (see
    ``docs/citus.md``) and lives on the coordinator. Reads Citus metadata only.

    :raises CitusRequired: on a database without the citus extension.
    """
    ns = _namespace.check(namespace)
    _require_citus(engine, "tenant_placement")
    return _placement(engine, ns, None)


def move_tenant(
    engine: Engine,
    name: str,
    node_host: str,
    node_port: int,
    *,
    transfer_mode: str = "auto",
    namespace: str | None = None,
    names: NamePolicy | None = None,
) -> None:
    """Move tenant ``name`` (all its tables) to the worker node ``node_host:node_port``.

    Wraps ``citus_schema_move``; it keeps the tenant's rows, mark and ledger row. With the
    default ``transfer_mode="auto"`` (logical replication) the tenant stays writable while it
    moves but every table needs a primary key; ``"block_writes"`` blocks writes to the tenant
    during the copy and works for any table. A tenant already on that node is left alone.
    Connect to the coordinator.

    :raises InvalidSchemaName: for an invalid name, host, port or transfer mode, before SQL.
    :raises CitusRequired: on a database without the citus extension.
    :raises UnknownSchema: if ``name`` is not a tenant of ``namespace``.
    :raises TenancyError: if the tenant has no tables yet (nothing to move), or Citus refuses
        the move (the message says why: e.g. a table without a primary key under logical
        replication, where ``transfer_mode="block_writes"`` works).
    """
    ns = _namespace.check(namespace)
    name = (names or _DEFAULT_POLICY).validate(name)
    if transfer_mode not in TRANSFER_MODES:
        raise InvalidSchemaName(
            f"transfer_mode {transfer_mode!r} is not one of {', '.join(TRANSFER_MODES)}"
        )
    if not isinstance(node_host, str) or not node_host or len(node_host) > 255:
        raise InvalidSchemaName(f"node_host {node_host!r} must be a host name or address")
    if isinstance(node_port, bool) or not isinstance(node_port, int):
        raise InvalidSchemaName(f"node_port {node_port!r} must be an int")
    if not 1 <= node_port <= 65535:
        raise InvalidSchemaName(f"node_port {node_port} is not a TCP port (1-65535)")
    _require_citus(engine, "move_tenant")
    placed = _placement(engine, ns, name)
    if name not in placed:
        raise UnknownSchema(
            f"{name!r} is not a tenant of {_namespace.label(ns)}; nothing was moved "
            "(list them with list_tenants)"
        )
    if placed[name] is None:
        raise TenancyError(
            f"tenant {name!r} has no shards (it has no tables yet, or is not a distributed "
            "schema), so there is nothing to move; Citus places it with its first table"
        )
    if placed[name] == (node_host, node_port):
        return
    # citus_schema_move manages its own transactions (logical replication): autocommit.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        try:
            conn.execute(
                text(
                    "SELECT citus_schema_move(CAST(quote_ident(:s) AS regnamespace), :host, "
                    ":port, CAST(:mode AS citus.shard_transfer_mode))"
                ),
                {"s": name, "host": node_host, "port": node_port, "mode": transfer_mode},
            )
        except sa_exc.DBAPIError as error:
            if isinstance(error, sa_exc.OperationalError):
                raise
            first = str(error.orig).strip().splitlines()
            reason = first[0] if first else type(error.orig).__name__
            hint = (
                "; retry with transfer_mode='block_writes' (or give the table a primary key)"
                if "REPLICA IDENTITY" in reason or "PRIMARY KEY" in reason
                else ""
            )
            raise TenancyError(f"moving tenant {name!r} failed: {reason}{hint}") from error


def _shared_name(schema: object) -> str:
    name = _refuse_internal(_base_check(schema, what="shared schema name", allow_public=False))
    if name.startswith("sa_"):
        raise InvalidSchemaName(f"{name!r}: names starting with sa_ are sa_tenancy's own")
    return name


def _refuse_tenant_schema(conn: Connection, schema: str) -> None:
    mark = conn.execute(
        text("SELECT obj_description(to_regnamespace(quote_ident(:s)), 'pg_namespace')"),
        {"s": schema},
    ).scalar()
    if mark is not None and mark.startswith("sa_tenancy:"):
        raise TenancyError(
            f"schema {schema!r} is sa_tenancy's ({mark}), not a shared schema; choose another name"
        )


def _refuse_distributed_schema(conn: Connection, schema: str) -> None:
    distributed = conn.execute(
        text("SELECT EXISTS (SELECT 1 FROM pg_dist_schema WHERE schemaid = to_regnamespace(:s))"),
        {"s": _ledger.ident(schema)},
    ).scalar()
    if distributed:
        raise TenancyError(
            f"schema {schema!r} is a distributed schema: its tables cannot become reference "
            f"tables; run SELECT citus_schema_undistribute('{schema}') first, or choose a new "
            "shared schema name"
        )


def _require_citus(engine: Engine, what: str) -> None:
    if engine.dialect.name != "postgresql" or not server_of(engine).citus:
        raise CitusRequired(
            f"{what} needs Citus: this database has no citus extension (plain PostgreSQL "
            "keeps every tenant on one server); see docs/citus.md to set up a cluster"
        )


def _placement(engine: Engine, ns: str, only: str | None) -> dict[str, tuple[str, int] | None]:
    with engine.connect() as conn:
        rows = conn.execute(text(_PLACEMENT), {"mark": _ledger.tenant_mark(ns), "only": only}).all()
    return {r[0]: (None if r[1] is None else (str(r[1]), int(r[2]))) for r in rows}
