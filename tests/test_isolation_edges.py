"""Isolation at the edges: shared connections, mutated ``session.info``, Connection-bound
sessions, temporary tables, listener order and ``extra_schemas``, on PostgreSQL.

Each test names the class of leak it closes; every one of them read or wrote another tenant's
rows (or the default schema's) before the mechanism it tests existed.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

import sa_tenancy
from sa_tenancy import SchemaSwitchError
from sa_tenancy import TenancyError
from sa_tenancy import UnknownSchema
from sa_tenancy.testing import DECOY
from sa_tenancy.testing import server_default_search_path
from sa_tenancy.testing import unique_name

from .models import Note

JOIN_MODES = ["conditional_savepoint", "create_savepoint", "rollback_only", "control_fully"]
RAW = {sa_tenancy.ALLOW_RAW_SQL: True}


def seed(engine, tenants):
    """Note 1 in every tenant, its body the tenant's name."""
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy="search_path")
    for tenant in tenants:
        with factory(info={"schema": tenant}) as session:
            session.add(Note(id=1, body=tenant))
            session.commit()


def bodies(engine, tenant):
    with engine.connect() as conn:
        quoted = conn.dialect.identifier_preparer.quote(tenant)
        return conn.exec_driver_sql(f"SELECT body FROM {quoted}.notes ORDER BY id").scalars().all()


# -- one connection serves one tenant transaction at a time ---------------------------------


@pytest.mark.parametrize("outer", [False, True], ids=["no-outer", "outer-begin"])
@pytest.mark.parametrize("mode", JOIN_MODES)
def test_two_sessions_on_one_connection(pg_engine, two_tenants, strategy, mode, outer):
    a, b = two_tenants
    seed(pg_engine, two_tenants)
    with pg_engine.connect() as conn:
        if outer:
            conn.begin()
        factory = sessionmaker(bind=conn, join_transaction_mode=mode)
        sa_tenancy.install(factory, strategy=strategy)
        first = factory(info={"schema": a})
        assert first.scalars(select(Note.body)).all() == [a]
        second = factory(info={"schema": b})
        with pytest.raises(SchemaSwitchError, match="already serves tenant"):
            second.scalars(select(Note.body)).all()
        with pytest.raises(TenancyError):
            second.scalars(select(Note.body)).all()  # the refused session stays refused
        loose = factory()  # a session without a tenant never inherits one
        with pytest.raises(SchemaSwitchError, match="already serves tenant"):
            loose.execute(select(Note.body)).all()
        same = factory(info={"schema": a})  # the same tenant may share the connection
        assert same.scalars(select(Note.body)).all() == [a]
        # The first session still reads and writes its own tenant only.
        assert first.scalars(select(Note.body)).all() == [a]
        first.execute(update(Note).values(body=f"{a}-edited"))
        assert first.scalars(select(Note.body)).all() == [f"{a}-edited"]
        other = text(f'SELECT body FROM "{b}".notes').execution_options(**RAW)
        assert first.execute(other).scalars().all() == [b]
        for session in (same, loose, second, first):  # savepoints end in reverse order
            session.close()
    assert bodies(pg_engine, b) == [b]


def test_static_pool_two_sessions(pg_url, two_tenants, strategy):
    a, b = two_tenants
    engine = create_engine(pg_url, poolclass=StaticPool)
    seed(engine, two_tenants)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=strategy)
    with factory(info={"schema": a}) as first, factory(info={"schema": b}) as second:
        assert first.scalars(select(Note.body)).all() == [a]
        with pytest.raises(SchemaSwitchError, match="already serves tenant"):
            second.scalars(select(Note.body)).all()
        # Its own Connection object cannot be invalidated (it is the first session's DBAPI
        # connection): every statement on it is refused instead, Core included.
        with pytest.raises(SchemaSwitchError):
            second.connection().execute(select(Note.body)).all()
        assert first.scalars(select(Note.body)).all() == [a]
    with factory(info={"schema": b}) as session:  # once the first has ended: fine
        assert session.scalars(select(Note.body)).all() == [b]
    engine.dispose()


def test_static_pool_reset_under_an_open_session(pg_url, two_tenants, strategy):
    """Returning any other Connection to a StaticPool rolls the shared connection back."""
    a, b = two_tenants
    engine = create_engine(pg_url, poolclass=StaticPool)
    seed(engine, two_tenants)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=strategy)
    with factory(info={"schema": b}) as session:
        assert session.scalars(select(Note.body)).all() == [b]
        with engine.connect() as plain:  # plain code; its close resets the DBAPI connection
            plain.exec_driver_sql("SELECT 1")
        with pytest.raises(SchemaSwitchError, match="rolled the transaction back"):
            session.scalars(select(Note.body)).all()  # would begin anew, without the tenant
        refused = factory(info={"schema": a})  # a refused session's rollback resets it too
        with pytest.raises(SchemaSwitchError):
            refused.scalars(select(Note.body)).all()
        refused.close()
    with factory(info={"schema": b}) as session:
        assert session.scalars(select(Note.body)).all() == [b]
    engine.dispose()


def test_async_sessions_on_one_connection(pg_url, two_tenants, strategy):
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.ext.asyncio import create_async_engine

    a, b = two_tenants
    seed(create_engine(pg_url, poolclass=StaticPool), two_tenants)

    async def main():
        engine = create_async_engine(pg_url, pool_size=1, max_overflow=0)
        async with engine.connect() as conn:
            factory = async_sessionmaker(bind=conn, class_=AsyncSession)
            sa_tenancy.install(factory, strategy=strategy)
            first = factory(info={"schema": a})
            assert (await first.scalars(select(Note.body))).all() == [a]
            second = factory(info={"schema": b})
            with pytest.raises(SchemaSwitchError, match="already serves tenant"):
                await second.scalars(select(Note.body))
            assert (await first.scalars(select(Note.body))).all() == [a]
            await second.close()
            await first.close()
        await engine.dispose()

    asyncio.run(main())


# -- the library's bookkeeping is not user-writable -------------------------------------------

MUTATIONS = {
    "setitem": lambda info, new: info.__setitem__("schema", new),
    "clear": lambda info, new: info.clear(),
    "del": lambda info, new: info.__delitem__("schema"),
    "pop": lambda info, new: info.pop("schema"),
    "popitem": lambda info, new: info.popitem(),
    "update": lambda info, new: info.update(schema=new),
    "ior": lambda info, new: info.__ior__({"schema": new}),
}


@pytest.mark.parametrize("mutation", [*MUTATIONS, "assign", "assign-empty"])
def test_info_mutations_mid_transaction_are_refused(SessionLocal, two_tenants, mutation):
    a, b = two_tenants
    with SessionLocal(info={"schema": a}) as session:
        session.execute(select(Note)).all()
        with pytest.raises(SchemaSwitchError, match="middle of a transaction"):
            if mutation == "assign":
                session.info = {"schema": b}
            elif mutation == "assign-empty":
                session.info = {}
            else:
                MUTATIONS[mutation](session.info, b)
        assert session.info["schema"] == a
        session.add(Note(id=7, body=a))
        session.commit()
    assert bodies(SessionLocal.kw["bind"], a) == [a]
    assert bodies(SessionLocal.kw["bind"], b) == []


@pytest.mark.parametrize("mutation", ["setitem", "clear", "assign", "update"])
def test_cached_objects_never_served_to_another_tenant(pg_engine, two_tenants, strategy, mutation):
    a, b = two_tenants
    seed(pg_engine, two_tenants)
    factory = sessionmaker(pg_engine, expire_on_commit=False)
    sa_tenancy.install(factory, strategy=strategy)
    with factory(info={"schema": a}) as session:
        note = session.get(Note, 1)
        session.commit()  # the object stays loaded (expire_on_commit=False)
        with pytest.raises(SchemaSwitchError, match="identity map"):
            if mutation == "assign":
                session.info = {"schema": b}
            elif mutation == "clear":
                session.info.clear()
            else:
                MUTATIONS[mutation](session.info, b)
        assert note is not None and note.body == a
        assert session.get(Note, 1) is note  # still a's session, still a's object
        session.expunge_all()
        session.info["schema"] = b
        fetched = session.get(Note, 1)
        assert fetched is not None and fetched.body == b


def test_pending_objects_keep_their_tenant(SessionLocal, two_tenants):
    a, b = two_tenants
    with SessionLocal(info={"schema": a}) as session:
        session.add(Note(id=3, body=a))
        with pytest.raises(SchemaSwitchError, match="pending"):
            session.info["schema"] = b
        session.commit()
    assert bodies(SessionLocal.kw["bind"], b) == []


# -- a Connection outliving its session is given back as it was --------------------------------


@pytest.mark.parametrize("mode", JOIN_MODES)
def test_connection_bound_session_gives_the_connection_back(pg_engine, two_tenants, strategy, mode):
    a, _ = two_tenants
    seed(pg_engine, [a])
    default = server_default_search_path(pg_engine)
    with pg_engine.connect() as conn:
        outer = conn.begin()
        factory = sessionmaker(bind=conn, join_transaction_mode=mode)
        sa_tenancy.install(factory, strategy=strategy)
        with factory(info={"schema": a}) as session:
            assert session.scalars(select(Note.body)).all() == [a]
        if conn.in_transaction():
            assert conn.exec_driver_sql("SHOW search_path").scalar() == default
            assert conn.get_execution_options().get("sa_tenancy_schema") is None
            assert conn.execute(select(Note.body)).scalars().all() == [DECOY]
            with factory() as session:  # a session without a tenant inherits nothing
                assert session.scalars(select(Note.body)).all() == [DECOY]
            outer.rollback()
        assert conn.exec_driver_sql("SHOW search_path").scalar() == default
        assert conn.execute(select(Note.body)).scalars().all() == [DECOY]
        options = conn.get_execution_options()
        assert not (options.get("schema_translate_map") or {}).get(None)


def test_connection_path_restored_to_what_the_outer_transaction_had(pg_engine, two_tenants):
    a, _ = two_tenants
    with pg_engine.connect() as conn:
        conn.begin()
        conn.exec_driver_sql("SET LOCAL search_path TO public, pg_catalog")
        factory = sessionmaker(bind=conn, join_transaction_mode="create_savepoint")
        sa_tenancy.install(factory, strategy="search_path")
        with factory(info={"schema": a}) as session:
            session.execute(select(Note)).all()
            session.commit()  # releases the savepoint: the tenant's path would stay
        assert conn.exec_driver_sql("SHOW search_path").scalar() == "public, pg_catalog"
        conn.rollback()


# -- temporary objects never cross tenants ------------------------------------------------------


def test_temp_tables_never_cross_tenants(pg_url, two_tenants, strategy):
    a, b = two_tenants
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=strategy)

    def run(tenant, *sqls, commit=True):
        with factory(info={"schema": tenant}) as session:
            rows = None
            for sql in sqls:
                result = session.execute(text(sql).execution_options(**RAW))
                rows = result.all() if result.returns_rows else None  # type: ignore[attr-defined]
            if commit:
                session.commit()
            return rows

    pid = "SELECT pg_backend_pid()"
    backend = run(a, pid)[0][0]
    # Inside one transaction a temporary table works as usual.
    make = "CREATE TEMP TABLE secret ON COMMIT PRESERVE ROWS AS SELECT 'a-secret' AS s"
    assert run(a, make, "SELECT s FROM pg_temp.secret") == [("a-secret",)]
    run(a, "CREATE TEMP TABLE notes ON COMMIT PRESERVE ROWS AS SELECT 'a-temp' AS body")
    for tenant in (b, a):  # another tenant never sees it, nor a later transaction of the same
        with pytest.raises(ProgrammingError, match="does not exist"):
            run(tenant, "SELECT s FROM pg_temp.secret")
    # A rollback brings dropped objects back on the server; the next tenant still sees none.
    run(b, pid, commit=False)
    with pytest.raises(ProgrammingError, match="does not exist"):
        run(b, "SELECT body FROM pg_temp.notes")
    # Temporary tables made by plain code on the same pooled connection: not seen either.
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE plain_tmp ON COMMIT PRESERVE ROWS AS SELECT 1 AS x")
        conn.commit()
    with pytest.raises(ProgrammingError, match="does not exist"):  # psycopg: every begin
        run(a, "SELECT x FROM pg_temp.plain_tmp")
    assert run(b, pid)[0][0] == backend  # the same pooled server connection throughout
    engine.dispose()


# -- sa_tenancy's after_begin runs first --------------------------------------------------------


def test_after_begin_listeners_see_the_tenant(pg_engine, two_tenants, strategy):
    a, _ = two_tenants
    seed(pg_engine, [a])
    factory = sessionmaker(pg_engine)
    seen = []

    def early(session, transaction, connection):  # registered before install()
        seen.append(("class", connection.execute(select(Note.body)).scalars().all()))

    def global_listener(session, transaction, connection):
        if session.info.get("probe"):
            seen.append(("global", connection.execute(select(Note.body)).scalars().all()))

    event.listen(factory.class_, "after_begin", early)
    event.listen(Session, "after_begin", global_listener)
    try:
        sa_tenancy.install(factory, strategy=strategy)
        with factory(info={"schema": a, "probe": True}) as session:
            session.execute(select(Note)).all()
    finally:
        event.remove(Session, "after_begin", global_listener)
    assert sorted(seen) == [("class", [a]), ("global", [a])]


# -- extra_schemas: a failed tenant reaches nothing ---------------------------------------------


def test_unknown_tenant_with_extra_schemas_reaches_nothing(pg_engine, two_tenants):
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path", extra_schemas=["public"])
    with factory(info={"schema": unique_name("nope")}) as session:
        with pytest.raises(UnknownSchema):
            session.execute(select(Note)).all()
        connection = session.connection()
        assert connection.exec_driver_sql("SELECT current_schemas(false)").scalar() == []
        with pytest.raises(ProgrammingError, match="does not exist"):
            connection.execute(select(Note.body)).all()


def test_tenant_dropped_or_renamed_under_an_open_session(pg_engine, two_tenants):
    """Without extra schemas the open transaction fails closed, and so does the next one."""
    a, b = two_tenants
    seed(pg_engine, two_tenants)
    factory = sessionmaker(pg_engine)
    sa_tenancy.install(factory, strategy="search_path")
    other = create_engine(pg_engine.url)
    with factory(info={"schema": a}) as session:
        assert session.scalars(select(Note.body)).all() == [a]
        session.commit()
        renamed = unique_name("renamed")
        with other.begin() as conn:
            conn.exec_driver_sql(f'ALTER SCHEMA "{a}" RENAME TO "{renamed}"')
        # The connection checked the tenant when it first served it: its path now names a
        # schema that does not exist, so nothing resolves (a new connection: UnknownSchema).
        with pytest.raises(ProgrammingError, match="does not exist"):
            session.scalars(select(Note.body)).all()
        session.rollback()
    with create_engine(pg_engine.url).connect() as fresh:
        fresh_factory = sessionmaker(fresh)
        sa_tenancy.install(fresh_factory, strategy="search_path")
        with fresh_factory(info={"schema": a}) as session:
            with pytest.raises(UnknownSchema):
                session.scalars(select(Note.body)).all()
    with factory(info={"schema": a}) as session:
        with other.begin() as conn:
            conn.exec_driver_sql(f'ALTER SCHEMA "{renamed}" RENAME TO "{a}"')
    with factory(info={"schema": b}) as session:
        assert session.scalars(select(Note.body)).all() == [b]
        with other.begin() as conn:
            conn.exec_driver_sql(f'ALTER SCHEMA "{b}" RENAME TO "{b}_x"')
        # Mid-transaction: the path names a schema that no longer exists: nothing resolves.
        with pytest.raises(ProgrammingError, match="does not exist"):
            session.execute(select(Note.body).where(Note.id > 0)).all()
        session.rollback()
    with other.begin() as conn:
        conn.exec_driver_sql(f'ALTER SCHEMA "{b}_x" RENAME TO "{b}"')
    other.dispose()
