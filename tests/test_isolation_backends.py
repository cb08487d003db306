"""Isolation at the edges, per backend: SQL that SQLAlchemy does not translate, names that are
the default schema, SQLite attachments, translate-map cache keys and server encodings.

Under ``translate_map`` SQLAlchemy rewrites only what it compiles from ``Table`` metadata. These
tests send every kind of statement it does *not* rewrite and check that none reads or writes
the default schema (PostgreSQL ``public``, MariaDB's URL database, SQLite ``main``): each must
fail with the database's own "does not exist" error (or ``RawSQLRefused``).
"""

from __future__ import annotations

import pytest
from sqlalchemy import DDL
from sqlalchemy import column
from sqlalchemy import create_engine
from sqlalchemy import insert
from sqlalchemy import literal_column
from sqlalchemy import make_url
from sqlalchemy import select
from sqlalchemy import table
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

import sa_tenancy
from sa_tenancy import InvalidSchemaName
from sa_tenancy import NamePolicy
from sa_tenancy import SchemaSwitchError
from sa_tenancy import SQLiteFiles
from sa_tenancy import TenancyError
from sa_tenancy.testing import DECOY
from sa_tenancy.testing import unique_name

from .models import Note
from .models import tenant_metadata

RAW = {sa_tenancy.ALLOW_RAW_SQL: True}
notes = table("notes", column("id"), column("body"))  # lightweight: never translated


def fragments():
    """Statements with parts SQLAlchemy's translate map does not reach."""
    return {
        "text-columns": select(
            text("SELECT body FROM notes").columns(column("body")).subquery().c.body
        ),
        "from_statement": select(Note).from_statement(text("SELECT id, body FROM notes")),
        "select_from-text": select(literal_column("body")).select_from(text("notes")),
        "literal-subquery": select(literal_column("(SELECT max(body) FROM notes)").label("body")),
        "lightweight-table": select(notes.c.body),
        "map-off-per-statement": select(Note.body).execution_options(schema_translate_map=None),
        "insert-lightweight": insert(notes).values(id=99, body="leak"),
    }


def assert_tenant_only(session, statement, tenant):
    """The statement fails, or touches only ``tenant``'s own rows: never the default schema's."""
    try:
        result = session.execute(statement)
        rows = result.all() if getattr(result, "returns_rows", True) else []
        session.commit()  # a write that went astray must persist to be seen
    except (DBAPIError, TenancyError):
        session.rollback()
        return
    bodies = {getattr(row[0], "body", row[0]) for row in rows}
    assert bodies <= {tenant, None}, f"untranslated statement returned {bodies!r}"


def seed_tenant(factory, tenant):
    with factory(info={"schema": tenant}) as session:
        session.add(Note(id=1, body=tenant))
        session.commit()


@pytest.mark.parametrize("name", list(fragments()))
def test_pg_untranslated_sql_never_reaches_public(pg_engine, two_tenants, name):
    a, _ = two_tenants
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="translate_map", allow_raw_sql=True)
    seed_tenant(factory, a)
    with factory(info={"schema": a}) as session:
        assert_tenant_only(session, fragments()[name], a)
    with pg_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT body FROM public.notes").scalars().all() == [DECOY]


def test_pg_untranslated_ddl_and_replaced_map_fail_closed(pg_engine, two_tenants):
    a, _ = two_tenants
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="translate_map", allow_raw_sql=True)
    with factory(info={"schema": a}) as session:
        with pytest.raises(DBAPIError, match="no schema has been selected to create in"):
            session.connection().execute(DDL("CREATE TABLE planted (x int)"))
        session.rollback()
        connection = session.connection()
        connection.execution_options(schema_translate_map={})  # the caller replaces the map
        with pytest.raises(DBAPIError, match="does not exist"):
            connection.execute(select(Note.body)).all()
    with pg_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT to_regclass('public.planted')").scalar() is None


@pytest.fixture
def server_engine(mysql_url):
    engine = create_engine(make_url(mysql_url)._replace(database=None), pool_size=1)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("default_db", [False, True], ids=["no-default-db", "default-db"])
@pytest.mark.parametrize("name", list(fragments()))
def test_mysql_untranslated_sql_reaches_no_database(
    server_engine, mysql_engine, mysql_tenants, name, default_db
):
    """Without a default database nothing is there to read; one with tenant tables is refused."""
    (a,) = mysql_tenants(tenant_metadata, 1)  # also decoy tables in the URL's database
    factory = sessionmaker(mysql_engine if default_db else server_engine)
    sa_tenancy.install(factory, strategy="translate_map", allow_raw_sql=True)
    seed = sessionmaker(server_engine)
    sa_tenancy.install(seed, strategy="translate_map")
    seed_tenant(seed, a)
    with factory(info={"schema": a}) as session:
        assert_tenant_only(session, fragments()[name], a)
    with mysql_engine.connect() as conn:
        assert conn.execute(select(Note.body)).scalars().all() == [DECOY]


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/app.db", pool_size=1, max_overflow=0)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE settings (k text PRIMARY KEY, v text)")
    sa_tenancy.create_tenant(engine, "acme", metadata=tenant_metadata)
    sa_tenancy.create_tenant(engine, "globex", metadata=tenant_metadata)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("decoys", [False, True], ids=["clean-main", "tenant-tables-in-main"])
@pytest.mark.parametrize("name", list(fragments()))
def test_sqlite_untranslated_sql_never_reaches_main(sqlite_engine, name, decoys):
    factory = sessionmaker(sqlite_engine)
    sa_tenancy.install(factory, strategy=SQLiteFiles(allow_raw_sql=True))
    seed_tenant(factory, "acme")
    seed_tenant(factory, "globex")
    if decoys:  # tenant-named tables in the main file: refused, never read
        tenant_metadata.create_all(sqlite_engine)
        with sqlite_engine.begin() as conn:
            conn.execute(insert(Note).values(id=1, body=DECOY))
    # Only the current tenant's file is attached, and main holds no tenant table: an
    # unqualified name resolves in the tenant's own file or nowhere.
    with factory(info={"schema": "acme"}) as session:
        assert_tenant_only(session, fragments()[name], "acme")


def test_sqlite_main_with_tenant_tables_is_refused(sqlite_engine):
    tenant_metadata.create_all(sqlite_engine)  # tenant-named tables in the main file
    with sqlite_engine.begin() as conn:
        conn.execute(insert(Note).values(id=1, body="main"))
    factory = sessionmaker(sqlite_engine)
    sa_tenancy.install(factory, strategy="auto")
    with factory(info={"schema": "acme"}) as session:
        with pytest.raises(sa_tenancy.TenancyError, match="main database holds a table"):
            session.execute(select(Note.body)).all()


# -- SQLite: nothing attached outside a tenant session ------------------------------------------


def test_sqlite_plain_checkout_after_a_tenant_session(sqlite_engine):
    factory = sessionmaker(sqlite_engine)
    sa_tenancy.install(factory, strategy="auto")
    with factory(info={"schema": "acme"}) as session:
        session.add(Note(id=1, body="acme"))
        session.execute(text("CREATE TEMP TABLE secret (s text)").execution_options(**RAW))
        session.commit()
    with sqlite_engine.connect() as conn:  # the same pooled connection (pool_size=1)
        names = [row[1] for row in conn.exec_driver_sql("PRAGMA database_list")]
        assert names == ["main"] or names == ["main", "temp"]
        assert conn.exec_driver_sql("SELECT name FROM temp.sqlite_master").all() == []
        with pytest.raises(DBAPIError, match="no such table"):
            conn.exec_driver_sql('SELECT body FROM "acme".notes').all()


def test_sqlite_two_sessions_on_one_connection(sqlite_engine):
    factory = sessionmaker(sqlite_engine)
    sa_tenancy.install(factory, strategy="auto")
    for tenant in ("acme", "globex"):
        with factory(info={"schema": tenant}) as session:
            session.add(Note(id=1, body=tenant))
            session.commit()
    with sqlite_engine.connect() as conn:
        bound = sessionmaker(bind=conn)
        sa_tenancy.install(bound, strategy="auto")
        first = bound(info={"schema": "acme"})
        assert first.scalars(select(Note.body)).all() == ["acme"]
        second = bound(info={"schema": "globex"})
        with pytest.raises(SchemaSwitchError, match="already serves tenant"):
            second.scalars(select(Note.body)).all()
        assert first.scalars(select(Note.body)).all() == ["acme"]
        second.close()
        first.close()


def test_mysql_two_sessions_on_one_connection(server_engine, mysql_tenants):
    a, b = mysql_tenants(tenant_metadata, 2)
    factory = sessionmaker(server_engine)
    sa_tenancy.install(factory, strategy="translate_map")
    for tenant in (a, b):
        with factory(info={"schema": tenant}) as session:
            session.add(Note(id=1, body=tenant))
            session.commit()
    with server_engine.connect() as conn:
        bound = sessionmaker(bind=conn)
        sa_tenancy.install(bound, strategy="translate_map")
        first = bound(info={"schema": a})
        assert first.scalars(select(Note.body)).all() == [a]
        second = bound(info={"schema": b})
        with pytest.raises(SchemaSwitchError, match="already serves tenant"):
            second.scalars(select(Note.body)).all()
        assert first.scalars(select(Note.body)).all() == [a]
        second.close()
        first.close()
        assert conn.get_execution_options().get("schema_translate_map") is None


# -- names that are the default or a system schema of the backend -------------------------------


@pytest.mark.parametrize("name", ["mysql", "sys", "performance_schema", "SYS", "Mysql"])
def test_mysql_system_databases_are_never_tenants(server_engine, name):
    factory = sessionmaker(server_engine)
    sa_tenancy.install(factory, strategy="translate_map", names=NamePolicy(r".*"))
    with factory(info={"schema": name}) as session:
        with pytest.raises(InvalidSchemaName, match="system database"):
            session.execute(select(Note)).all()


def test_mysql_url_database_is_never_a_tenant(mysql_engine):
    factory = sessionmaker(mysql_engine)
    sa_tenancy.install(factory, strategy="translate_map", names=NamePolicy(r".*"))
    for name in (mysql_engine.url.database, mysql_engine.url.database.upper()):
        with factory(info={"schema": name}) as session:
            with pytest.raises(InvalidSchemaName, match="default database"):
                session.execute(select(Note)).all()


@pytest.mark.parametrize(
    "name", ["main", "temp", "MAIN", "app", "../acme", "a/b", "/tmp/x", "..", "a\\b"]
)
def test_sqlite_default_and_path_names_are_never_tenants(sqlite_engine, tmp_path, name):
    (tmp_path / "x.db").write_bytes(b"")
    factory = sessionmaker(sqlite_engine)
    sa_tenancy.install(factory, strategy=SQLiteFiles(create=True), names=NamePolicy(r".*"))
    with factory(info={"schema": name}) as session:
        with pytest.raises(InvalidSchemaName):
            session.execute(select(Note)).all()
    assert not (tmp_path.parent / "acme.db").exists()


# -- translate maps lacking None elsewhere on the engine ----------------------------------------


def test_translate_map_immune_to_other_maps_on_the_engine(pg_engine, two_tenants):
    a, _ = two_tenants
    mapped = pg_engine.execution_options(schema_translate_map={"elsewhere": "elsewhere"})
    factory = sessionmaker(mapped)
    sa_tenancy.install(factory, strategy="translate_map")
    with factory() as session:  # no tenant: compiles with the engine's map, without None
        assert session.scalars(select(Note.body)).all() == [DECOY]
    with mapped.connect() as conn:
        assert conn.execute(select(Note.body)).scalars().all() == [DECOY]
    for _ in range(2):
        with factory(info={"schema": a}) as session:
            assert session.scalars(select(Note.body)).all() == []
        with factory() as session:
            assert session.scalars(select(Note.body)).all() == [DECOY]


# -- the 63-byte limit in the server's encoding ---------------------------------------------------


@pytest.fixture
def euc_jp_url(pg_url):
    """A database in EUC_JP. On a Citus coordinator it is a plain PostgreSQL database there
    (no citus extension, not propagated to the workers): the test is about encodings only."""
    name = unique_name("eucjp")
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(
            f"CREATE DATABASE {name} ENCODING 'EUC_JP' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    url = make_url(pg_url).set(database=name)
    yield url.update_query_dict({"client_encoding": "utf8"})
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


@pytest.mark.parametrize("strategy_name", ["search_path", "translate_map"])
def test_names_counted_in_the_server_encoding(euc_jp_url, strategy_name):
    long_a, long_b = "é" * 31, "é" * 30  # 62 and 60 bytes in UTF-8, 93 and 90 in EUC_JP
    engine = create_engine(euc_jp_url, poolclass=StaticPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{long_a}"')  # the server truncates it
        conn.exec_driver_sql(f'CREATE TABLE "{long_a}".notes (id int PRIMARY KEY, body text)')
        conn.exec_driver_sql(f"INSERT INTO \"{long_a}\".notes VALUES (1, 'a')")
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=strategy_name, names=NamePolicy(r".*"))
    for name in (long_a, long_b):
        with factory(info={"schema": name}) as session:
            with pytest.raises(InvalidSchemaName, match="server's encoding"):
                session.scalars(select(Note.body)).all()
    engine.dispose()
