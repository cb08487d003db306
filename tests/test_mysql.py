"""translate_map on MariaDB/MySQL, where a tenant schema is a database."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy import make_url
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import InvalidSchemaName
from sa_tenancy import RawSQLRefused
from sa_tenancy import TenancyError
from sa_tenancy.testing import DECOY
from sa_tenancy.testing import unique_name

from .models import Author
from .models import Book
from .models import Note
from .models import tenant_metadata


@pytest.fixture
def server_engine(mysql_url):
    """An engine with no default database: what untranslated SQL would read does not exist."""
    engine = create_engine(make_url(mysql_url)._replace(database=None), pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture
def MySession(server_engine):
    factory = sessionmaker(server_engine)
    installation = sa_tenancy.install(factory, strategy="translate_map")
    yield factory
    installation.uninstall()


def test_mysql_isolation_and_relationships(MySession, mysql_tenants):
    a, b = mysql_tenants(tenant_metadata, 2)
    for schema in (a, b):
        with MySession(info={"schema": schema}) as session:
            session.add(Author(id=1, name=schema, books=[Book(id=1, title=f"{schema}-book")]))
            session.add(Note(id=1, body=schema))
            session.commit()
    with MySession(info={"schema": b}) as session:
        author = session.get(Author, 1)
        assert author.name == b and [bk.title for bk in author.books] == [f"{b}-book"]
        with session.begin_nested():
            session.add(Note(id=2, body="b-savepoint"))
        session.commit()
        assert sorted(session.scalars(select(Note.body))) == sorted([b, "b-savepoint"])
    with MySession(info={"schema": a}) as session:
        assert session.scalars(select(Note.body)).all() == [a]
    with MySession() as session:  # no tenant: no map, and no default database to read
        with pytest.raises(DBAPIError, match="(?i)no database selected"):
            session.scalars(select(Note.body)).all()


def test_mysql_no_leak_to_next_checkout(MySession, server_engine, mysql_tenants):
    (a,) = mysql_tenants(tenant_metadata, 1)
    with MySession(info={"schema": a}) as session:
        session.add(Note(id=1, body="a"))
        session.commit()
    with server_engine.connect() as conn:
        assert "schema_translate_map" not in conn.get_execution_options()
        assert conn.exec_driver_sql("SELECT DATABASE()").scalar() is None


def test_mysql_default_database_with_tenant_tables_is_refused(mysql_engine, mysql_tenants):
    """The URL's database holds tenant-named tables: untranslated SQL would read them."""
    (a,) = mysql_tenants(tenant_metadata, 1)  # also puts decoy tables in the URL's database
    factory = sessionmaker(mysql_engine)
    sa_tenancy.install(factory, strategy="translate_map")
    with factory(info={"schema": a}) as session:
        with pytest.raises(TenancyError, match="default database holds a table"):
            session.execute(select(Note)).all()
    with mysql_engine.connect() as conn:  # nothing was written anywhere
        assert conn.execute(select(Note.body)).scalars().all() == [DECOY]


def test_mysql_refuses_raw_sql_and_search_path(MySession, mysql_engine, mysql_tenants):
    (a,) = mysql_tenants(tenant_metadata, 1)
    with MySession(info={"schema": a}) as session:
        with pytest.raises(RawSQLRefused):
            session.execute(text("SELECT body FROM notes"))
    factory = sessionmaker(mysql_engine)
    sa_tenancy.install(factory, strategy="search_path")
    with factory(info={"schema": a}) as session:
        with pytest.raises(TenancyError, match="needs PostgreSQL"):
            session.execute(select(Note))


def test_mysql_missing_database_fails_loudly(MySession, mysql_tenants):
    mysql_tenants(tenant_metadata, 1)
    with MySession(info={"schema": unique_name("missing")}) as session:
        with pytest.raises(DBAPIError, match="(?i)unknown database|doesn't exist"):
            session.execute(select(Note)).all()


def test_mysql_hostile_names_refused(MySession):
    with MySession(info={"schema": "x`; DROP DATABASE test; --"}) as session:
        with pytest.raises(InvalidSchemaName):
            session.execute(select(Note))
