"""tenant_session and for_each_tenant against real PostgreSQL, both strategies."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import InvalidSchemaName
from sa_tenancy import TenancyError
from sa_tenancy import UnknownSchema
from sa_tenancy.integrations.workers import TenantJobsFailed
from sa_tenancy.integrations.workers import for_each_tenant
from sa_tenancy.integrations.workers import tenant_session
from sa_tenancy.testing import DECOY
from sa_tenancy.testing import unique_name

from .models import Note
from .models import tenant_metadata

JOBS = 3


@pytest.fixture
def engine(pg_url):
    engine = create_engine(pg_url, pool_size=JOBS, max_overflow=0, pool_timeout=10)
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine, strategy):
    factory = sessionmaker(engine)
    installation = sa_tenancy.install(factory, strategy=strategy, require=True)
    yield factory
    installation.uninstall()


def bodies(factory, schema):
    with tenant_session(factory, schema) as session:
        return sorted(session.scalars(select(Note.body)))


def public_bodies(engine):
    with engine.connect() as conn:
        return conn.execute(text("SELECT body FROM public.notes")).scalars().all()


def add_own_note(session, schema):
    session.add(Note(body=schema))
    session.flush()
    return session.scalar(select(func.count()).select_from(Note))


# -- tenant_session ----------------------------------------------------------------------------


def test_tenant_session_isolation_and_rollback(factory, two_tenants, engine):
    a, b = two_tenants
    with tenant_session(factory, a) as session:
        session.add(Note(id=1, body="a"))
        session.commit()
        session.add(Note(id=2, body="a-uncommitted"))
        session.flush()
    with tenant_session(factory, b) as session:
        session.add(Note(id=1, body="b"))
        session.commit()
    assert bodies(factory, a) == ["a"]
    assert bodies(factory, b) == ["b"]
    assert engine.pool.checkedout() == 0


def test_tenant_session_rolls_back_on_exception(factory, two_tenants, engine):
    a, _ = two_tenants
    with pytest.raises(RuntimeError), tenant_session(factory, a) as session:
        session.add(Note(id=1, body="doomed"))
        session.flush()
        raise RuntimeError("job failed")
    assert bodies(factory, a) == []
    assert engine.pool.checkedout() == 0


def test_tenant_session_refuses_bad_names_before_sql(factory, engine):
    sent = []
    event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    names: list[Any] = ['a"; DROP SCHEMA public CASCADE; --', "public", "", None]
    for name in names:
        with pytest.raises(InvalidSchemaName), tenant_session(factory, name) as session:
            session.execute(select(Note.id))
    assert sent == []


def test_tenant_session_unknown_tenant_never_falls_back(factory, two_tenants, engine):
    with pytest.raises(Exception) as caught, tenant_session(factory, unique_name()) as session:
        session.scalars(select(Note.body)).all()
    assert "does not exist" in str(caught.value)
    assert public_bodies(engine) == [DECOY]


def test_tenant_session_needs_an_installation(engine):
    with (
        pytest.raises(TenancyError, match="not installed"),
        tenant_session(sessionmaker(engine), "acme"),
    ):
        pass


# -- for_each_tenant ---------------------------------------------------------------------------


def test_for_each_tenant_runs_every_tenant_in_its_own_session(factory, pg_tenants, engine):
    tenants = pg_tenants(tenant_metadata, 5)
    out = io.StringIO()
    run = for_each_tenant(factory, add_own_note, tenants=tenants, jobs=JOBS, progress=out)
    assert run.ok and run.failures == {}
    assert run.results == dict.fromkeys(tenants, 1)
    assert list(run.results) == tenants  # tenant order, whatever the completion order
    for schema in tenants:
        assert bodies(factory, schema) == [schema]  # committed, and only its own
    assert public_bodies(engine) == [DECOY]
    assert out.getvalue().splitlines()[-1].startswith("tenants 5/5, 0 failed, ")
    assert engine.pool.checkedout() == 0


def test_for_each_tenant_bounded_parallelism(factory, pg_tenants):
    tenants = pg_tenants(tenant_metadata, 6)
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def slow(session, schema):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            session.execute(select(Note.id)).all()
            time.sleep(0.1)
        finally:
            with lock:
                running[0] -= 1
        return schema

    run = for_each_tenant(factory, slow, tenants=tenants, jobs=2, progress=False)
    assert run.results == {t: t for t in tenants}
    assert peak[0] == 2


def test_for_each_tenant_failures_are_per_tenant(factory, pg_tenants, engine):
    good, bad = pg_tenants(tenant_metadata, 2)
    ghost = unique_name()

    def job(session, schema):
        count = add_own_note(session, schema)
        if schema == bad:
            raise ValueError("bad tenant data")
        return count

    out = io.StringIO()
    run = for_each_tenant(
        factory, job, tenants=[good, "Not-Valid", ghost, bad, good], jobs=JOBS, progress=out
    )
    assert run.tenants == [good, "Not-Valid", ghost, bad]  # duplicates visited once
    assert run.results == {good: 1}
    assert list(run.failures) == ["Not-Valid", ghost, bad]
    assert isinstance(run.failures["Not-Valid"], InvalidSchemaName)
    assert isinstance(run.failures[ghost], UnknownSchema)  # no fallback to the default schema
    assert isinstance(run.failures[bad], ValueError)
    assert bodies(factory, good) == [good]
    assert bodies(factory, bad) == []  # rolled back
    assert public_bodies(engine) == [DECOY]
    assert not run.ok
    report = run.report()
    assert report.startswith("1 of 4 tenants succeeded, 3 failed")
    assert (
        f"  {ghost}: UnknownSchema" in report and f"  {bad}: ValueError: bad tenant data" in report
    )
    assert out.getvalue().splitlines()[-1].startswith("tenants 4/4, 3 failed, ")
    with pytest.raises(TenantJobsFailed, match="3 failed") as caught:
        run.raise_for_failures()
    assert caught.value.run is run
    assert engine.pool.checkedout() == 0


def test_for_each_tenant_lists_the_tenants_by_default(factory, engine):
    made = [unique_name() for _ in range(2)]
    for schema in made:
        sa_tenancy.create_tenant(engine, schema, metadata=tenant_metadata)
    try:
        run = for_each_tenant(factory, add_own_note, jobs=2, progress=False)
        assert set(made) <= set(run.tenants)
        assert {run.results[s] for s in made} == {1}
    finally:
        for schema in made:
            sa_tenancy.drop_tenant(engine, schema)


def test_for_each_tenant_progress_goes_to_stderr_by_default(factory, two_tenants, capsys):
    for_each_tenant(factory, add_own_note, tenants=two_tenants, jobs=1)
    assert capsys.readouterr().err.splitlines()[-1].startswith("tenants 2/2, 0 failed, ")


def test_for_each_tenant_rejects_bad_arguments(factory, engine):
    with pytest.raises(TenancyError, match="jobs"):
        for_each_tenant(factory, add_own_note, tenants=["a"], jobs=0)
    with pytest.raises(TenancyError, match="single str"):
        for_each_tenant(factory, add_own_note, tenants="acme")
    with pytest.raises(TenancyError, match="not installed"):
        for_each_tenant(sessionmaker(engine), add_own_note, tenants=["a"])
    with pytest.raises(TenancyError, match="cannot list the tenants"):
        unbound = sessionmaker()
        installation = sa_tenancy.install(unbound)
        try:
            for_each_tenant(unbound, add_own_note)
        finally:
            installation.uninstall()


def test_progress_line_is_rewritten_in_place_on_a_terminal(factory, two_tenants):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    for_each_tenant(factory, add_own_note, tenants=two_tenants, jobs=1, progress=out)
    assert out.getvalue().startswith("\rtenants ")
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_integrations_package_imports_no_framework():
    code = (
        "import sys, sa_tenancy, sa_tenancy.integrations, sa_tenancy.integrations.workers\n"
        "loaded = {'fastapi', 'starlette', 'flask', 'django', 'ninja'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
