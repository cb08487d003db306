"""The embedded default: SQLite, one attached database file per tenant."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import RawSQLRefused
from sa_tenancy import SQLiteFiles
from sa_tenancy import TenancyError
from sa_tenancy import UnknownSchema

from .models import Author
from .models import Book
from .models import Note
from .models import tenant_metadata


@pytest.fixture
def engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/app.db", pool_size=1, max_overflow=0)
    with engine.begin() as conn:  # the main database holds only its own (shared) tables
        conn.exec_driver_sql("CREATE TABLE settings (k text PRIMARY KEY, v text)")
    yield engine
    engine.dispose()


@pytest.fixture
def factory(engine):
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=SQLiteFiles())
    return factory


def test_sqlite_tenants_are_files(engine, factory, tmp_path):
    for name in ("acme", "globex"):
        sa_tenancy.create_tenant(engine, name, metadata=tenant_metadata)
        assert (tmp_path / f"{name}.db").exists()
    assert sa_tenancy.list_tenants(engine) == ["acme", "globex"]
    assert sa_tenancy.tenant_exists(engine, "acme")
    for name in ("acme", "globex"):
        with factory(info={"schema": name}) as session:
            session.add(Author(id=1, name=name, books=[Book(id=1, title=f"{name}-book")]))
            session.add(Note(id=1, body=name))
            session.commit()
    for name in ("acme", "globex", "acme"):  # switching detaches and re-attaches
        with factory(info={"schema": name}) as session:
            assert session.scalars(select(Note.body)).all() == [name]
            assert [b.title for b in session.get(Author, 1).books] == [f"{name}-book"]
    with factory() as session:
        with pytest.raises(OperationalError, match="no such table: notes"):
            session.scalars(select(Note.body)).all()  # no tenant: nothing attached, no map
        session.rollback()
        attached = session.execute(text("PRAGMA database_list")).all()
        assert [r[1] for r in attached if r[1] != "temp"] == ["main"]  # no tenant left attached
    sa_tenancy.drop_tenant(engine, "globex")
    assert sa_tenancy.list_tenants(engine) == ["acme"]


def test_sqlite_only_the_current_tenant_is_attached(engine, factory):
    sa_tenancy.create_tenant(engine, "acme", metadata=tenant_metadata)
    sa_tenancy.create_tenant(engine, "globex", metadata=tenant_metadata)
    with factory(info={"schema": "acme"}) as session:
        session.execute(select(Note)).all()
    with factory(info={"schema": "globex"}) as session:
        session.execute(select(Note)).all()
        names = session.execute(
            text("PRAGMA database_list").execution_options(sa_tenancy_allow_raw_sql=True)
        ).all()
        assert [row[1] for row in names if row[1] != "temp"] == ["main", "globex"]


def test_sqlite_missing_tenant_and_raw_sql(engine, factory):
    with factory(info={"schema": "nobody"}) as session:
        with pytest.raises(UnknownSchema, match="create the tenant"):
            session.execute(select(Note))
    sa_tenancy.create_tenant(engine, "acme", metadata=tenant_metadata)
    with pytest.raises(TenancyError, match="already exists"):
        sa_tenancy.create_tenant(engine, "acme", metadata=tenant_metadata)
    with factory(info={"schema": "acme"}) as session:
        with pytest.raises(RawSQLRefused):
            session.execute(text("SELECT * FROM notes"))


def test_sqlite_create_on_demand(tmp_path):
    engine = create_engine("sqlite://")
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=SQLiteFiles(tmp_path, create=True))
    with factory(info={"schema": "fresh"}) as session:
        session.execute(
            text("CREATE TABLE fresh.t (x int)").execution_options(sa_tenancy_allow_raw_sql=True)
        )
        session.commit()
    assert (tmp_path / "fresh.db").exists()
    with pytest.raises(TenancyError, match="in-memory"):
        sa_tenancy.create_tenant(engine, "x", metadata=tenant_metadata)
    engine.dispose()


def test_sqlite_unknown_tenant_leaves_no_usable_connection(engine, factory):
    from sqlalchemy.exc import PendingRollbackError

    with factory(info={"schema": "nobody"}) as session:
        with pytest.raises(UnknownSchema):
            session.execute(select(Note))
        with pytest.raises(PendingRollbackError):
            session.connection().execute(select(Note.body)).all()
