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
* on an **AUTOCOMMIT** engine, a tenant session must either be refused
  (:class:`~sa_tenancy.TenancyError`) or still read only its own rows;
* with **async** sessions (psycopg 3 async) the same holds.

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

import asyncio
import datetime
import decimal
import uuid
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from sqlalchemy import String
from sqlalchemy import create_engine
from sqlalchemy import inspect
from sqlalchemy import make_url
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from .exc import TenancyError
from .listener import Installation
from .listener import install
from .listener import installation_of

__all__ = ["ConformanceReport", "IsolationFailure", "check_isolation"]

#: Builds one row object of ``model`` for ``tenant``: ``make_row(model, tenant) -> instance``.
RowMaker = Callable[[type[Any], str], Any]


class IsolationFailure(AssertionError):
    """The conformance check found a leak; the message lists every finding."""


@dataclass
class ConformanceReport:
    """What :func:`check_isolation` ran and found."""

    scenarios: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, scenario: str, message: str) -> None:
        self.failures.append(f"{scenario}: {message}")


@dataclass
class _Model:
    cls: type[Any]
    table: str
    marker: str  # the string column that carries the tenant's name


def _marker_column(model: type[Any]) -> str | None:
    mapper = inspect(model)
    for column in mapper.columns:
        if not column.primary_key and isinstance(column.type, String) and not column.foreign_keys:
            return str(column.key)
    return None


def _value_for(column: Any) -> Any:
    """A harmless value for a required column that is neither key nor marker."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return None
    samples: dict[type, Any] = {
        int: 1,
        bool: False,
        float: 0.0,
        decimal.Decimal: decimal.Decimal(0),
        str: "x",
        bytes: b"",
        datetime.datetime: datetime.datetime(2000, 1, 1),
        datetime.date: datetime.date(2000, 1, 1),
        datetime.time: datetime.time(0, 0),
        uuid.UUID: uuid.UUID(int=1),
        dict: {},
        list: [],
    }
    return samples.get(python_type)


def default_row(model: type[Any], tenant: str) -> Any:
    """Row 1 of ``model`` for ``tenant``: every primary key and foreign key 1 (or ``"1"``),
    the marker column set to the tenant name, other required columns a neutral value."""
    mapper = inspect(model)
    marker = _marker_column(model)
    values: dict[str, Any] = {}
    for column in mapper.columns:
        key = str(column.key)
        if column.primary_key or column.foreign_keys:
            values[key] = "1" if _value_for(column) == "x" else 1
        elif key == marker:
            length = getattr(column.type, "length", None)
            values[key] = tenant[:length] if length else tenant
        elif not column.nullable and column.default is None and column.server_default is None:
            values[key] = _value_for(column)
    return model(**values)


def _models(models: Sequence[type[Any]], report: ConformanceReport) -> list[_Model]:
    found = []
    for model in models:
        marker = _marker_column(model)
        table = inspect(model).local_table
        if marker is None:
            report.notes.append(f"{table.name}: no string column to mark rows with; not checked")
            continue
        if table.schema is not None:
            report.notes.append(f"{table.name}: shared table (schema {table.schema}); skipped")
            continue
        found.append(_Model(model, str(table.name), marker))
    if not found:
        raise TenancyError("check_isolation needs at least one tenant model with a string column")
    # Parents first, so foreign keys to row 1 resolve.
    order = {
        t.name: n for n, t in enumerate(inspect(found[0].cls).local_table.metadata.sorted_tables)
    }
    return sorted(found, key=lambda m: order.get(m.table, 0))


def _bind_url(factory: Any, url: str | None) -> str:
    if url is not None:
        return url
    bind = getattr(factory, "kw", {}).get("bind")
    engine: Engine | None = getattr(bind, "sync_engine", bind)
    if engine is None or not hasattr(engine, "url"):
        raise TenancyError("pass url=...: the session factory is not bound to an engine")
    return engine.url.render_as_string(hide_password=False)


class _Checker:
    def __init__(
        self,
        factory: Any,
        models: list[_Model],
        tenants: tuple[str, str],
        info_key: str,
        make_row: RowMaker,
        report: ConformanceReport,
    ) -> None:
        self.factory = factory
        self.models = models
        self.tenants = tenants
        self.info_key = info_key
        self.make_row = make_row
        self.report = report
        self.default_path = '"$user", public'

    def session(self, engine: Engine, tenant: str | None) -> Session:
        info = {self.info_key: tenant} if tenant is not None else {}
        return self.factory(bind=engine, info=info)  # type: ignore[no-any-return]

    def seed(self, engine: Engine) -> None:
        for tenant in self.tenants:
            with self.session(engine, tenant) as session:
                try:
                    for model in self.models:
                        session.add(self.make_row(model.cls, tenant))
                        session.flush()
                    session.commit()
                except DBAPIError as exc:
                    # The tenants are empty: a duplicate key means the write went elsewhere.
                    self.report.fail(
                        "writing the rows",
                        f"tenant {tenant!r} could not write row 1 of {model.table!r} to its "
                        f"empty schema ({type(exc.orig).__name__}): the write went to another "
                        "schema",
                    )
                    session.rollback()

    def read(self, session: Session, scenario: str, tenant: str) -> None:
        for model in self.models:
            marker = getattr(model.cls, model.marker)
            seen = list(session.execute(select(marker)).scalars())
            foreign = sorted({str(v) for v in seen if v != tenant})
            if foreign:
                self.report.fail(
                    scenario,
                    f"a session for tenant {tenant!r} read {len(seen)} row(s) from "
                    f"{model.table!r}, marked {foreign} instead of {tenant!r}",
                )
            elif len(seen) != 1:
                self.report.fail(
                    scenario,
                    f"a session for tenant {tenant!r} read {len(seen)} row(s) from "
                    f"{model.table!r}; expected its 1 row",
                )

    def plain_checkout(self, engine: Engine, scenario: str, default_path: str) -> None:
        with engine.connect() as conn:
            path = conn.execute(text("SHOW search_path")).scalar()
        if path != default_path:
            self.report.fail(
                scenario,
                f"the pooled connection kept search_path {path!r} (server default "
                f"{default_path!r}): the next user of the pool inherits a tenant",
            )

    def run_sync(self, url: str) -> None:
        a, b = self.tenants
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            with engine.connect() as conn:
                default_path = str(conn.execute(text("SHOW search_path")).scalar())
            self.default_path = default_path
            self.seed(engine)
            first = self.models[0]

            scenario = "after commit"
            self.report.scenarios.append(scenario)
            with self.session(engine, a) as session:
                self.read(session, scenario, a)
                session.commit()
            self.plain_checkout(engine, scenario, default_path)
            with self.session(engine, b) as session:
                self.read(session, scenario, b)

            scenario = "after rollback"
            self.report.scenarios.append(scenario)
            with self.session(engine, a) as session:
                row = session.execute(select(first.cls)).scalars().first()
                if row is not None:
                    setattr(row, first.marker, f"{a}-rolled-back"[:63])
                    session.flush()
                session.rollback()
            self.plain_checkout(engine, scenario, default_path)
            with self.session(engine, b) as session:
                self.read(session, scenario, b)
            with self.session(engine, a) as session:
                self.read(session, scenario, a)

            scenario = "after a database error"
            self.report.scenarios.append(scenario)
            with self.session(engine, a) as session:
                session.add(self.make_row(first.cls, a))  # same primary key again
                try:
                    session.flush()
                    self.report.notes.append("the duplicate row was accepted; no error raised")
                except DBAPIError:
                    pass
                session.rollback()
            self.plain_checkout(engine, scenario, default_path)
            with self.session(engine, b) as session:
                self.read(session, scenario, b)
        finally:
            engine.dispose()

        scenario = "AUTOCOMMIT engine"
        self.report.scenarios.append(scenario)
        auto = create_engine(url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
        try:
            for tenant in (a, b):
                try:
                    with self.session(auto, tenant) as session:
                        self.read(session, scenario, tenant)
                except TenancyError:
                    self.report.notes.append(f"{scenario}: refused with TenancyError (fine)")
                    break
        finally:
            auto.dispose()

    def run_async(self, url: str, async_factory: Any) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        scenario = "async sessions"
        self.report.scenarios.append(scenario)

        async def main() -> None:
            engine = create_async_engine(url, pool_size=1, max_overflow=0)
            try:
                for tenant in (*self.tenants, *self.tenants):
                    info = {self.info_key: tenant}
                    async with async_factory(bind=engine, info=info) as session:
                        await session.run_sync(lambda s, t=tenant: self.read(s, scenario, t))
                        await session.commit()
                async with engine.connect() as conn:
                    path = (await conn.execute(text("SHOW search_path"))).scalar()
                if path != self.default_path:
                    self.report.fail(
                        scenario,
                        f"the pooled connection kept search_path {path!r} (server default "
                        f"{self.default_path!r})",
                    )
            finally:
                await engine.dispose()

        asyncio.run(main())


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
            f"(tenants {tenants[0]!r} and {tenants[1]!r}):\n- " + "\n- ".join(report.failures)
        )
    return report


for _cls in (ConformanceReport, IsolationFailure):
    _cls.__module__ = "sa_tenancy.conformance"
del _cls
