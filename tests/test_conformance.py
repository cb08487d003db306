"""The isolation conformance kit (sa_tenancy.conformance, the ``tenancy_conformance`` fixture).

sa_tenancy's own suite runs the kit against tests/models.py with both strategies on every run,
and runs it against deliberately broken setups to prove it reports what leaked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import TenancyError
from sa_tenancy.conformance import IsolationFailure
from sa_tenancy.conformance import check_isolation

from .models import Author
from .models import Book
from .models import Note
from .models import tenant_metadata

MODELS = [Note, Author, Book]
ALL_SCENARIOS = [
    "after commit",
    "after rollback",
    "after a database error",
    "AUTOCOMMIT engine",
    "async sessions",
]


@pytest.fixture
def engine(pg_url):
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


def test_sa_tenancy_passes_its_own_kit(tenancy_conformance, engine, strategy):
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=strategy)
    report = tenancy_conformance(factory, MODELS)
    assert report.scenarios == ALL_SCENARIOS
    assert report.failures == []
    refused = any("refused with TenancyError" in note for note in report.notes)
    assert refused is (strategy == "search_path")  # SET LOCAL cannot work under AUTOCOMMIT


def _naive(factory) -> None:
    @event.listens_for(factory, "after_begin")
    def set_path(session, transaction, connection: Connection):
        schema = session.info.get("schema")
        if schema:
            connection.exec_driver_sql(f'SET search_path TO "{schema}"')


def test_kit_reports_a_session_level_set_search_path(tenancy_conformance, engine):
    factory = sessionmaker(engine)
    _naive(factory)
    with pytest.raises(IsolationFailure) as caught:
        tenancy_conformance(factory, MODELS)
    message = str(caught.value)
    assert "after commit: the pooled connection kept search_path" in message
    assert "after a database error: the pooled connection kept search_path" in message
    assert "async not checked" not in message


class DoesNothing:
    """A broken custom strategy: it forgets to apply the tenant."""

    def apply(self, connection, schema):
        pass


def test_kit_reports_rows_read_from_the_wrong_schema(tenancy_conformance, engine):
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=DoesNothing())
    with pytest.raises(IsolationFailure) as caught:
        tenancy_conformance(factory, MODELS)
    message = str(caught.value)
    assert "could not write row 1 of 'authors' to its empty schema (UniqueViolation)" in message
    assert "read 1 row(s) from 'notes', marked ['public-decoy']" in message
    assert "async sessions: a session for tenant" in message


def test_check_isolation_directly(pg_tenants, pg_url):
    a, b = pg_tenants(tenant_metadata, 2)
    factory = sessionmaker(create_engine(pg_url))
    sa_tenancy.install(factory, strategy="translate_map")
    try:
        report = check_isolation(factory, [Note], tenants=(a, b), check_async=False)
        assert report.scenarios == ALL_SCENARIOS[:4]
        with pytest.raises(TenancyError, match="two different"):
            check_isolation(factory, [Note], tenants=(a, a))
    finally:
        factory.kw["bind"].dispose()


def test_users_enable_the_plugin_with_p(tmp_path, pg_url):
    """A user's project: its own models and factory, the kit enabled with -p."""
    (tmp_path / "test_app.py").write_text(
        textwrap.dedent(
            """
            import sa_tenancy
            from sqlalchemy import String, create_engine
            from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

            class Base(DeclarativeBase):
                pass

            class Customer(Base):
                __tablename__ = "customers"
                id: Mapped[int] = mapped_column(primary_key=True)
                name: Mapped[str] = mapped_column(String(80))
                credit: Mapped[int]

            def test_isolated(tenancy_conformance, pg_url):
                SessionLocal = sessionmaker(create_engine(pg_url))
                sa_tenancy.install(SessionLocal)
                tenancy_conformance(SessionLocal, [Customer])

            def test_leaky(tenancy_conformance, pg_url):
                SessionLocal = sessionmaker(create_engine(pg_url))
                tenancy_conformance(SessionLocal, [Customer])
            """
        )
    )
    env = {**os.environ, "SA_TENANCY_TEST_PG_URL": pg_url}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "sa_tenancy.testing",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 failed, 1 passed" in result.stdout, result.stdout[-3000:]
    assert "test_leaky" in result.stdout
    assert "IsolationFailure: tenant isolation failed" in result.stdout
    assert "could not write row 1 of 'customers' to its empty schema" in result.stdout
    assert "read 1 row(s) from 'customers', marked ['t_" in result.stdout, result.stdout[-3000:]
