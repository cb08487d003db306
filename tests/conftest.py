"""Shared fixtures. The database fixtures come from the sa_tenancy.testing plugin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

import sa_tenancy

from .models import tenant_metadata

STRATEGIES = ["search_path", "translate_map"]


def pytest_report_header(config: pytest.Config) -> str:
    import psycopg
    import sqlalchemy

    return f"SQLAlchemy {sqlalchemy.__version__}, psycopg {psycopg.__version__}"


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def two_tenants(pg_tenants) -> list[str]:
    """Two PostgreSQL tenants with the test models, plus decoy tables in public."""
    return pg_tenants(tenant_metadata, 2)


@pytest.fixture
def SessionLocal(pg_engine: Engine, strategy: str) -> Iterator[sessionmaker]:
    factory = sessionmaker(pg_engine)
    installation = sa_tenancy.install(factory, strategy=strategy)
    yield factory
    installation.uninstall()


class StatementLog:
    """Every statement and its parameters as they reach the DBAPI cursor."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, object]] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany):
        self.entries.append((statement, parameters))

    def count(self, fragment: str) -> int:
        return sum(fragment in statement for statement, _ in self.entries)

    def contains(self, needle: str) -> bool:
        return any(needle in sql or needle in repr(params) for sql, params in self.entries)


@pytest.fixture
def statements(pg_engine: Engine) -> Iterator[StatementLog]:
    log = StatementLog()
    event.listen(pg_engine, "before_cursor_execute", log)
    yield log
    event.remove(pg_engine, "before_cursor_execute", log)


@pytest.fixture
def pg_example_tenants(pg_url: str) -> Iterator[list[str]]:
    """Names for tenants an app provisions itself; whatever was created is dropped after."""
    from sqlalchemy import create_engine

    from sa_tenancy.testing import unique_name

    names = [unique_name("ex") for _ in range(4)]
    yield names
    engine = create_engine(pg_url)
    try:
        for name in names:
            if sa_tenancy.tenant_exists(engine, name):
                sa_tenancy.drop_tenant(engine, name)
    finally:
        engine.dispose()


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """A PostgreSQL engine for lifecycle tests (modules with their own ``engine`` override it)."""
    from sqlalchemy import create_engine

    engine = create_engine(pg_url, pool_size=2, max_overflow=4)
    yield engine
    engine.dispose()


@pytest.fixture
def cleanup(engine: Engine) -> Iterator[list[str]]:
    """Schemas named here are dropped after the test, whatever state they are in."""
    from sa_tenancy import _ledger

    names: list[str] = []
    yield names
    with engine.begin() as conn:
        for name in names:
            _ledger.execute_ddl(conn, f"DROP SCHEMA IF EXISTS {_ledger.ident(name)} CASCADE")
            if _ledger.exists(conn):
                _ledger.forget(conn, name)
