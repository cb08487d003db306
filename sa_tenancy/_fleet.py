"""The worker side of :func:`sa_tenancy.migrate.migrate_tenants`, and what it reports.

Each worker is a fresh process (``spawn``): it imports Alembic, loads the configuration, parses
the revision map and opens one connection **once**, in :func:`init_worker`, then migrates every
tenant it is handed with :func:`migrate_chunk`. Paying Alembic's start-up per tenant instead is
what makes a naive loop over ``command.upgrade`` slow; running it in threads is what makes it
wrong (``op`` and ``context`` are process-global).

The per-worker objects below are process state for the worker's whole life (an engine and a
parsed configuration), never tenant state: the tenant is an argument of every call.

Imports go one way: :mod:`sa_tenancy.migrate` (the parent side) imports this module, and this
module imports only :mod:`sa_tenancy._alembic` (one tenant's run) and the ledger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine

from . import _ledger
from ._alembic import ENTER_SQL
from ._alembic import enter_params
from ._alembic import load_config
from ._alembic import run_upgrade
from ._alembic import script_directory


@dataclass
class TenantResult:
    """What happened to one tenant in a fleet run.

    ``status`` is ``"migrated"``, ``"current"`` (found at the target when locked: nothing to
    do), ``"busy"`` (another deployer holds its lock; that deployer migrates it), ``"failed"``
    (``error`` says why; its transaction was rolled back) or ``"missing"`` (not a tenant).
    """

    schema: str
    status: str
    before: str | None = None
    after: str | None = None
    error: str | None = None
    seconds: float = 0.0


# Also what pickling between the worker and the parent uses: sa_tenancy exports it.
TenantResult.__module__ = "sa_tenancy"


@dataclass(frozen=True)
class WorkerSettings:
    url: str
    config_file: str | None
    main_options: dict[str, str]
    ini_section: str
    lock_timeout: str | None
    statement_timeout: str | None


_WORKER: dict[str, Any] = {}


def init_worker(settings: WorkerSettings) -> None:
    """Load Alembic, the revision map and a one-connection engine for this worker process."""
    from alembic.config import Config

    cfg = (
        load_config(settings.config_file)
        if settings.config_file
        else Config(ini_section=settings.ini_section)
    )
    for key, value in settings.main_options.items():
        cfg.set_main_option(key, value.replace("%", "%%"))
    script_directory(cfg).get_heads()  # parse every revision file now, once for this worker
    # No pre-ping: it would cost a round trip per tenant; a broken connection fails one tenant
    # and is replaced for the next.
    engine = create_engine(settings.url, pool_size=1, max_overflow=0)
    _use_indexed_has_table(engine)
    _WORKER.update(cfg=cfg, engine=engine, settings=settings)


def _use_indexed_has_table(engine: Engine) -> None:
    """Make this worker engine's ``has_table`` use the catalog's (name, schema) index.

    Alembic checks for the version table with the dialect's ``has_table`` before every tenant.
    SQLAlchemy's PostgreSQL query compares ``nspname`` with a ``VARCHAR`` (no index), so it
    walks every table named ``alembic_version`` in the database, one per tenant, and joins
    each with a scan of ``pg_namespace``: the check grows with the fleet. This engine belongs
    to the worker process alone, so the replacement touches nothing else.
    """
    dialect = engine.dialect
    original = dialect.has_table

    def has_table(
        connection: Connection, table_name: str, schema: str | None = None, **kw: Any
    ) -> bool:
        if schema is None:
            return bool(original(connection, table_name, schema, **kw))
        found = connection.execute(
            text(
                "SELECT 1 FROM pg_catalog.pg_class WHERE relname = CAST(:t AS name) "
                "AND relnamespace = to_regnamespace(quote_ident(:s)) "
                "AND relkind = ANY (ARRAY['r', 'p', 'f', 'v', 'm']::\"char\"[])"
            ),
            {"t": table_name, "s": schema},
        ).first()
        return found is not None

    dialect.has_table = has_table  # type: ignore[method-assign]


#: Tenants per server connection. A backend keeps the catalog entries of every table it has
#: opened for as long as it lives; a worker migrating thousands of tenants on one connection
#: grows it (and slows down) tenant after tenant, so it starts a fresh one every so often.
TENANTS_PER_CONNECTION = 250


def migrate_chunk(schemas: list[str]) -> list[TenantResult]:
    """Migrate each of ``schemas`` in its own transaction; never raises for a tenant's failure."""
    results = []
    for schema in schemas:
        results.append(_migrate_one(schema))
        _WORKER["served"] = _WORKER.get("served", 0) + 1
        if _WORKER["served"] % TENANTS_PER_CONNECTION == 0:
            _WORKER["engine"].dispose()
    return results


def _migrate_one(schema: str) -> TenantResult:
    """One tenant, one transaction, and as few round trips as possible.

    Lock, ``search_path`` and timeouts go in one statement; Alembic reads and writes the
    version table itself; the ledger row is copied from it in one more. Compared with raw SQL
    (set the path, ``ALTER``, update the version) that is Alembic's own version-table check
    and one ledger write more per tenant.
    """
    settings: WorkerSettings = _WORKER["settings"]
    started = time.perf_counter()
    result = TenantResult(schema, "failed")
    try:
        with _WORKER["engine"].connect() as conn, conn.begin():
            params = enter_params(conn, schema, settings.lock_timeout, settings.statement_timeout)
            locked = conn.execute(
                text(f"SELECT {_ledger.TRY_LOCK}, {ENTER_SQL}"), {**params, "lock_schema": schema}
            ).scalar()
            if locked is None:
                result.status, result.error = "missing", "schema no longer exists"
            elif not locked:
                result.status = "busy"
            else:
                applied = run_upgrade(conn, schema, _WORKER["cfg"])
                result.after = _ledger.record_from_table(conn, schema)
                result.status = "migrated" if applied else "current"
    except Exception as error:
        result.status = "failed"
        result.error = _describe(error)
    result.seconds = time.perf_counter() - started
    return result


def _describe(error: BaseException) -> str:
    """One line naming the error: the first line of the database's message, not a traceback."""
    orig = getattr(error, "orig", None)
    message = str(orig if orig is not None else error).strip().splitlines()
    first = message[0] if message else ""
    return f"{type(orig if orig is not None else error).__name__}: {first}"[:300]
