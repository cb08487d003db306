"""Isolation conformance check: point it at *your* session factory and *your* models.

sa_tenancy's own tests prove the library isolates tenants with its test models. An application
adds its own pieces: its models, its session factory options, other event listeners, a custom
strategy. :func:`check_isolation` runs the same proof against those pieces:

* two tenants hold rows with **identical primary keys**, each row marked with its tenant's name
  in a string column (the tenants come from the caller, e.g. the ``pg_tenants`` fixture, which
  also puts marked decoy rows in ``public``);
* everything runs on an engine with ``pool_size=1``, so every session reuses the *same* DBAPI
  connection that the previous tenant just used;
* after a **commit**, a **rollback** and a **database error** in tenant A, a session for tenant
  B must read only B's rows, and a plain checkout must see the server's default
  ``search_path`` (nothing left on the pooled connection);
* **two sessions for different tenants open at once on one connection**, on a ``StaticPool``
  engine and on one ``Connection`` (``sessionmaker(bind=conn)``), with and without an outer
  ``conn.begin()``, for every ``join_transaction_mode``: after the second session has begun, the
  first must still read only its own rows. Refusing the second session
  (:class:`~sa_tenancy.SchemaSwitchError`, or any :class:`~sa_tenancy.TenancyError`) passes too;
* **a Connection that outlives a session bound to it** must carry no tenant once the session
  ended: the server's default ``search_path``, no ``schema_translate_map`` naming the tenant,
  and a plain ``select(Model)`` on it reads the default schema, not the tenant's;
* a **TEMP table** made in tenant A's committed transaction (``ON COMMIT PRESERVE ROWS``) must not
  be readable (``pg_temp.<name>``) in tenant B's next transaction on the same pooled connection;
* on an **AUTOCOMMIT** engine, a tenant session must either be refused
  (:class:`~sa_tenancy.TenancyError`) or still read only its own rows;
* with **async** sessions (psycopg 3 async) the same holds;
* a ``scoped_session`` factory is also used through its registry (``factory(...)``,
  ``factory.remove()``); the scenarios that need two sessions at once in one thread use its
  ``session_factory``.

Rows are built per column type, the same in both tenants: keys are ``1``, ``"1"``,
``UUID(int=1)`` (or its string for ``Uuid(as_uuid=False)``), ...; a foreign key gets the value
of the column it references. The row's marker is the first string column (any type whose
``python_type`` is ``str``, such as SQLModel's ``AutoString``) that is no key.

Every finding names the scenario, the tenant, the table and what leaked. All findings are
collected and raised together as :class:`IsolationFailure` (an ``AssertionError``, so pytest
shows it as a test failure).

Example (with the ``sa_tenancy.testing`` plugin)::

    def test_my_app_isolates_tenants(pg_tenants, pg_url):
        a, b = pg_tenants(Base.metadata, 2)
        SessionLocal = sessionmaker(create_engine(pg_url))
        sa_tenancy.install(SessionLocal)
        check_isolation(SessionLocal, [Customer, Order], tenants=(a, b), url=pg_url)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.engine import Engine

from ._conformance_checks import _maker
from ._conformance_report import ConformanceReport
from ._conformance_report import IsolationFailure
from ._conformance_rows import RowMaker as RowMaker
from ._conformance_rows import _models
from ._conformance_rows import default_row as default_row
from ._conformance_scenarios import JOIN_MODES as JOIN_MODES
from ._conformance_scenarios import _Checker
from .exc import TenancyError
from .listener import Installation
from .listener import install
from .listener import installation_of

__all__ = ["ConformanceReport", "IsolationFailure", "check_isolation"]


def _bind_url(factory: Any, url: str | None) -> str:
    if url is not None:
        return url
    bind = getattr(_maker(factory), "kw", {}).get("bind")
    engine: Engine | None = getattr(bind, "sync_engine", bind)
    engine = getattr(engine, "engine", engine)  # a factory bound to a Connection
    if engine is None or not hasattr(engine, "url"):
        raise TenancyError("pass url=...: the session factory is not bound to an engine")
    return engine.url.render_as_string(hide_password=False)


def _async_factory_like(installation: Installation) -> Any:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    factory = async_sessionmaker(expire_on_commit=False)
    install(
        factory,
        strategy=installation.strategy,
        info_key=installation.info_key,
        require=installation.require,
        names=installation.names,
    )
    return factory


def check_isolation(
    factory: Any,
    models: Sequence[type[Any]],
    *,
    tenants: tuple[str, str],
    url: str | None = None,
    info_key: str | None = None,
    make_row: RowMaker = default_row,
    async_factory: Any = None,
    check_async: bool = True,
) -> ConformanceReport:
    """Prove that ``factory``'s sessions keep ``tenants`` apart for ``models``; raise if not.

    :param factory: your ``sessionmaker`` (it must accept ``bind=`` and ``info=`` when called),
        usually installed with :func:`sa_tenancy.install`.
    :param models: your tenant models (declared without a schema). Each needs a string column
        to carry the tenant's name; the first one that is not a key is used.
    :param tenants: two existing, **empty** tenant schemas with the models' tables.
    :param url: the PostgreSQL URL; by default the URL of the engine ``factory`` is bound to.
        The check makes its own engines from it (``pool_size=1``, ``AUTOCOMMIT``, async).
    :param info_key: the ``session.info`` key; by default the installation's (or ``"schema"``).
    :param make_row: ``make_row(model, tenant)`` builds the row for a tenant; the default sets
        every primary and foreign key to 1 and the marker column to the tenant name.
    :param async_factory: your ``async_sessionmaker``; by default one installed like
        ``factory`` (only possible when ``factory`` was installed with sa_tenancy).
    :param check_async: run the async scenario (needs ``sa_tenancy[asyncio]``).
    :returns: a :class:`ConformanceReport` (scenarios run, notes) when nothing leaked.
    :raises IsolationFailure: listing every leak found.
    """
    report = ConformanceReport()
    if len(tenants) != 2 or tenants[0] == tenants[1]:
        raise TenancyError("check_isolation needs two different tenant schemas")
    installation = installation_of(factory)
    key = info_key or (installation.info_key if installation is not None else "schema")
    checker = _Checker(factory, _models(models, report), tenants, key, make_row, report)
    sync_url = _bind_url(factory, url)
    checker.run_sync(sync_url)
    if check_async:
        if async_factory is None and installation is not None:
            async_factory = _async_factory_like(installation)
        if async_factory is None:
            report.notes.append("async not checked: pass async_factory=")
        else:
            parsed = make_url(sync_url)
            if parsed.get_driver_name() not in ("psycopg", "asyncpg"):
                parsed = parsed.set(drivername="postgresql+psycopg")
            checker.run_async(parsed.render_as_string(hide_password=False), async_factory)
    if report.failures:
        raise IsolationFailure(
            f"tenant isolation failed in {len(report.failures)} check(s) "
            f"(tenants {tenants[0]!r} and {tenants[1]!r}):\n- " + "\n- ".join(report.failures),
            report,
        )
    return report


for _cls in (ConformanceReport, IsolationFailure):
    _cls.__module__ = "sa_tenancy.conformance"
del _cls
