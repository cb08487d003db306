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

import asyncio
import datetime
import decimal
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from contextlib import suppress
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import get_args

from sqlalchemy import Enum
from sqlalchemy import TypeDecorator
from sqlalchemy import Uuid
from sqlalchemy import create_engine
from sqlalchemy import inspect
from sqlalchemy import make_url
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm.session import JoinTransactionMode
from sqlalchemy.pool import StaticPool

from .exc import TenancyError
from .listener import Installation
from .listener import install
from .listener import installation_of
from .strategies import ALLOW_RAW_SQL

__all__ = ["ConformanceReport", "IsolationFailure", "check_isolation"]

#: Builds one row object of ``model`` for ``tenant``: ``make_row(model, tenant) -> instance``.
RowMaker = Callable[[type[Any], str], Any]

#: ``join_transaction_mode`` values of this SQLAlchemy, all tried on a shared Connection.
JOIN_MODES: tuple[str, ...] = get_args(JoinTransactionMode)

# Raw SQL the kit itself runs inside tenant transactions: a translate_map installation refuses
# untranslatable SQL unless the statement says it qualifies its names (these do, or need none).
_RAW = {ALLOW_RAW_SQL: True}


class IsolationFailure(AssertionError):
    """The conformance check found a leak; the message lists every finding.

    :attr:`report` is the :class:`ConformanceReport`: scenarios run, failures, notes.
    """

    def __init__(self, message: str, report: ConformanceReport) -> None:
        super().__init__(message)
        self.report = report


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


def _base_type(column: Any) -> Any:
    """The column's type, under any ``TypeDecorator`` (whose ``python_type`` is ``object``
    unless it says otherwise: SQLModel's ``AutoString`` wraps ``String`` that way)."""
    type_ = column.type
    while isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    return type_


def _python_type(column: Any) -> Any:
    for type_ in (column.type, _base_type(column)):
        try:
            python_type = type_.python_type
        except NotImplementedError:
            continue
        if python_type is not object:
            return python_type
    return None


def _marker_column(model: type[Any]) -> str | None:
    """The first column that can carry a tenant name: a string type that is no key and no enum.

    ``python_type``, not ``isinstance(String)``: SQLModel's ``AutoString`` and other
    ``TypeDecorator`` string types are strings too.
    """
    mapper = inspect(model)
    for column in mapper.columns:
        if column.primary_key or column.foreign_keys or isinstance(_base_type(column), Enum):
            continue
        if _python_type(column) is str:
            return str(column.key)
    return None


_SAMPLES: dict[type, Any] = {
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

_KEYS: dict[type, Any] = {
    int: 1,
    str: "1",
    uuid.UUID: uuid.UUID(int=1),
    bytes: b"1",
    decimal.Decimal: decimal.Decimal(1),
    float: 1.0,
}


def _value_for(column: Any) -> Any:
    """A harmless value for a required column that is neither key nor marker."""
    if isinstance(_base_type(column), Uuid):
        return _uuid_value(column, 1)
    return _SAMPLES.get(_python_type(column))


def _uuid_value(column: Any, n: int) -> Any:
    value = uuid.UUID(int=n)
    return value if getattr(_base_type(column), "as_uuid", True) else str(value)


def _key_for(column: Any) -> Any:
    """Row 1's value for a primary or foreign key column, by type: the same in every tenant.

    A foreign key takes the type of the column it references, so it points at row 1 there.
    """
    for fk in column.foreign_keys:
        try:
            return _key_for(fk.column)
        except Exception:  # an unresolvable reference: fall back to the column's own type
            break
    if isinstance(_base_type(column), Uuid):
        return _uuid_value(column, 1)
    python_type = _python_type(column)
    if python_type in _KEYS:
        return _KEYS[python_type]
    return _SAMPLES.get(python_type, 1)


def _mark(column: Any, tenant: str) -> str:
    length = getattr(_base_type(column), "length", None)
    return tenant[:length] if length else tenant


def default_row(model: type[Any], tenant: str) -> Any:
    """Row 1 of ``model`` for ``tenant``: every primary and foreign key set to row 1's value for
    its type (``1``, ``"1"``, ``UUID(int=1)``, ...), the marker column set to the tenant name,
    other required columns a neutral value."""
    mapper = inspect(model)
    marker = _marker_column(model)
    values: dict[str, Any] = {}
    for column in mapper.columns:
        key = str(column.key)
        if column.primary_key or column.foreign_keys:
            values[key] = _key_for(column)
        elif key == marker:
            values[key] = _mark(column, tenant)
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


def _maker(factory: Any) -> Any:
    """What makes one session: a ``scoped_session``'s own ``session_factory``."""
    return factory.session_factory if isinstance(factory, scoped_session) else factory


def _bind_url(factory: Any, url: str | None) -> str:
    if url is not None:
        return url
    bind = getattr(_maker(factory), "kw", {}).get("bind")
    engine: Engine | None = getattr(bind, "sync_engine", bind)
    engine = getattr(engine, "engine", engine)  # a factory bound to a Connection
    if engine is None or not hasattr(engine, "url"):
        raise TenancyError("pass url=...: the session factory is not bound to an engine")
    return engine.url.render_as_string(hide_password=False)


def _error(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    shown = orig if orig is not None else exc
    return f"{type(shown).__name__}: {str(shown).splitlines()[0][:200] if str(shown) else ''}"


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
        self.maker = _maker(factory)
        self.models = models
        self.tenants = tenants
        self.info_key = info_key
        self.make_row = make_row
        self.report = report
        self.default_path = '"$user", public'

    def session(self, bind: Engine | Connection, tenant: str | None, **kw: Any) -> Session:
        info = {self.info_key: tenant} if tenant is not None else {}
        return self.maker(bind=bind, info=info, **kw)  # type: ignore[no-any-return]

    @contextmanager
    def scenario(self, name: str, *, refusal_ok: bool = False) -> Iterator[None]:
        """Run one scenario; an unexpected error is a finding, and the next scenario still runs.

        With ``refusal_ok``, a :class:`~sa_tenancy.TenancyError` ends the scenario as a note:
        refusing a setup it cannot keep isolated is what a correct library may do.
        """
        self.report.scenarios.append(name)
        try:
            yield
        except TenancyError as exc:
            if not refusal_ok:
                self.report.fail(name, f"could not be checked: it raised {_error(exc)}")
            else:
                self.report.notes.append(f"{name}: refused ({_error(exc)}; fine)")
        except Exception as exc:
            self.report.fail(name, f"could not be checked: it raised {_error(exc)}")

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

    def _rows(self, reader: Session | Connection, model: _Model) -> list[Any]:
        return list(reader.scalars(select(getattr(model.cls, model.marker))))

    def read(self, session: Session, scenario: str, tenant: str) -> None:
        for model in self.models:
            seen = self._rows(session, model)
            mine = {tenant, _mark(inspect(model.cls).columns[model.marker], tenant)}
            foreign = sorted({str(v) for v in seen if v not in mine})
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

    # -- the scenarios ----------------------------------------------------------------------

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
            with self.scenario(scenario):
                with self.session(engine, a) as session:
                    self.read(session, scenario, a)
                    session.commit()
                self.plain_checkout(engine, scenario, default_path)
                with self.session(engine, b) as session:
                    self.read(session, scenario, b)

            scenario = "after rollback"
            with self.scenario(scenario):
                with self.session(engine, a) as session:
                    row = session.scalars(select(first.cls)).first()
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
            with self.scenario(scenario):
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

            self.run_two_sessions(url, engine)
            self.run_bound_connection(engine)
            self.run_temp_table(engine)
            if isinstance(self.factory, scoped_session):
                self.run_scoped_registry(engine)
        finally:
            engine.dispose()

        scenario = "AUTOCOMMIT engine"
        auto = create_engine(url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
        try:
            with self.scenario(scenario):
                for tenant in (a, b):
                    try:
                        with self.session(auto, tenant) as session:
                            self.read(session, scenario, tenant)
                    except TenancyError:
                        self.report.notes.append(f"{scenario}: refused with TenancyError (fine)")
                        break
        finally:
            auto.dispose()

    def two_sessions(self, scenario: str, make: Callable[[str], Session]) -> None:
        """Tenant A's session begins, then tenant B's on the same connection; A reads again."""
        a, b = self.tenants
        first = make(a)
        second: Session | None = None
        try:
            self.read(first, scenario, a)
            second = make(b)
            try:
                self.read(second, f"{scenario}, the second session", b)
            except TenancyError as exc:
                self.report.notes.append(
                    f"{scenario}: the second session was refused ({type(exc).__name__}; fine)"
                )
            try:
                self.read(first, f"{scenario}, the first session after the second began", a)
            except (TenancyError, SQLAlchemyError) as exc:
                # Failing closed is not a leak: the first session's connection was refused.
                self.report.notes.append(
                    f"{scenario}: the first session failed closed after the second began "
                    f"({_error(exc)})"
                )
        finally:
            for session in (second, first):
                if session is not None:
                    with suppress(SQLAlchemyError):
                        session.close()

    def run_two_sessions(self, url: str, engine: Engine) -> None:
        scenario = "two sessions, one connection (StaticPool engine)"
        static = create_engine(url, poolclass=StaticPool)
        try:
            with self.scenario(scenario, refusal_ok=True):
                self.two_sessions(scenario, lambda tenant: self.session(static, tenant))
        finally:
            static.dispose()
        for outer in (False, True):
            for mode in JOIN_MODES:
                scenario = (
                    f"two sessions, one Connection (bind=conn, "
                    f"{'outer conn.begin()' if outer else 'no outer transaction'}, "
                    f"join_transaction_mode={mode!r})"
                )
                with self.scenario(scenario, refusal_ok=True), engine.connect() as conn:
                    if outer:
                        conn.begin()

                    def make(tenant: str, conn: Connection = conn, mode: str = mode) -> Session:
                        return self.session(conn, tenant, join_transaction_mode=mode)

                    try:
                        self.two_sessions(scenario, make)
                    finally:
                        conn.rollback()

    def connection_carries_no_tenant(self, conn: Connection, scenario: str, tenant: str) -> None:
        """``conn``, used directly after a tenant session on it ended, must serve no tenant."""
        translate = conn.get_execution_options().get("schema_translate_map") or {}
        if tenant in translate.values():
            self.report.fail(
                scenario,
                f"the Connection still has schema_translate_map {dict(translate)!r} after the "
                f"session ended: statements on it run against tenant {tenant!r}",
            )
        path = conn.execute(text("SHOW search_path").execution_options(**_RAW)).scalar()
        if path != self.default_path:
            self.report.fail(
                scenario,
                f"the Connection kept search_path {path!r} after the session ended (server "
                f"default {self.default_path!r})",
            )
        for model in self.models:
            try:
                with conn.begin_nested():
                    seen = self._rows(conn, model)
            except DBAPIError:
                continue  # no such table in the default schema: nothing read, nothing leaked
            leaked = sorted({str(v) for v in seen if v in self.tenants})
            if leaked:
                self.report.fail(
                    scenario,
                    f"a plain select on the Connection read {model.table!r} rows marked "
                    f"{leaked}: it still reads the tenant's table, not the default schema's",
                )

    def run_bound_connection(self, engine: Engine) -> None:
        a = self.tenants[0]
        variants: list[tuple[bool, str | None]] = [(False, None)]
        variants += [(True, mode) for mode in JOIN_MODES]
        for outer, mode in variants:
            where = f"outer conn.begin(), join_transaction_mode={mode!r}" if outer else "alone"
            scenario = f"a Connection after a session bound to it ended ({where})"
            with self.scenario(scenario, refusal_ok=True), engine.connect() as conn:
                outer_transaction = conn.begin() if outer else None
                kw = {"join_transaction_mode": mode} if mode else {}
                try:
                    with self.session(conn, a, **kw) as session:
                        self.read(session, scenario, a)
                        session.commit()
                    self.connection_carries_no_tenant(conn, scenario, a)
                    if outer_transaction is not None and outer_transaction.is_active:
                        outer_transaction.rollback()
                        self.connection_carries_no_tenant(
                            conn, f"{scenario}, after the outer transaction", a
                        )
                finally:
                    conn.rollback()

    def run_temp_table(self, engine: Engine) -> None:
        a, b = self.tenants
        scenario = "a TEMP table across tenants on one pooled connection"
        name = f"sa_tenancy_conformance_{uuid.uuid4().hex[:12]}"
        with self.scenario(scenario, refusal_ok=True):
            with self.session(engine, a) as session:
                conn = session.connection()
                try:
                    conn.execute(
                        text(
                            f"CREATE TEMP TABLE {name} (tenant text) ON COMMIT PRESERVE ROWS"
                        ).execution_options(**_RAW)
                    )
                except DBAPIError as exc:  # e.g. no TEMPORARY privilege: nothing to leak
                    self.report.notes.append(f"{scenario}: not checked ({_error(exc)})")
                    return
                conn.execute(
                    text(f"INSERT INTO pg_temp.{name} VALUES (:t)").execution_options(**_RAW),
                    {"t": a},
                )
                session.commit()
            try:
                with self.session(engine, b) as session:
                    try:
                        rows = session.connection().execute(
                            text(f"SELECT tenant FROM pg_temp.{name}").execution_options(**_RAW)
                        )
                        seen = list(rows.scalars())
                    except DBAPIError:
                        return  # gone: tenant B cannot see it
                    self.report.fail(
                        scenario,
                        f"tenant {b!r}'s transaction read pg_temp.{name}, a TEMP table made in "
                        f"tenant {a!r}'s transaction (rows {seen!r}); unqualified, it shadows "
                        "tables of the same name",
                    )
            finally:
                with engine.connect() as conn:  # never leave it for later scenarios
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{name}")
                    conn.commit()

    def run_scoped_registry(self, engine: Engine) -> None:
        scenario = "scoped_session registry"
        registry = self.factory
        if registry.registry.has():
            self.report.notes.append(
                f"{scenario}: not checked, the registry already holds a session in this "
                "thread (call .remove() first)"
            )
            return
        with self.scenario(scenario):
            for tenant in (*self.tenants, self.tenants[0]):
                try:
                    session = registry(bind=engine, info={self.info_key: tenant})
                    self.read(session, scenario, tenant)
                    session.commit()
                finally:
                    registry.remove()

    def run_async(self, url: str, async_factory: Any) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        scenario = "async sessions"

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

        with self.scenario(scenario):
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
            f"(tenants {tenants[0]!r} and {tenants[1]!r}):\n- " + "\n- ".join(report.failures),
            report,
        )
    return report


for _cls in (ConformanceReport, IsolationFailure):
    _cls.__module__ = "sa_tenancy.conformance"
del _cls
