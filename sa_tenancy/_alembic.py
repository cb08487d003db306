"""One tenant's Alembic run: configuration, revisions, ``env.py`` and stamping.

Everything the fleet runner, the lifecycle and the user's ``env.py`` need to migrate **one**
tenant lives here; nothing here knows about fleets, processes or reports. One tenant's
migration runs inside a transaction the caller owns:

1. ``set_config(..., true)`` the ``search_path`` to the tenant (Alembic's ``ALTER`` operations
   ignore translate maps, alembic#555), plus ``lock_timeout`` and ``statement_timeout``: all
   transaction-scoped, so nothing is left on the connection afterwards;
2. run ``env.py``, which calls :func:`run_tenant_migrations`: it puts the opt-in extra schemas
   (``public`` for extensions' functions and types) after the tenant on the path, and
   configures Alembic with ``version_table_schema`` set to the tenant (each tenant has its own
   ``alembic_version``) and with name filters that keep that table and the ledger out of
   autogenerate's comparison.

Alembic is imported only when one of these functions runs: ``import sa_tenancy`` never does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from . import _autogen
from . import _ledger
from .exc import TenancyError
from .names import INTERNAL_NAMES
from .names import validate_extra_schema

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    AlembicConfig = str | os.PathLike[str] | Config

#: ``Config.attributes`` keys through which the fleet runner hands ``env.py`` its work.
CONNECTION_KEY = "connection"
SCHEMA_KEY = "sa_tenancy.schema"
_SCRIPT_KEY = "sa_tenancy.script"
_APPLIED_KEY = "sa_tenancy.applied"
DEFAULT_POLICY = INTERNAL_NAMES  # tenants, and the reservoir's spares it keeps current


def load_config(config: AlembicConfig) -> Config:
    """An Alembic ``Config`` from a path to ``alembic.ini`` (or the ``Config`` itself)."""
    from alembic.config import Config

    if isinstance(config, Config):
        return config
    path = os.fspath(config)
    if not os.path.exists(path):
        raise TenancyError(f"no Alembic configuration at {path!r}; run `sa-tenancy alembic-init`")
    return Config(path)


def script_directory(cfg: Config) -> ScriptDirectory:
    """The config's ``ScriptDirectory``, loaded once: its revision map is parsed only once."""
    from alembic.script import ScriptDirectory

    script = cfg.attributes.get(_SCRIPT_KEY)
    if script is None:
        script = ScriptDirectory.from_config(cfg)
        cfg.attributes[_SCRIPT_KEY] = script
    return script


def head_revision(config: AlembicConfig) -> str | None:
    """The head(s) of the migration history as one ledger value (comma-joined if branched)."""
    return _ledger.join_revisions(script_directory(load_config(config)).get_heads())


def current_revision(conn: Connection, schema: str) -> str | None:
    """The revision(s) in ``schema.alembic_version``, comma-joined; None if it has none."""
    q = _ledger.ident
    table = f"{q(schema)}.alembic_version"
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
        return None
    return _ledger.join_revisions(
        r[0] for r in _ledger.execute_ddl(conn, f"SELECT version_num FROM {table}")
    )


#: Select-list that points a transaction at the ``:path`` schema and sets its timeouts
#: (``:lt``/``:st``; NULL keeps the current value), all transaction-scoped.
ENTER_SQL = (
    "set_config('search_path', :path, true), "
    "set_config('lock_timeout', COALESCE(:lt, current_setting('lock_timeout')), true), "
    "set_config('statement_timeout', COALESCE(:st, current_setting('statement_timeout')), true)"
)


def enter_params(
    conn: Connection, schema: str, lock_timeout: str | None, statement_timeout: str | None
) -> dict[str, Any]:
    """Bound values for :data:`ENTER_SQL`."""
    q = _ledger.ident
    return {"path": q(schema), "lt": lock_timeout, "st": statement_timeout}


def enter(
    conn: Connection,
    schema: str,
    *,
    lock_timeout: str | None = None,
    statement_timeout: str | None = None,
) -> str:
    """Point the transaction at ``schema`` (and set timeouts); return the previous search_path."""
    if not conn.in_transaction():
        raise TenancyError("a tenant migration needs a connection inside a transaction")
    saved = conn.execute(
        text(f"SELECT current_setting('search_path'), {ENTER_SQL}"),
        enter_params(conn, schema, lock_timeout, statement_timeout),
    ).scalar()
    return str(saved)


def leave(conn: Connection, saved: str) -> None:
    """Put back the ``search_path`` that :func:`enter` returned."""
    conn.execute(text("SELECT set_config('search_path', :p, true)"), {"p": saved})


def leave_and_read(conn: Connection, schema: str, saved: str) -> str | None:
    """Put the ``search_path`` back, then read the tenant's revision.

    Two statements, never one: on Citus a statement that reads a tenant table is routed, whole,
    to the worker holding the tenant, so a ``set_config`` in it would change the worker's
    session and leave the caller's ``search_path`` pointing at the tenant.
    """
    leave(conn, saved)
    versions = conn.execute(
        text(f"SELECT ARRAY(SELECT version_num FROM {_ledger.ident(schema)}.alembic_version)")
    ).scalar()
    return _ledger.join_revisions(versions or ())


def run_tenant_migrations(
    context: EnvironmentContext,
    *,
    target_metadata: Any = None,
    extra_schemas: Sequence[str] = (),
    **configure_kwargs: Any,
) -> None:
    """Run the current Alembic command for one tenant; call it from ``env.py``.

    Under :func:`~sa_tenancy.migrate.migrate_tenants` (or :func:`upgrade_tenant`) the
    connection and the tenant come in ``context.config.attributes``, already inside the
    tenant's transaction. Under plain Alembic, name the tenant with ``-x tenant=NAME``; the
    database URL is ``sqlalchemy.url`` from the ini file or ``DATABASE_URL``.

    Either way the migration runs with ``search_path`` set to the tenant and
    ``version_table_schema`` set to the tenant, and ``configure_kwargs`` go to
    ``context.configure`` (e.g. ``compare_type=True``).

    ``extra_schemas`` are searched after the tenant, for this transaction only: a migration
    that uses an extension's function or type (``uuid_generate_v4()``, ``citext``) installed in
    ``public`` needs ``extra_schemas=["public"]``, because ``public`` is otherwise not on the
    path. Unqualified new objects are still created in the tenant, the first schema.

    For ``alembic revision --autogenerate``, the tenant's ``alembic_version`` and sa_tenancy's
    ledger schema are left out of the comparison (else every generated revision would drop the
    version table), and so are tables that are visible only through ``extra_schemas``. An
    ``include_name`` or ``include_object`` of your own still applies: an object is compared
    only if both it and sa_tenancy's filter include it.

    Example ``env.py``::

        from alembic import context
        from sa_tenancy.migrate import run_tenant_migrations
        from myapp.models import Base

        run_tenant_migrations(context, target_metadata=Base.metadata, extra_schemas=["public"])
    """
    if context.is_offline_mode():
        raise TenancyError(
            "offline (--sql) mode is not supported per tenant; run against a database"
        )
    extras = [validate_extra_schema(s) for s in _as_list(extra_schemas)]
    cfg = context.config
    conn = cfg.attributes.get(CONNECTION_KEY)
    schema = cfg.attributes.get(SCHEMA_KEY)
    if conn is not None and schema is not None:
        _configure_and_run(context, conn, schema, extras, target_metadata, configure_kwargs)
        return
    tenant = context.get_x_argument(as_dictionary=True).get("tenant")
    if not tenant:
        raise TenancyError(
            "no tenant: run `sa-tenancy migrate` for all tenants, or "
            "`alembic -x tenant=NAME upgrade head` for one"
        )
    schema = DEFAULT_POLICY.validate(tenant)
    engine = create_engine(_url_of(cfg), poolclass=NullPool)
    try:
        with engine.connect() as conn, conn.begin():
            saved = enter(conn, schema)
            _configure_and_run(context, conn, schema, extras, target_metadata, configure_kwargs)
            leave(conn, saved)
            _ledger.ensure(conn)
            _ledger.set_revision(conn, schema, current_revision(conn, schema))
    finally:
        engine.dispose()


def _as_list(schemas: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; "public" must not become six one-letter schemas.
    if isinstance(schemas, str):
        raise TenancyError(f"extra_schemas is a list of names; write [{schemas!r}]")
    return list(schemas)


def _configure_and_run(
    context: EnvironmentContext,
    conn: Connection,
    schema: str,
    extras: list[str],
    target_metadata: Any,
    configure_kwargs: dict[str, Any],
) -> None:
    if extras:
        path = ", ".join(_ledger.ident(s) for s in [schema, *extras])
        conn.execute(text("SELECT set_config('search_path', :p, true)"), {"p": path})
    applied = context.config.attributes.get(_APPLIED_KEY)
    if applied is not None:
        # Count the steps Alembic applies, so the fleet runner can tell "migrated" from
        # "already current" without reading the version table itself.
        user_hook = configure_kwargs.pop("on_version_apply", None)

        def on_version_apply(**kw: Any) -> None:
            applied.append(kw["step"].up_revision_id)
            if user_hook is not None:
                user_hook(**kw)

        configure_kwargs["on_version_apply"] = on_version_apply
    _autogen.add_filters(configure_kwargs, conn, schema)
    context.configure(
        connection=conn,
        target_metadata=target_metadata,
        version_table_schema=schema,
        **configure_kwargs,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url_of(cfg: Config) -> str:
    url = os.environ.get("DATABASE_URL") or cfg.get_main_option("sqlalchemy.url")
    if not url:
        raise TenancyError("no database URL: set DATABASE_URL or sqlalchemy.url in alembic.ini")
    return url


def upgrade_tenant(
    conn: Connection,
    schema: str,
    config: AlembicConfig,
    *,
    revision: str = "heads",
    record: bool = True,
    lock_timeout: str | None = None,
    statement_timeout: str | None = None,
) -> str | None:
    """Upgrade one tenant inside the caller's transaction, through the project's ``env.py``.

    The caller owns the transaction (commit makes the migration and, with ``record``, its ledger
    row durable together). ``search_path`` and the timeouts are set with ``set_config(..., true)``
    and the ``search_path`` is put back afterwards.

    :returns: the tenant's revision afterwards.
    """
    schema = DEFAULT_POLICY.validate(schema)
    cfg = load_config(config)
    saved = enter(conn, schema, lock_timeout=lock_timeout, statement_timeout=statement_timeout)
    run_upgrade(conn, schema, cfg, revision)
    after = leave_and_read(conn, schema, saved)
    if record:
        _ledger.ensure(conn)
        _ledger.set_revision(conn, schema, after)
    return after


def run_upgrade(conn: Connection, schema: str, cfg: Config, revision: str = "heads") -> list[str]:
    """Run ``env.py`` for ``schema`` on ``conn``, whose transaction already points at it.

    :returns: the revisions Alembic applied (empty if the tenant was already there).
    """
    from alembic.runtime.environment import EnvironmentContext

    script = script_directory(cfg)

    def upgrade(rev: Any, context: Any) -> Any:
        return script._upgrade_revs(revision, rev)

    applied: list[str] = []
    cfg.attributes[CONNECTION_KEY] = conn
    cfg.attributes[SCHEMA_KEY] = schema
    cfg.attributes[_APPLIED_KEY] = applied
    try:
        with EnvironmentContext(
            cfg, script, fn=upgrade, as_sql=False, starting_rev=None,
            destination_rev=revision, tag=None,
        ):  # fmt: skip
            script.run_env()
    finally:
        for key in (CONNECTION_KEY, SCHEMA_KEY, _APPLIED_KEY):
            cfg.attributes.pop(key, None)
    return applied


def stamp_tenant(conn: Connection, schema: str, config: AlembicConfig) -> str | None:
    """Write head into ``schema.alembic_version`` without running migrations (caller's transaction).

    For a tenant whose tables were just made current by ``create_all``: later migrations must
    not replay history on them.

    :returns: the stamped revision(s), comma-joined.
    """
    schema = DEFAULT_POLICY.validate(schema)
    heads = sorted(script_directory(load_config(config)).get_heads())
    # Written directly, in Alembic's own layout, rather than through MigrationContext.stamp:
    # that checks for the table with the dialect's has_table, whose query scans every
    # same-named table in the database (one alembic_version per tenant) on each call.
    table = f"{_ledger.ident(schema)}.alembic_version"
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
        _ledger.execute_ddl(
            conn,
            f"CREATE TABLE {table} (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",
        )
    _ledger.execute_ddl(conn, f"DELETE FROM {table}")
    for head in heads:
        conn.execute(text(f"INSERT INTO {table} (version_num) VALUES (:v)"), {"v": head})
    return _ledger.join_revisions(heads)
