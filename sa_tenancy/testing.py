"""pytest plugin: real databases for tenancy tests, and helpers to make tenant schemas.

Enable it in a project with ``-p sa_tenancy.testing`` (or ``pytest_plugins =
["sa_tenancy.testing"]`` in a ``conftest.py``). sa_tenancy's own suite runs on it.

Where the PostgreSQL server comes from, first match wins:

1. ``--pg-url URL`` or the ``SA_TENANCY_TEST_PG_URL`` environment variable;
2. the local server on ``127.0.0.1:5432`` (user ``postgres``, database ``test``) if it answers;
3. a throwaway cluster made with ``initdb``/``pg_ctl`` found on ``PATH`` (stopped at the end);
4. none: database tests are skipped with a reason saying how to get one, **except under
   ``CI=true``, where they fail**: a CI run that silently skips its database tests proves nothing.

MySQL/MariaDB works the same way with ``--mysql-url`` / ``SA_TENANCY_TEST_MYSQL_URL`` and
``127.0.0.1:3306`` (user ``root``, database ``test``).

Every run works in a scratch database of its own (``sa_tenancy_test_<random>``), created at the
start and dropped at the end, so runs never see each other's tables (not even in ``public``)
and the configured database is left as it was. If the role may not create databases, the
configured database is used as is, and every test still makes and drops its own uniquely named
schemas.

**Citus**: when the configured PostgreSQL database has the ``citus`` extension (a coordinator),
the run works **in place**, in that database: a scratch database would have no ``citus``
extension (and ``CREATE DATABASE`` is not propagated to the workers), so the suite would pass
without touching Citus. Tests still make and drop uniquely named schemas, so the database is
left as it was, but ``public`` may hold the decoy tables of concurrent runs: run one suite at a
time per coordinator. The report header says so. Tests marked ``own_server`` start a server of
their own (``initdb``) and test nothing about Citus: deselect them there with
``-m "not own_server"``. Tests that create a database of their own get a plain PostgreSQL
database on the coordinator, and say so in their docstring.

Fixtures: ``pg_url``, ``pg_engine`` (``pool_size=1``, so the next checkout is the same
connection), ``pg_tenants`` (make tenant schemas), and ``mysql_url``, ``mysql_engine``,
``mysql_tenants``. Tests that use them are marked ``pg`` / ``mysql`` automatically, so
``-m "not pg and not mysql"`` is a fast run without servers.

The isolation conformance kit: ``tenancy_conformance(SessionLocal, [Model, ...])`` makes two
tenant schemas with the models' tables (identical primary keys, decoys in ``public``) and runs
:func:`sa_tenancy.conformance.check_isolation` against *your* session factory and models:
commit, rollback, database error, two tenant sessions at once on one connection, a
``Connection`` after a session bound to it, a ``TEMP`` table across tenants, ``AUTOCOMMIT``
engine and async sessions, on a ``pool_size=1`` engine. It fails the test with a message naming
what leaked::

    # conftest.py of your project (or: pytest -p sa_tenancy.testing)
    pytest_plugins = ["sa_tenancy.testing"]

    def test_tenants_are_isolated(tenancy_conformance, pg_url):
        SessionLocal = sessionmaker(create_engine(pg_url))
        sa_tenancy.install(SessionLocal)
        tenancy_conformance(SessionLocal, [Customer, Order])
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import MetaData
from sqlalchemy import create_engine
from sqlalchemy import insert
from sqlalchemy import make_url
from sqlalchemy import text
from sqlalchemy.engine import Engine

from ._conformance_rows import _base_type
from ._conformance_rows import _key_for
from ._conformance_rows import _python_type
from ._test_servers import LOCAL_MYSQL as LOCAL_MYSQL
from ._test_servers import LOCAL_PG as LOCAL_PG
from ._test_servers import MYSQL_ENV as MYSQL_ENV
from ._test_servers import PG_ENV as PG_ENV
from ._test_servers import _Servers
from ._test_servers import unique_name
from .conformance import ConformanceReport
from .conformance import check_isolation

__all__ = ["DatabaseUnavailable", "TenantFactory", "unique_name", "url_for_driver"]

DECOY = "public-decoy"


class DatabaseUnavailable(Exception):
    """No server could be found or started; the message says how to get one."""


def url_for_driver(url: str, driver: str) -> str:
    """``url`` with another driver, e.g. ``url_for_driver(pg_url, "asyncpg")``."""
    parsed = make_url(url)
    return parsed.set(drivername=f"{parsed.get_backend_name()}+{driver}").render_as_string(
        hide_password=False
    )


_SERVERS = pytest.StashKey[_Servers]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sa_tenancy", "sa_tenancy database options")
    group.addoption("--pg-url", default=None, help=f"PostgreSQL URL (default: ${PG_ENV}, local)")
    group.addoption("--mysql-url", default=None, help=f"MySQL URL (default: ${MYSQL_ENV}, local)")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SERVERS] = _Servers(config)
    config.addinivalue_line("markers", "pg: needs a PostgreSQL server (added automatically)")
    config.addinivalue_line("markers", "mysql: needs a MySQL/MariaDB server (added automatically)")
    config.addinivalue_line(
        "markers",
        "own_server: starts a PostgreSQL server of its own (initdb), not the configured one; "
        "deselect with -m 'not own_server' when running in place on a Citus coordinator",
    )
    config.addinivalue_line(
        "markers",
        "citus: needs a Citus coordinator as the configured PostgreSQL; deselected elsewhere",
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    servers = config.stash.get(_SERVERS, None)
    if servers is not None:
        servers.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    selected = config.getoption("markexpr", "") or ""
    for kind in ("pg", "mysql"):
        if f"not {kind}" in selected:
            continue
        server = config.stash[_SERVERS].get(kind)
        if server.url:
            where = f" (scratch database {server.scratch})" if server.scratch else ""
            if server.citus is not None:
                database = make_url(server.url).database
                where = (
                    f" (Citus {server.citus} coordinator: in place in database {database}, no "
                    "scratch database; deselect own_server tests with -m 'not own_server')"
                )
            lines.append(f"{server.kind}: {server.version} via {server.source}{where}")
            if kind == "pg" and server.citus is None:
                lines.append("citus: not this server: tests marked citus are deselected")
        else:
            lines.append(f"{server.kind}: unavailable: {server.error}")
    return lines


_PG_FIXTURES = {"pg_url", "pg_engine", "pg_tenants", "tenancy_conformance"}
_MYSQL_FIXTURES = {"mysql_url", "mysql_engine", "mysql_tenants"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    citus_only = [item for item in items if item.get_closest_marker("citus")]
    if citus_only and config.stash[_SERVERS].get("pg").citus is None:
        # Not skipped: they cannot run against this server at all, and say so in the header.
        config.hook.pytest_deselected(items=citus_only)
        items[:] = [item for item in items if not item.get_closest_marker("citus")]
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _PG_FIXTURES:
            item.add_marker(pytest.mark.pg)
        if names & _MYSQL_FIXTURES:
            item.add_marker(pytest.mark.mysql)


class TenantFactory:
    """Makes tenant schemas with the tables of a ``MetaData``, and drops them afterwards.

    Each tenant's tables are created through a ``schema_translate_map`` (never through the
    ``search_path``, where PostgreSQL's ``has_table`` can see a same-named table elsewhere and
    skip creation). With ``decoy=True`` the same tables are also made in the default schema,
    each holding rows marked ``'public-decoy'`` where a string column allows it, so a query that
    falls through to the default schema shows up instead of returning nothing.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.schemas: list[str] = []
        self._decoys: list[MetaData] = []

    def __call__(
        self,
        metadata: MetaData | None = None,
        count: int = 2,
        *,
        names: Iterable[str] | None = None,
        decoy: bool = True,
    ) -> list[str]:
        """Create ``count`` tenant schemas (or the given ``names``); return their names."""
        made = list(names) if names is not None else [unique_name() for _ in range(count)]
        for schema in made:
            with self.engine.begin() as conn:
                self.schemas.append(schema)
                quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
                kw = "DATABASE" if conn.dialect.name == "mysql" else "SCHEMA"
                conn.exec_driver_sql(f"CREATE {kw} {quoted}")
            if metadata is not None:
                mapped = self.engine.execution_options(schema_translate_map={None: schema})
                metadata.create_all(mapped)
        if decoy and metadata is not None and metadata not in self._decoys:
            self._make_decoys(metadata)
        return made

    def _make_decoys(self, metadata: MetaData) -> None:
        tables = [t for t in metadata.sorted_tables if t.schema is None]
        with self.engine.begin() as conn:
            metadata.create_all(conn, tables=tables)
            for table in tables:
                row = _decoy_row(table)
                if row is not None:
                    conn.execute(insert(table).values(**row))
        self._decoys.append(metadata)

    def drop(self) -> None:
        with self.engine.begin() as conn:
            is_mysql = conn.dialect.name == "mysql"
            for schema in reversed(self.schemas):
                quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
                if is_mysql:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
                else:
                    conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")
            for metadata in self._decoys:
                tables = [t for t in metadata.sorted_tables if t.schema is None]
                metadata.drop_all(conn, tables=tables)
        self.schemas.clear()
        self._decoys.clear()


def _decoy_row(table: Any) -> dict[str, Any] | None:
    """A row for ``table`` with every string column set to the decoy marker, if one fits."""
    row: dict[str, Any] = {}
    for column in table.columns:
        # Under any TypeDecorator: SQLModel's AutoString says python_type object, wraps String.
        python_type = _python_type(column)
        if column.primary_key and python_type is int:
            row[column.name] = 1
        elif column.primary_key and not column.foreign_keys:
            # "1", UUID(int=1), ...: row 1's key, as the conformance kit writes it in each
            # tenant, so a tenant write that falls through to the default schema collides.
            row[column.name] = _key_for(column)
        elif python_type is str:
            length = getattr(_base_type(column), "length", None)
            row[column.name] = DECOY[:length] if length else DECOY
        elif column.foreign_keys or (
            not column.nullable and column.server_default is None and column.default is None
        ):
            return None
    return row


@pytest.fixture(scope="session")
def pg_url(request: pytest.FixtureRequest) -> str:
    """URL (``postgresql+psycopg``) of this run's PostgreSQL scratch database."""
    return request.config.stash[_SERVERS].get("pg").require()


@pytest.fixture(scope="session")
def mysql_url(request: pytest.FixtureRequest) -> str:
    """URL (``mysql+pymysql``) of this run's MySQL/MariaDB scratch database."""
    return request.config.stash[_SERVERS].get("mysql").require()


def _engine_fixture(url: str) -> Iterator[Engine]:
    engine = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=10)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """A PostgreSQL engine with ``pool_size=1``: every checkout is the same DBAPI connection."""
    yield from _engine_fixture(pg_url)


@pytest.fixture
def mysql_engine(mysql_url: str) -> Iterator[Engine]:
    """A MySQL/MariaDB engine with ``pool_size=1``."""
    yield from _engine_fixture(mysql_url)


def _tenants_fixture(url: str) -> Iterator[TenantFactory]:
    engine = create_engine(url, pool_size=2, max_overflow=0)
    factory = TenantFactory(engine)
    try:
        yield factory
    finally:
        factory.drop()
        engine.dispose()


@pytest.fixture
def pg_tenants(pg_url: str) -> Iterator[TenantFactory]:
    """``pg_tenants(metadata, 2)`` makes two tenant schemas (and decoys); all dropped after."""
    yield from _tenants_fixture(pg_url)


@pytest.fixture
def mysql_tenants(mysql_url: str) -> Iterator[TenantFactory]:
    """``mysql_tenants(metadata, 2)`` makes two tenant databases; all dropped after."""
    yield from _tenants_fixture(mysql_url)


def server_default_search_path(engine: Engine) -> str:
    """``SHOW search_path`` on a fresh checkout of ``engine``: what a pooled user would see."""
    with engine.connect() as conn:
        return str(conn.execute(text("SHOW search_path")).scalar())


@pytest.fixture
def tenancy_conformance(pg_url: str, pg_tenants: TenantFactory) -> Callable[..., ConformanceReport]:
    """``tenancy_conformance(factory, models, **options)``: the isolation conformance check.

    Makes two empty tenant schemas with the tables of ``models`` (and marked decoy rows in
    ``public``), then runs :func:`sa_tenancy.conformance.check_isolation` with ``url=pg_url``.
    Options are passed on (``make_row=``, ``async_factory=``, ``info_key=``, ...). Returns the
    report; raises :class:`~sa_tenancy.conformance.IsolationFailure` on any leak.
    """

    def check(factory: Any, models: Sequence[type[Any]], **options: Any) -> ConformanceReport:
        metadata = models[0].metadata
        a, b = pg_tenants(metadata, 2)
        options.setdefault("url", pg_url)
        return check_isolation(factory, models, tenants=(a, b), **options)

    return check
