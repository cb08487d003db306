"""The isolation conformance kit (sa_tenancy.conformance, the ``tenancy_conformance`` fixture).

sa_tenancy's own suite runs the kit against tests/models.py (and SQLModel models with UUID, str
and composite keys, and a ``scoped_session``) with both strategies on every run, and runs it
against deliberately broken setups to prove it reports what leaked. The broken setups are plain
session listeners, not sa_tenancy strategies, so they leak whatever the library's listener does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest
import sqlmodel
from sqlalchemy import Column
from sqlalchemy import ForeignKey
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import Table
from sqlalchemy import Uuid
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import registry
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import TenancyError
from sa_tenancy.conformance import JOIN_MODES
from sa_tenancy.conformance import ConformanceReport
from sa_tenancy.conformance import IsolationFailure
from sa_tenancy.conformance import check_isolation
from sa_tenancy.conformance import default_row

from .models import Author
from .models import Book
from .models import Note
from .models import tenant_metadata

MODELS = [Note, Author, Book]
TWO_SESSIONS = [
    "two sessions, one connection (StaticPool engine)",
    *(
        f"two sessions, one Connection (bind=conn, {outer}, join_transaction_mode={mode!r})"
        for outer in ("no outer transaction", "outer conn.begin()")
        for mode in JOIN_MODES
    ),
]
BOUND_CONNECTION = [
    "a Connection after a session bound to it ended (alone)",
    *(
        "a Connection after a session bound to it ended (outer conn.begin(), "
        f"join_transaction_mode={mode!r})"
        for mode in JOIN_MODES
    ),
]
TEMP_TABLE = "a TEMP table across tenants on one pooled connection"
ALL_SCENARIOS = [
    "after commit",
    "after rollback",
    "after a database error",
    *TWO_SESSIONS,
    *BOUND_CONNECTION,
    TEMP_TABLE,
    "AUTOCOMMIT engine",
    "async sessions",
]
# Scenarios that sa_tenancy passes only with the core changes for two sessions on one
# connection, Connection-bound sessions and TEMP tables (see test_sa_tenancy_passes_its_own_kit).
NEEDS_CORE_CHANGES = ("two sessions, one", "a Connection after", "a TEMP table")


class SMTeam(sqlmodel.SQLModel, table=True):
    __tablename__ = "sm_teams"
    id: uuid.UUID = sqlmodel.Field(default_factory=uuid.uuid4, primary_key=True)
    name: str


class SMMember(sqlmodel.SQLModel, table=True):
    __tablename__ = "sm_members"
    code: str = sqlmodel.Field(primary_key=True, max_length=20)
    team_id: uuid.UUID = sqlmodel.Field(foreign_key="sm_teams.id")
    name: str


class SMShift(sqlmodel.SQLModel, table=True):
    __tablename__ = "sm_shifts"
    region: str = sqlmodel.Field(primary_key=True, max_length=8)
    number: int = sqlmodel.Field(primary_key=True)
    label: str


SQLMODELS = [SMTeam, SMMember, SMShift]


@pytest.fixture
def engine(pg_url):
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


def _report(run) -> ConformanceReport:
    """The kit's report, whether it passed or raised IsolationFailure."""
    try:
        return run()
    except IsolationFailure as failure:
        return failure.report


def _outside_core_changes(report: ConformanceReport) -> list[str]:
    return [f for f in report.failures if not f.startswith(NEEDS_CORE_CHANGES)]


def test_sa_tenancy_passes_its_own_kit(tenancy_conformance, engine, strategy):
    """Positive: the real installation passes every scenario. Needs the core changes that
    refuse two tenants on one connection, restore Connections at session end and discard TEMP
    tables on a tenant change."""
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=strategy)
    report = tenancy_conformance(factory, MODELS)
    assert report.scenarios == ALL_SCENARIOS
    assert report.failures == []
    refused = any("AUTOCOMMIT engine: refused with TenancyError" in note for note in report.notes)
    assert refused is (strategy == "search_path")  # SET LOCAL cannot work under AUTOCOMMIT


def test_sa_tenancy_passes_the_kit_with_sqlmodel_and_a_scoped_session(
    tenancy_conformance, engine, strategy
):
    """Positive, as above, on a real stack: SQLModel's Session and models, a scoped_session."""
    factory = scoped_session(sessionmaker(engine, class_=sqlmodel.Session))
    sa_tenancy.install(factory, strategy=strategy)
    report = tenancy_conformance(factory, SQLMODELS)
    assert report.failures == []
    assert "scoped_session registry" in report.scenarios


def _naive(factory) -> None:
    """Broken on purpose: a session-level SET search_path, never undone."""

    @event.listens_for(factory, "after_begin")
    def set_path(session, transaction, connection: Connection):
        schema = session.info.get("schema")
        if schema:
            connection.exec_driver_sql(f'SET search_path TO "{schema}", pg_temp')


def _sticky_map(factory) -> None:
    """Broken on purpose: the tenant's translate map set on the Connection, never removed."""

    @event.listens_for(factory, "after_begin")
    def set_map(session, transaction, connection: Connection):
        schema = session.info.get("schema")
        if schema:
            connection.execution_options(schema_translate_map={None: schema})


def test_kit_reports_a_session_level_set_search_path(tenancy_conformance, engine):
    """Negative control: every scenario that a leftover search_path can break reports it."""
    factory = sessionmaker(engine)
    _naive(factory)
    with pytest.raises(IsolationFailure) as caught:
        tenancy_conformance(factory, MODELS)
    message = str(caught.value)
    failed = {f.split(": ")[0].split(", the ")[0] for f in caught.value.report.failures}
    assert "after commit: the pooled connection kept search_path" in message
    assert "after a database error: the pooled connection kept search_path" in message
    assert (
        "two sessions, one connection (StaticPool engine), the first session after the second "
        "began: a session for tenant"
    ) in message
    assert set(TWO_SESSIONS) <= failed
    assert "a Connection after a session bound to it ended (alone): the Connection kept " in (
        message
    )
    assert set(BOUND_CONNECTION) <= failed
    assert f"{TEMP_TABLE}: tenant " in message
    assert "a TEMP table made in tenant" in message
    assert "async not checked" not in message


def test_kit_reports_a_translate_map_left_on_the_connection(tenancy_conformance, engine):
    """Negative control: a map that stays on the Connection leaks on a shared Connection."""
    factory = sessionmaker(engine)
    _sticky_map(factory)
    with pytest.raises(IsolationFailure) as caught:
        tenancy_conformance(factory, MODELS)
    failures = caught.value.report.failures
    message = str(caught.value)
    shared = [s for s in TWO_SESSIONS if "bind=conn" in s]
    for scenario in shared:
        assert any(
            f.startswith(f"{scenario}, the first session after the second began: a session for")
            for f in failures
        ), scenario
    assert (
        "a Connection after a session bound to it ended (alone): the Connection still has "
        "schema_translate_map"
    ) in message
    assert (
        "a Connection after a session bound to it ended (alone): a plain select on the "
        "Connection read 'notes' rows marked"
    ) in message
    assert f"{TEMP_TABLE}: tenant " in message
    # Each session of an engine gets a Connection of its own: nothing crosses there.
    assert not any(f.startswith(("after commit", "two sessions, one connection")) for f in failures)


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


def test_kit_reports_uuid_and_str_keyed_rows_in_the_wrong_schema(tenancy_conformance, engine):
    """The decoys in public carry the same UUID and str keys as the tenants' rows, so a
    SQLModel write that misses its tenant collides and is reported."""
    factory = sessionmaker(engine, class_=sqlmodel.Session)
    sa_tenancy.install(factory, strategy=DoesNothing())
    for models, table in ((SQLMODELS, "sm_shifts"), ([SMTeam, SMMember], "sm_teams")):
        with pytest.raises(IsolationFailure) as caught:
            tenancy_conformance(factory, models)
        message = str(caught.value)
        # The first write that collides ends the tenant's seeding: sm_shifts (composite
        # str + int key) comes first in dependency order, then sm_teams (UUID key).
        assert f"could not write row 1 of {table!r} to its empty schema (UniqueViolation)" in (
            message
        )
        assert "read 1 row(s) from 'sm_teams', marked ['public-decoy']" in message


def test_check_isolation_directly(pg_tenants, pg_url):
    a, b = pg_tenants(tenant_metadata, 2)
    factory = sessionmaker(create_engine(pg_url))
    sa_tenancy.install(factory, strategy="translate_map")
    try:
        report = _report(
            lambda: check_isolation(factory, [Note], tenants=(a, b), check_async=False)
        )
        assert report.scenarios == ALL_SCENARIOS[:-1]
        assert _outside_core_changes(report) == []
        with pytest.raises(TenancyError, match="two different"):
            check_isolation(factory, [Note], tenants=(a, a))
    finally:
        factory.kw["bind"].dispose()


def test_rows_are_keyed_by_column_type():
    """UUID, str and composite keys get row 1's value for their type, the same in every
    tenant; a foreign key takes its target's; SQLModel's AutoString can carry the marker."""
    team = default_row(SMTeam, "t_a")
    assert (team.id, team.name) == (uuid.UUID(int=1), "t_a")
    member = default_row(SMMember, "t_a")
    assert (member.code, member.team_id, member.name) == ("1", uuid.UUID(int=1), "t_a")
    shift = default_row(SMShift, "t_a")
    assert (shift.region, shift.number, shift.label) == ("1", 1, "t_a")
    assert vars(default_row(SMShift, "t_b")).keys() == vars(shift).keys()

    metadata = MetaData()
    Table("parents", metadata, Column("id", Uuid(as_uuid=False), primary_key=True))
    children = Table(
        "children",
        metadata,
        Column("id", Uuid(as_uuid=False), primary_key=True),
        Column("parent_id", ForeignKey("parents.id"), nullable=False),
        Column("name", String(3)),
    )

    class Child:
        pass

    registry().map_imperatively(Child, children)
    row = default_row(Child, "t_abcdef")
    one = str(uuid.UUID(int=1))
    assert (row.id, row.parent_id, row.name) == (one, one, "t_a")  # marker cut to String(3)


def test_kit_on_sqlmodel_models_writes_and_reads_every_row(tenancy_conformance, engine, strategy):
    """No false leak from key generation: every scenario that does not depend on the core
    changes passes on SQLModel models with UUID, str and composite keys."""
    factory = sessionmaker(engine, class_=sqlmodel.Session)
    sa_tenancy.install(factory, strategy=strategy)
    report = _report(lambda: tenancy_conformance(factory, SQLMODELS))
    assert _outside_core_changes(report) == []
    assert not any("not checked" in note for note in report.notes)
    assert report.scenarios == ALL_SCENARIOS


def test_kit_takes_a_scoped_session(tenancy_conformance, engine):
    factory = scoped_session(sessionmaker(engine))
    sa_tenancy.install(factory, strategy="search_path")
    report = _report(lambda: tenancy_conformance(factory, MODELS))
    assert _outside_core_changes(report) == []
    assert "scoped_session registry" in report.scenarios
    assert not factory.registry.has()  # the kit removed the sessions it made


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
    assert "FAILED test_app.py::test_leaky" in result.stdout, result.stdout[-3000:]
    assert "IsolationFailure: tenant isolation failed" in result.stdout
    assert "could not write row 1 of 'customers' to its empty schema" in result.stdout
    assert "read 1 row(s) from 'customers', marked ['t_" in result.stdout, result.stdout[-3000:]
    # test_isolated is a positive run of the real installation (see the first test above).
    assert "1 failed, 1 passed" in result.stdout, result.stdout[-3000:]
