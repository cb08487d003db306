"""Per-tenant Alembic migrations, a fleet runner for thousands of tenants, and a drift report.

This is the public face of sa_tenancy's migrations; the work is split by concern, and imports
only go down this list:

* :mod:`sa_tenancy.migrate` (here): :func:`migrate_tenants`, the parent side of a fleet run:
  read the ledger, hand out the tenants that are behind, collect results and progress;
* :mod:`sa_tenancy._status`: :func:`tenant_status`, the drift report;
* :mod:`sa_tenancy._fleet`: the worker processes, and :class:`TenantResult`;
* :mod:`sa_tenancy._alembic`: one tenant's run (:func:`run_tenant_migrations` for ``env.py``,
  :func:`upgrade_tenant`, :func:`stamp_tenant`, revisions and configuration);
* :mod:`sa_tenancy._autogen`: what autogenerate compares in a tenant (its own tables only).

Every name is importable from here, as it always was.

For each tenant, in one transaction:

1. take the tenant's advisory lock without waiting (``pg_try_advisory_xact_lock``, keyed by the
   schema's OID), so two deployers never migrate the same tenant at once: the second one skips
   it as *busy* and, on a later run, finds it current;
2. ``set_config(..., true)`` the ``search_path`` to the tenant, plus ``lock_timeout`` and
   ``statement_timeout``: all transaction-scoped, so nothing is left on the connection;
3. run ``env.py`` with ``version_table_schema`` set to the tenant (and its ``extra_schemas``,
   e.g. ``public`` for extensions, after the tenant on the path);
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

:func:`migrate_tenants` and :func:`tenant_status` take ``namespace=``: they select tenants and
spares by their namespace's marks (see :mod:`sa_tenancy._namespace`), in the same one query.

Alembic is imported only when one of these functions runs: ``import sa_tenancy`` never does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from . import _fleet
from . import _ledger
from ._alembic import CONNECTION_KEY
from ._alembic import DEFAULT_POLICY
from ._alembic import ENTER_SQL
from ._alembic import SCHEMA_KEY
from ._alembic import current_revision
from ._alembic import enter_params
from ._alembic import head_revision
from ._alembic import load_config
from ._alembic import run_tenant_migrations
from ._alembic import run_upgrade
from ._alembic import script_directory
from ._alembic import stamp_tenant
from ._alembic import upgrade_tenant
from ._citus import refuse_worker
from ._fleet import TenantResult
from ._status import StatusReport
from ._status import tenant_status

if TYPE_CHECKING:
    from alembic.config import Config

    from ._alembic import AlembicConfig

__all__ = [
    "CONNECTION_KEY",
    "ENTER_SQL",
    "SCHEMA_KEY",
    "FleetReport",
    "Progress",
    "StatusReport",
    "TenantResult",
    "current_revision",
    "enter_params",
    "head_revision",
    "load_config",
    "migrate_tenants",
    "run_tenant_migrations",
    "run_upgrade",
    "stamp_tenant",
    "tenant_status",
    "upgrade_tenant",
]


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


FleetReport.__module__ = "sa_tenancy"

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
    namespace: str | None = None,
) -> FleetReport:
    """Upgrade every tenant (or ``tenants``) to head in ``jobs`` worker processes.

    Tenants whose ledger revision is already head are skipped without any work being handed
    out (so a no-op deploy costs one query, and a rerun after an interruption resumes). Each
    tenant migrates in its own transaction, under its advisory lock and timeouts; a failure is
    recorded and the run continues. With ``canary=N`` the first N tenants run first and the
    rest only if none of them failed. Spare reservoir schemas are migrated too, so a claimed
    spare is never behind. Only the tenants and spares of ``namespace`` are considered: another
    namespace's tenants stay at their revision, and naming one in ``tenants`` reports it
    ``"missing"``.

    :param url: database URL; passed to the workers, which each make one connection.
    :param lock_timeout: ``lock_timeout`` per tenant (PostgreSQL interval text), so a tenant
        whose tables are busy fails fast instead of blocking the deploy.
    :param statement_timeout: ``statement_timeout`` per tenant.
    :param namespace: whose tenants to migrate (default: the default namespace).
    """
    from sqlalchemy import make_url

    from ._namespace import check

    ns = check(namespace)
    started = time.monotonic()
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    cfg = load_config(config)
    target = _ledger.join_revisions(script_directory(cfg).get_heads())
    report = FleetReport(target=target)
    rendered = make_url(url).render_as_string(hide_password=False)
    engine = create_engine(rendered, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            refuse_worker(conn, "migrate_tenants")
            _ledger.ensure(conn)
            rows = _ledger.marked_schemas(conn, (_ledger.tenant_mark(ns), _ledger.spare_mark(ns)))
    finally:
        engine.dispose()
    known = {
        schema: (revision, in_ledger)
        for schema, mark, revision, in_ledger in rows
        if include_spares or mark == _ledger.tenant_mark(ns)
    }
    todo: list[str] = []
    if tenants is None:
        selected: Iterable[str] = known
    else:
        selected = [DEFAULT_POLICY.validate(t) for t in tenants]
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
