"""The two strategies on real PostgreSQL: what each applies, and that nothing outlives the
transaction on a pooled connection (invariant 2)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import RawSQLRefused
from sa_tenancy import TenancyError
from sa_tenancy import UnknownSchema
from sa_tenancy.testing import DECOY
from sa_tenancy.testing import server_default_search_path
from sa_tenancy.testing import unique_name

from .models import Note
from .models import tenant_metadata

DEFAULT_PATH = '"$user", public'


def backend_pid(engine):
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar()


def assert_clean_checkout(engine, pid=None):
    """The next checkout of the (single) pooled connection carries no tenant state."""
    with engine.connect() as conn:
        assert conn.execute(text("SHOW search_path")).scalar() == DEFAULT_PATH
        assert "schema_translate_map" not in conn.get_execution_options()
        assert conn.execute(select(Note.body)).scalars().all() == [DECOY]
        if pid is not None:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == pid


# -- invariant 2: no pool leakage ---------------------------------------------------------------


def test_no_leak_after_commit(SessionLocal, pg_engine, two_tenants):
    pid = backend_pid(pg_engine)
    with SessionLocal(info={"schema": two_tenants[0]}) as session:
        session.add(Note(id=1, body="x"))
        session.commit()
    assert_clean_checkout(pg_engine, pid)


def test_no_leak_after_rollback(SessionLocal, pg_engine, two_tenants):
    pid = backend_pid(pg_engine)
    with SessionLocal(info={"schema": two_tenants[0]}) as session:
        session.execute(select(Note)).all()
        session.rollback()
    assert_clean_checkout(pg_engine, pid)


def test_no_leak_after_database_error(SessionLocal, pg_engine, two_tenants):
    pid = backend_pid(pg_engine)
    with SessionLocal(info={"schema": two_tenants[0]}) as session:
        session.add_all([Note(id=1, body="x")])
        session.commit()
        session.add(Note(id=1, body="duplicate"))
        with pytest.raises(IntegrityError):
            session.commit()
    assert_clean_checkout(pg_engine, pid)


def test_no_leak_after_exception_in_user_code(SessionLocal, pg_engine, two_tenants):
    pid = backend_pid(pg_engine)
    with pytest.raises(ZeroDivisionError):
        with SessionLocal(info={"schema": two_tenants[0]}) as session:
            session.execute(select(Note)).all()
            1 / 0  # noqa: B018
    assert_clean_checkout(pg_engine, pid)


def test_no_leak_after_savepoint(SessionLocal, pg_engine, two_tenants):
    pid = backend_pid(pg_engine)
    with SessionLocal(info={"schema": two_tenants[0]}) as session:
        with session.begin_nested():
            session.add(Note(id=1, body="x"))
        session.commit()
    assert_clean_checkout(pg_engine, pid)


def test_no_leak_after_invalidated_connection(SessionLocal, pg_engine, two_tenants):
    with SessionLocal(info={"schema": two_tenants[0]}) as session:
        session.execute(select(Note)).all()
        session.connection().invalidate()
    assert_clean_checkout(pg_engine)


def test_no_leak_after_backend_killed(SessionLocal, pg_engine, pg_url, two_tenants):
    killer = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with SessionLocal(info={"schema": two_tenants[0]}) as session:
        pid = session.execute(
            text("SELECT pg_backend_pid()").execution_options(sa_tenancy_allow_raw_sql=True)
        ).scalar()
        with killer.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(CAST(:pid AS integer))"), {"pid": pid})
        with pytest.raises(DBAPIError):
            session.execute(select(Note)).all()
    killer.dispose()
    assert_clean_checkout(pg_engine)


# -- search_path ----------------------------------------------------------------------------------


def same_path(quoted):
    """``quoted`` as set by set_config(), and as SET LOCAL shows it (quotes only where needed)."""
    return {quoted, quoted.replace('"', "")}


def test_search_path_inside_the_transaction(pg_engine, two_tenants):
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path")
    with factory(info={"schema": two_tenants[0]}) as session:
        path = session.execute(text("SHOW search_path")).scalar()
        assert path in same_path(f'"{two_tenants[0]}", pg_temp')
        # raw SQL follows the tenant too
        session.execute(text("INSERT INTO notes (id, body) VALUES (1, 'raw')"))
        session.commit()
    with pg_engine.connect() as conn:
        assert conn.execute(text(f"SELECT body FROM {two_tenants[0]}.notes")).scalar() == "raw"


def test_search_path_refuses_a_missing_schema(pg_engine, two_tenants, statements):
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path")
    with factory(info={"schema": unique_name("missing")}) as session:
        with pytest.raises(UnknownSchema, match="does not exist"):
            session.execute(select(Note)).all()
        with pytest.raises(TenancyError):
            session.execute(select(Note)).all()
    assert not statements.contains("FROM notes")


def test_search_path_refuses_a_schema_without_usage(pg_url, pg_engine, two_tenants):
    role = unique_name("role")
    with pg_engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
    engine = create_engine(pg_url.replace("postgres@", f"{role}@"))
    try:
        factory = sessionmaker(engine)
        sa_tenancy.install(factory, strategy="search_path")
        with factory(info={"schema": two_tenants[0]}) as session:
            with pytest.raises(UnknownSchema, match="USAGE"):
                session.execute(select(Note)).all()
    finally:
        engine.dispose()
        with pg_engine.begin() as conn:
            conn.execute(text(f"DROP ROLE {role}"))


def test_search_path_refuses_autocommit(pg_url, two_tenants):
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy="search_path")
    with factory(info={"schema": two_tenants[0]}) as session:
        with pytest.raises(TenancyError, match="AUTOCOMMIT"):
            session.execute(select(Note)).all()
    engine.dispose()


def test_search_path_refuses_autocommit_set_per_session(pg_engine, two_tenants):
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path")
    with factory(info={"schema": two_tenants[0]}) as session:
        with pytest.raises(TenancyError, match="AUTOCOMMIT"):
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def test_search_path_needs_postgresql(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/x.db")
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy="search_path")
    with factory(info={"schema": "acme"}) as session:
        with pytest.raises(TenancyError, match="needs PostgreSQL"):
            session.execute(text("SELECT 1"))
    engine.dispose()


def test_temp_table_cannot_shadow_the_tenant_table(pg_engine, two_tenants):
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path")
    with pg_engine.connect() as conn:  # the one pooled connection gets a temp table "notes"
        conn.execute(text("CREATE TEMP TABLE notes (id int primary key, body text)"))
        conn.execute(text("INSERT INTO notes VALUES (1, 'temp-shadow')"))
        conn.commit()
    seed_body = f"{two_tenants[0]}-row"
    with factory(info={"schema": two_tenants[0]}) as session:
        session.add(Note(id=1, body=seed_body))
        session.commit()
        assert session.scalars(select(Note.body)).all() == [seed_body]


def test_extra_schemas_come_after_the_tenant(pg_engine, two_tenants):
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path", extra_schemas=["public"])
    with factory(info={"schema": two_tenants[0]}) as session:
        path = session.execute(text("SHOW search_path")).scalar()
        assert path in same_path(f'"{two_tenants[0]}", "public", pg_temp')
        assert session.scalars(select(Note.body)).all() == []  # tenant first, not public


# -- translate_map --------------------------------------------------------------------------------


@pytest.fixture
def TranslateSession(pg_engine):
    factory = sessionmaker(pg_engine)
    installation = sa_tenancy.install(factory, strategy="translate_map")
    yield factory
    installation.uninstall()


def test_translate_map_refuses_raw_sql(TranslateSession, pg_engine, two_tenants):
    insert = "INSERT INTO notes (id, body) VALUES ({}, 'leaked')"
    with TranslateSession(info={"schema": two_tenants[0]}) as session:
        with pytest.raises(RawSQLRefused, match="search_path strategy"):
            session.execute(text(insert.format(101)))
        session.rollback()
        with pytest.raises(RawSQLRefused):
            session.connection().exec_driver_sql(insert.format(102))
        session.rollback()
        with pytest.raises(RawSQLRefused):
            session.connection().execute(text(insert.format(103)))
        session.commit()
    # Nothing ran: had it run, the rows would be in public.notes, not in the tenant's table.
    with pg_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT body FROM notes").scalars().all() == [DECOY]


def test_translate_map_raw_sql_opt_in(pg_engine, two_tenants):
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="translate_map")
    qualified = text(f"SELECT count(*) FROM {two_tenants[0]}.notes")
    with factory(info={"schema": two_tenants[0]}) as session:
        allowed = qualified.execution_options(sa_tenancy_allow_raw_sql=True)
        assert session.execute(allowed).scalar() == 0
        assert (
            session.execute(qualified, execution_options={sa_tenancy.ALLOW_RAW_SQL: True}).scalar()
            == 0
        )
    sa_tenancy.uninstall(factory)
    sa_tenancy.install(factory, strategy="translate_map", allow_raw_sql=True)
    with factory(info={"schema": two_tenants[0]}) as session:
        # allowed, and NOT translated: the unqualified name resolves nowhere (the transaction's
        # search_path names no schema), never in public.
        with pytest.raises(ProgrammingError, match='relation "notes" does not exist'):
            session.execute(text("SELECT body FROM notes"))


def test_raw_sql_in_sessions_without_tenant_is_untouched(TranslateSession, pg_engine, two_tenants):
    with TranslateSession() as session:
        assert session.execute(text("SELECT body FROM notes")).scalars().all() == [DECOY]
    with pg_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT body FROM notes").scalars().all() == [DECOY]


def test_translate_map_works_under_autocommit(pg_url, two_tenants):
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy="translate_map")
    with factory(info={"schema": two_tenants[1]}) as session:
        session.add(Note(id=1, body="autocommit"))
        session.commit()
    with factory(info={"schema": two_tenants[1]}) as session:
        assert session.scalars(select(Note.body)).all() == ["autocommit"]
    with factory(info={"schema": two_tenants[0]}) as session:
        assert session.scalars(select(Note.body)).all() == []
    assert_clean_checkout(engine)
    engine.dispose()


def test_translate_map_keeps_shared_tables_and_extra_placeholders(pg_engine, pg_tenants):
    from sqlalchemy import Column
    from sqlalchemy import Integer
    from sqlalchemy import MetaData
    from sqlalchemy import String
    from sqlalchemy import Table

    shared = unique_name("shared")
    metadata = MetaData()
    plans = Table(
        "plans",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(20)),
        schema=shared,
    )
    items = Table(
        "items",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(20)),
        schema="per_tenant",
    )
    (tenant,) = pg_tenants(None, 1, decoy=False)
    with pg_engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {shared}"))
        plans.create(conn)
        conn.execute(plans.insert().values(id=1, name="gold"))
        items.create(conn.execution_options(schema_translate_map={"per_tenant": tenant}))
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy=sa_tenancy.TranslateMap(placeholders=(None, "per_tenant")))
    try:
        with factory(info={"schema": tenant}) as session:
            session.execute(items.insert().values(id=1, name="widget"))
            assert session.execute(select(plans.c.name)).scalar() == "gold"
            session.commit()
        with pg_engine.connect() as conn:
            assert conn.execute(text(f"SELECT name FROM {tenant}.items")).scalar() == "widget"
    finally:
        with pg_engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {shared} CASCADE"))


def test_translate_map_on_a_session_bound_to_a_connection(pg_engine, two_tenants):
    """A Connection that outlives the session gets its own translate map back."""
    with pg_engine.connect() as conn:
        factory = sessionmaker(bind=conn, join_transaction_mode="create_savepoint")
        sa_tenancy.install(factory, strategy="translate_map")
        with factory(info={"schema": two_tenants[0]}) as session:
            session.add(Note(id=1, body="bound"))
            session.flush()
            assert session.scalars(select(Note.body)).all() == ["bound"]
        with factory() as session:  # no tenant: must not inherit the previous one's map
            assert session.scalars(select(Note.body)).all() == [DECOY]
        assert (
            "schema_translate_map" not in conn.get_execution_options()
            or conn.get_execution_options()["schema_translate_map"] is None
        )
        conn.rollback()


def test_tenant_tables_are_created_in_the_tenant_schema(pg_tenants, pg_engine):
    (tenant,) = pg_tenants(tenant_metadata, 1)
    with pg_engine.connect() as conn:
        tables = (
            conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY 1"),
                {"s": tenant},
            )
            .scalars()
            .all()
        )
    assert tables == ["authors", "books", "notes"]
    assert server_default_search_path(pg_engine) == DEFAULT_PATH


# -- search_path: no extra round trip (psycopg) ---------------------------------------------------


class ProtocolTrace:
    """libpq's protocol trace of one psycopg connection: what went over the wire."""

    def __init__(self, driver_connection, tmp_path):
        from psycopg import pq

        self.pgconn = driver_connection.pgconn
        self.path = tmp_path / f"trace-{id(self)}.txt"
        self.file = open(self.path, "w")  # noqa: SIM115 - closed in stop()
        self.pgconn.trace(self.file.fileno())
        self.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)

    def stop(self):
        self.pgconn.untrace()
        self.file.close()
        lines = self.path.read_text().splitlines()
        self.round_trips = sum(line.split("\t")[2:3] == ["ReadyForQuery"] for line in lines)
        self.sent = [line.split("\t")[2].split()[0] for line in lines if "\tF\t" in line]
        return self


def traced_transaction(engine, factory, info, work, tmp_path):
    with engine.connect() as conn:  # the single pooled connection the session will get
        trace = ProtocolTrace(conn.connection.driver_connection, tmp_path)
    try:
        with factory(info=info) as session:
            work(session)
    finally:
        trace.stop()
    return trace


def read_and_write(session):
    session.add(Note(id=1, body="one"))
    session.commit()
    assert session.scalars(select(Note.body)).all() == ["one"]
    session.rollback()


@pytest.mark.parametrize("strategy", ["search_path", "translate_map"])
def test_a_tenant_transaction_takes_as_many_round_trips_as_a_plain_one(
    pg_url, two_tenants, strategy, tmp_path
):
    plain_engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    tenant_engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    with plain_engine.begin() as conn:
        conn.execute(text("DELETE FROM notes"))  # the decoy; the plain session writes public
    plain = sessionmaker(plain_engine)
    tenants = sessionmaker(tenant_engine)
    sa_tenancy.install(tenants, strategy=strategy)
    try:
        for engine in (plain_engine, tenant_engine):  # connect (and initialize) untraced
            with engine.connect():
                pass
        base = traced_transaction(plain_engine, plain, {}, read_and_write, tmp_path)
        tenant = traced_transaction(
            tenant_engine, tenants, {"schema": two_tenants[0]}, read_and_write, tmp_path
        )
        # psycopg: BEGIN, INSERT, COMMIT, BEGIN, SELECT, ROLLBACK; the tenant's path and its
        # check travel with each BEGIN (search_path) or inside each statement (translate_map)
        assert base.round_trips == 6
        assert tenant.round_trips == base.round_trips
        assert tenant.sent.count("Query") == base.sent.count("Query")
        with tenant_engine.connect() as conn:
            assert (
                conn.execute(text(f'SELECT body FROM "{two_tenants[0]}".notes')).scalar() == "one"
            )
    finally:
        plain_engine.dispose()
        tenant_engine.dispose()


def test_async_psycopg_tenant_transaction_adds_no_round_trip(pg_url, two_tenants, tmp_path):
    pytest.importorskip("greenlet", reason="async support needs sa_tenancy[asyncio] (greenlet)")
    import asyncio

    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.ext.asyncio import create_async_engine

    from sa_tenancy.testing import url_for_driver

    async def traced(factory, engine, info):
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            trace = ProtocolTrace(raw.driver_connection, tmp_path)
        try:
            async with factory(info=info) as session:
                rows = (await session.scalars(select(Note.body))).all()
        finally:
            trace.stop()
        return trace, rows

    async def main():
        url = url_for_driver(pg_url, "psycopg_async")
        plain_engine = create_async_engine(url, pool_size=1, max_overflow=0)
        tenant_engine = create_async_engine(url, pool_size=1, max_overflow=0)
        tenants = async_sessionmaker(tenant_engine)
        sa_tenancy.install(tenants, strategy="search_path")
        try:
            base, rows = await traced(async_sessionmaker(plain_engine), plain_engine, {})
            assert rows == [DECOY]
            tenant, rows = await traced(tenants, tenant_engine, {"schema": two_tenants[0]})
            assert rows == []
            assert base.round_trips == tenant.round_trips == 3  # BEGIN, SELECT, ROLLBACK
        finally:
            await plain_engine.dispose()
            await tenant_engine.dispose()

    asyncio.run(main())


def test_search_path_keeps_the_transaction_options(pg_url, two_tenants):
    """BEGIN is ours, not psycopg's: it must carry the same isolation and access mode."""
    engine = create_engine(
        pg_url, isolation_level="SERIALIZABLE", pool_size=1, max_overflow=0
    ).execution_options(postgresql_readonly=True, postgresql_deferrable=True)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy="search_path")
    try:
        with factory(info={"schema": two_tenants[0]}) as session:
            settings = session.execute(
                text(
                    "SELECT current_setting('transaction_isolation'), "
                    "current_setting('transaction_read_only'), "
                    "current_setting('transaction_deferrable'), current_schema()"
                )
            ).one()
            assert tuple(settings) == ("serializable", "on", "on", two_tenants[0])
            with pytest.raises(DBAPIError, match="read-only transaction"):
                session.add(Note(id=1, body="x"))
                session.flush()
    finally:
        engine.dispose()


def test_search_path_inside_an_open_transaction(pg_engine, two_tenants):
    """A session joining a transaction the server already has open sets the path in it."""
    with pg_engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # the server transaction is open now
        factory = sessionmaker(bind=conn, join_transaction_mode="create_savepoint")
        sa_tenancy.install(factory, strategy="search_path")
        with factory(info={"schema": two_tenants[1]}) as session:
            session.add(Note(id=1, body="joined"))
            session.flush()
            assert session.execute(text("SELECT current_schema()")).scalar() == two_tenants[1]
            assert session.scalars(select(Note.body)).all() == ["joined"]
        with factory(info={"schema": unique_name("missing")}) as session:
            with pytest.raises(UnknownSchema, match="does not exist"):
                session.execute(select(Note)).all()
        conn.rollback()
    assert server_default_search_path(pg_engine) == DEFAULT_PATH


@pytest.mark.parametrize(
    "name",
    ["Mixed Case", 'dq"uote', "sq'uote", "back\\slash", "semi;colon -- x", "ünïcødé"],
)
def test_search_path_with_names_that_need_quoting(pg_engine, pg_tenants, name):
    """Names a widened policy allows reach the server as themselves, never as SQL."""
    (tenant,) = pg_tenants(tenant_metadata, names=[unique_name(name)])
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path", names=lambda n: True)
    with factory(info={"schema": tenant}) as session:
        session.add(Note(id=1, body=tenant))
        session.commit()
        assert session.execute(text("SELECT current_schema()")).scalar() == tenant
        assert session.execute(text("SELECT body FROM notes")).scalar() == tenant
    with pg_engine.connect() as conn:
        quoted = conn.dialect.identifier_preparer.quote_identifier(tenant)
        assert conn.exec_driver_sql(f"SELECT body FROM {quoted}.notes").scalar() == tenant
        assert conn.exec_driver_sql("SELECT body FROM notes").scalars().all() == [DECOY]
    assert server_default_search_path(pg_engine) == DEFAULT_PATH


def test_search_path_when_the_idle_backend_died(SessionLocal, pg_engine, pg_url, two_tenants):
    """The first message of the transaction fails: a DBAPIError, and the pool recovers."""
    pid = backend_pid(pg_engine)
    killer = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with killer.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(CAST(:pid AS integer))"), {"pid": pid})
    killer.dispose()
    with SessionLocal(info={"schema": two_tenants[0]}) as session:
        with pytest.raises(DBAPIError) as caught:
            session.execute(select(Note)).all()
        assert caught.value.connection_invalidated
    with SessionLocal(info={"schema": two_tenants[0]}) as session:
        assert session.scalars(select(Note.body)).all() == []
    assert_clean_checkout(pg_engine)


@pytest.fixture
def percent_schemas(pg_engine):
    """Schemas '<x>%' and '<x>%%', each with a notes row naming it (quoted without doubling)."""
    base = unique_name("pct")
    names = [base + "%", base + "%%"]
    with pg_engine.begin() as conn:
        for name in names:
            sql = name.replace("%", "%%")  # driver SQL text goes through pyformat
            conn.exec_driver_sql(f'CREATE SCHEMA "{sql}"')
            conn.exec_driver_sql(f'CREATE TABLE "{sql}".notes (id int primary key, body text)')
            conn.execute(text(f'INSERT INTO "{name}".notes VALUES (1, :b)'), {"b": name})
    yield names
    with pg_engine.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f'DROP SCHEMA "{name.replace("%", "%%")}" CASCADE')


def test_search_path_with_a_percent_in_the_name(pg_engine, percent_schemas):
    """'%' is a character of the name: tenant 'x%' must not read schema 'x%%'."""
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path", names=lambda n: True)
    for name in percent_schemas:
        with factory(info={"schema": name}) as session:  # psycopg: with BEGIN
            assert session.scalars(select(Note.body)).all() == [name]
    with pg_engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # a transaction already open: the set_config path
        bound = sessionmaker(bind=conn, join_transaction_mode="create_savepoint")
        sa_tenancy.install(bound, strategy="search_path", names=lambda n: True)
        for name in percent_schemas:
            with bound(info={"schema": name}) as session:
                assert session.scalars(select(Note.body)).all() == [name]
        conn.rollback()


def test_search_path_refuses_dollar_user(pg_engine, two_tenants, statements):
    """On a search_path '$user', quoted or not, means the role's schema: never a tenant."""
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path", names=lambda n: True)
    with factory(info={"schema": "$user"}) as session:
        with pytest.raises(sa_tenancy.InvalidSchemaName, match="current role"):
            session.scalars(select(Note.body)).all()
        with pytest.raises(TenancyError):
            session.scalars(select(Note.body)).all()
    assert not statements.contains("$user")
    assert_clean_checkout(pg_engine)
