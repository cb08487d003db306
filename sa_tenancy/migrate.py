"""Per-tenant Alembic migrations, a fleet runner for thousands of tenants, and a drift report.

One Alembic environment serves every tenant. For each tenant, in one transaction:

1. take the tenant's advisory lock without waiting (``pg_try_advisory_xact_lock``, keyed by the
   schema's OID), so two deployers never migrate the same tenant at once: the second one skips
   it as *busy* and, on a later run, finds it current;
2. ``set_config(..., true)`` the ``search_path`` to the tenant (Alembic's ``ALTER`` operations
   ignore translate maps, alembic#555), plus ``lock_timeout`` and ``statement_timeout``: all
   transaction-scoped, so nothing is left on the connection afterwards;
3. run ``env.py`` with ``version_table_schema`` set to the tenant (each tenant has its own
   ``alembic_version``);
4. write the new revision to the ledger (:mod:`sa_tenancy._ledger`) and commit: the migration
   and its ledger row succeed or fail together.

The user's ``env.py`` calls :func:`run_tenant_migrations`; ``sa-tenancy alembic-init DIR``
writes one that does. The same ``env.py`` also serves plain Alembic for one tenant:
``alembic -x tenant=acme upgrade head``.

:func:`migrate_tenants` runs the fleet in worker **processes**, never threads: Alembic's ``op``
and ``context`` are process-global proxies, and threads sharing them migrate the wrong schema.
Each worker loads the configuration, the revision map and the engine once, then migrates many
tenants; the parent reads the ledger once and hands out only tenants that are behind, so a
deploy with nothing to do spawns nothing, and an interrupted run resumes where it stopped.

:func:`tenant_status` answers "which tenant is at which revision" from the ledger in one query.
``verify=True`` also reads every tenant's ``alembic_version``, a bounded number of tenants per
connection, because one backend that opens thousands of tenants' tables keeps all of their
catalog entries in memory for the rest of its life.

Alembic is imported only when one of these functions runs: ``import sa_tenancy`` never does.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from . import _ledger
from .exc import TenancyError
from .names import INTERNAL_NAMES

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    AlembicConfig = str | os.PathLike[str] | Config

__all__ = [
    "FleetReport",
    "StatusReport",
    "TenantResult",
    "migrate_tenants",
    "run_tenant_migrations",
    "stamp_tenant",
    "tenant_status",
    "upgrade_tenant",
]

#: ``Config.attributes`` keys through which the fleet runner hands ``env.py`` its work.
CONNECTION_KEY = "connection"
SCHEMA_KEY = "sa_tenancy.schema"
_SCRIPT_KEY = "sa_tenancy.script"
_APPLIED_KEY = "sa_tenancy.applied"
_DEFAULT_POLICY = INTERNAL_NAMES  # tenants, and the reservoir's spares it keeps current


def load_config(config: AlembicConfig) -> Config:
    """An Alembic ``Config`` from a path to ``alembic.ini`` (or the ``Config`` itself)."""
    from alembic.config import Config

    if isinstance(config, Config):
        return config
    path = os.fspath(config)
    if not os.path.exists(path):
        raise TenancyError(f"no Alembic configuration at {path!r}; run `sa-tenancy alembic-init`")
    return Config(path)


def _script(cfg: Config) -> ScriptDirectory:
    """The config's ``ScriptDirectory``, loaded once: its revision map is parsed only once."""
    from alembic.script import ScriptDirectory

    script = cfg.attributes.get(_SCRIPT_KEY)
    if script is None:
        script = ScriptDirectory.from_config(cfg)
        cfg.attributes[_SCRIPT_KEY] = script
    return script


def head_revision(config: AlembicConfig) -> str | None:
    """The head(s) of the migration history as one ledger value (comma-joined if branched)."""
    return _ledger.join_revisions(_script(load_config(config)).get_heads())


def current_revision(conn: Connection, schema: str) -> str | None:
    """The revision(s) in ``schema.alembic_version``, comma-joined; None if it has none."""
    q = _ledger.ident
    table = f"{q(schema)}.alembic_version"
    if conn.execute(text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
        return None
    return _ledger.join_revisions(
        r[0] for r in _ledger.execute_ddl(conn, f"SELECT version_num FROM {table}")
    )


def _enter(
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
    q = _ledger.ident
    return {"path": q(schema), "lt": lock_timeout, "st": statement_timeout}


def _leave(conn: Connection, saved: str) -> None:
    conn.execute(text("SELECT set_config('search_path', :p, true)"), {"p": saved})


def _leave_and_read(conn: Connection, schema: str, saved: str) -> str | None:
    """Put the ``search_path`` back and read the tenant's revision, in one round trip."""
    q = _ledger.ident
    versions = conn.execute(
        text(
            "SELECT set_config('search_path', :p, true), "
            f"ARRAY(SELECT version_num FROM {q(schema)}.alembic_version)"
        ),
        {"p": saved},
    ).one()[1]
    return _ledger.join_revisions(versions)


def run_tenant_migrations(
    context: EnvironmentContext, *, target_metadata: Any = None, **configure_kwargs: Any
) -> None:
    """Run the current Alembic command for one tenant; call it from ``env.py``.

    Under :func:`migrate_tenants` (or :func:`upgrade_tenant`) the connection and the tenant come
    in ``context.config.attributes``, already inside the tenant's transaction. Under plain
    Alembic, name the tenant with ``-x tenant=NAME``; the database URL is ``sqlalchemy.url``
    from the ini file or ``DATABASE_URL``.

    Either way the migration runs with ``search_path`` set to the tenant and
    ``version_table_schema`` set to the tenant, and ``configure_kwargs`` go to
    ``context.configure`` (e.g. ``compare_type=True``).

    Example ``env.py``::

        from alembic import context
        from sa_tenancy.migrate import run_tenant_migrations
        from myapp.models import Base

        run_tenant_migrations(context, target_metadata=Base.metadata)
    """
    if context.is_offline_mode():
        raise TenancyError(
            "offline (--sql) mode is not supported per tenant; run against a database"
        )
    cfg = context.config
    conn = cfg.attributes.get(CONNECTION_KEY)
    schema = cfg.attributes.get(SCHEMA_KEY)
    if conn is not None and schema is not None:
        _configure_and_run(context, conn, schema, target_metadata, configure_kwargs)
        return
    tenant = context.get_x_argument(as_dictionary=True).get("tenant")
    if not tenant:
        raise TenancyError(
            "no tenant: run `sa-tenancy migrate` for all tenants, or "
            "`alembic -x tenant=NAME upgrade head` for one"
        )
    schema = _DEFAULT_POLICY.validate(tenant)
    engine = create_engine(_url_of(cfg), poolclass=NullPool)
    try:
        with engine.connect() as conn, conn.begin():
            saved = _enter(conn, schema)
            _configure_and_run(context, conn, schema, target_metadata, configure_kwargs)
            _leave(conn, saved)
            _ledger.ensure(conn)
            _ledger.set_revision(conn, schema, current_revision(conn, schema))
    finally:
        engine.dispose()


def _configure_and_run(
    context: EnvironmentContext,
    conn: Connection,
    schema: str,
    target_metadata: Any,
    configure_kwargs: dict[str, Any],
) -> None:
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
    schema = _DEFAULT_POLICY.validate(schema)
    cfg = load_config(config)
    saved = _enter(conn, schema, lock_timeout=lock_timeout, statement_timeout=statement_timeout)
    run_upgrade(conn, schema, cfg, revision)
    after = _leave_and_read(conn, schema, saved)
    if record:
        _ledger.ensure(conn)
        _ledger.set_revision(conn, schema, after)
    return after


def run_upgrade(conn: Connection, schema: str, cfg: Config, revision: str = "heads") -> list[str]:
    """Run ``env.py`` for ``schema`` on ``conn``, whose transaction already points at it.

    :returns: the revisions Alembic applied (empty if the tenant was already there).
    """
    from alembic.runtime.environment import EnvironmentContext

    script = _script(cfg)

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
    schema = _DEFAULT_POLICY.validate(schema)
    heads = sorted(_script(load_config(config)).get_heads())
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


@dataclass
class FleetReport:
    """The summary of :func:`migrate_tenants`."""

    target: str | None
    total: int = 0
    skipped: int = 0
    results: list[TenantResult] = field(default_factory=list)
    stopped_by_canary: bool = False
    not_attempted: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> list[TenantResult]:
        return [r for r in self.results if r.status in ("failed", "missing")]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_attempted

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "total": self.total,
            "skipped_at_target": self.skipped,
            "migrated": self.count("migrated"),
            "current": self.count("current"),
            "busy": self.count("busy"),
            "failed": [{"schema": r.schema, "error": r.error} for r in self.failed],
            "stopped_by_canary": self.stopped_by_canary,
            "not_attempted": self.not_attempted,
            "seconds": round(self.seconds, 3),
        }


#: ``progress(done, total, failed, elapsed_seconds)``, called from the parent process.
Progress = Callable[[int, int, int, float], None]


def migrate_tenants(
    url: str,
    config: AlembicConfig,
    *,
    jobs: int = 4,
    tenants: Sequence[str] | None = None,
    canary: int = 0,
    lock_timeout: str | None = "10s",
    statement_timeout: str | None = None,
    progress: Progress | None = None,
    include_spares: bool = True,
) -> FleetReport:
    """Upgrade every tenant (or ``tenants``) to head in ``jobs`` worker processes.

    Tenants whose ledger revision is already head are skipped without any work being handed
    out (so a no-op deploy costs one query, and a rerun after an interruption resumes). Each
    tenant migrates in its own transaction, under its advisory lock and timeouts; a failure is
    recorded and the run continues. With ``canary=N`` the first N tenants run first and the
    rest only if none of them failed. Spare reservoir schemas are migrated too, so a claimed
    spare is never behind.

    :param url: database URL; passed to the workers, which each make one connection.
    :param lock_timeout: ``lock_timeout`` per tenant (PostgreSQL interval text), so a tenant
        whose tables are busy fails fast instead of blocking the deploy.
    :param statement_timeout: ``statement_timeout`` per tenant.
    """
    from sqlalchemy import make_url

    started = time.monotonic()
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    cfg = load_config(config)
    target = _ledger.join_revisions(_script(cfg).get_heads())
    report = FleetReport(target=target)
    rendered = make_url(url).render_as_string(hide_password=False)
    engine = create_engine(rendered, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            _ledger.ensure(conn)
            rows = _ledger.marked_schemas(conn)
    finally:
        engine.dispose()
    known = {
        schema: (revision, in_ledger)
        for schema, mark, revision, in_ledger in rows
        if include_spares or mark == _ledger.TENANT_MARK
    }
    todo: list[str] = []
    if tenants is None:
        selected: Iterable[str] = known
    else:
        selected = [_DEFAULT_POLICY.validate(t) for t in tenants]
    for schema in selected:
        if schema not in known:
            report.results.append(TenantResult(schema, "missing", error="not a tenant"))
            continue
        revision, in_ledger = known[schema]
        if in_ledger and revision == target:
            report.skipped += 1
        else:
            todo.append(schema)
    report.total = report.skipped + len(todo) + len(report.results)
    if todo:
        before = {schema: known[schema][0] for schema in todo}
        _run_pool(url=rendered, cfg=cfg, todo=todo, before=before, jobs=jobs, canary=canary,
                  report=report,
                  options={"lock_timeout": lock_timeout, "statement_timeout": statement_timeout},
                  progress=progress, started=started)  # fmt: skip
    report.seconds = time.monotonic() - started
    return report


def _run_pool(
    *,
    url: str,
    cfg: Config,
    todo: list[str],
    before: dict[str, str | None],
    jobs: int,
    canary: int,
    report: FleetReport,
    options: dict[str, Any],
    progress: Progress | None,
    started: float,
) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED
    from concurrent.futures import Future
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import wait

    from . import _fleet

    done = report.skipped + len(report.results)
    failures = len(report.failed)

    def tick() -> None:
        if progress is not None:
            progress(done, report.total, failures, time.monotonic() - started)

    first, rest = (todo[:canary], todo[canary:]) if canary > 0 else ([], todo)
    workers = max(1, min(jobs, len(todo)))
    size = max(1, min(25, math.ceil(len(rest) / (workers * 4)))) if rest else 1
    settings = _fleet.WorkerSettings(
        url=url,
        config_file=cfg.config_file_name,
        main_options=dict(cfg.get_section(cfg.config_ini_section) or {}),
        ini_section=cfg.config_ini_section,
        **options,
    )
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_fleet.init_worker,
        initargs=(settings,),
    )  # fmt: skip
    try:
        tick()
        for batch, chunk in ((first, 1), (rest, size)):
            if not batch:
                continue
            pending: set[Future[list[TenantResult]]] = {
                executor.submit(_fleet.migrate_chunk, batch[i : i + chunk])
                for i in range(0, len(batch), chunk)
            }
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    results = future.result()
                    for r in results:
                        r.before = before.get(r.schema)
                    report.results.extend(results)
                    done += len(results)
                    failures += sum(1 for r in results if r.status == "failed")
                tick()
            if batch is first and any(r.status == "failed" for r in report.results):
                report.stopped_by_canary = True
                report.not_attempted = list(rest)
                return
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class StatusReport:
    """Which tenant is at which revision (:func:`tenant_status`)."""

    head: str | None
    tenants: list[dict[str, Any]] = field(default_factory=list)
    verified: bool = False
    seconds: float = 0.0

    def by_revision(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.tenants:
            key = str(row["revision"])
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def behind(self) -> list[dict[str, Any]]:
        return [row for row in self.tenants if row["state"] != "current"]

    @property
    def ok(self) -> bool:
        return not self.behind

    def as_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "total": len(self.tenants),
            "by_revision": self.by_revision(),
            "not_current": self.behind,
            "verified": self.verified,
            "seconds": round(self.seconds, 3),
        }


def tenant_status(
    bind: Engine,
    *,
    config: AlembicConfig | None = None,
    verify: bool = False,
    include_spares: bool = True,
    per_connection: int = 2000,
) -> StatusReport:
    """Report each tenant's revision from the ledger; compare with head if ``config`` is given.

    Each row is ``{"schema", "kind" ("tenant"/"spare"), "revision", "state"}``, where
    ``state`` is ``"current"``, ``"behind"`` (not at head), ``"unknown"`` (no ledger row: made
    outside sa_tenancy) or, with ``verify``, ``"mismatch"`` (the tenant's own
    ``alembic_version`` disagrees with the ledger: something migrated it behind the library's
    back). Without ``config`` every tenant with a ledger row counts as current.

    ``verify`` reads every tenant's ``alembic_version`` in ``UNION ALL`` batches, on a fresh
    connection every ``per_connection`` tenants, so no backend accumulates the catalog entries
    of the whole fleet.
    """
    started = time.monotonic()
    head = head_revision(config) if config is not None else None
    report = StatusReport(head=head, verified=verify)
    with bind.connect() as conn:
        rows = _ledger.marked_schemas(conn)
    for schema, mark, revision, in_ledger in rows:
        kind = "spare" if mark == _ledger.SPARE_MARK else "tenant"
        if kind == "spare" and not include_spares:
            continue
        if not in_ledger:
            state = "unknown"
        elif head is not None and revision != head:
            state = "behind"
        else:
            state = "current"
        row: dict[str, Any] = {"schema": schema, "kind": kind, "revision": revision, "state": state}
        report.tenants.append(row)
    if verify:
        actual = _read_versions(bind, [row["schema"] for row in report.tenants], per_connection)
        for row in report.tenants:
            if row["state"] != "unknown" and actual.get(row["schema"]) != row["revision"]:
                row["state"] = "mismatch"
                row["actual"] = actual.get(row["schema"])
    report.seconds = time.monotonic() - started
    return report


def _read_versions(bind: Engine, schemas: list[str], per_connection: int) -> dict[str, str | None]:
    found: dict[str, list[str]] = {}
    q = _ledger.ident
    engine = create_engine(bind.url, poolclass=NullPool)
    try:
        for start in range(0, len(schemas), per_connection):
            group = schemas[start : start + per_connection]
            with engine.connect() as conn:
                having = [
                    r[0]
                    for r in conn.execute(
                        text(
                            "SELECT s FROM unnest(CAST(:names AS text[])) s "
                            "WHERE to_regclass(format('%I.alembic_version', s)) IS NOT NULL"
                        ),
                        {"names": group},
                    )
                ]
                for i in range(0, len(having), 500):
                    part = having[i : i + 500]
                    sql = " UNION ALL ".join(
                        f"SELECT {_literal(s)}, version_num FROM {q(s)}.alembic_version"
                        for s in part
                    )
                    for schema, version in _ledger.execute_ddl(conn, sql):
                        found.setdefault(schema, []).append(version)
    finally:
        engine.dispose()
    return {s: _ledger.join_revisions(found.get(s, [])) for s in schemas}


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


for _cls in (FleetReport, StatusReport, TenantResult):
    _cls.__module__ = "sa_tenancy"
del _cls
