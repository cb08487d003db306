"""AsyncSession behaves like Session (invariant 5): psycopg 3 async and asyncpg."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import SchemaRequired
from sa_tenancy import SchemaSwitchError
from sa_tenancy import TenancyError
from sa_tenancy import UnknownSchema
from sa_tenancy.testing import DECOY
from sa_tenancy.testing import unique_name
from sa_tenancy.testing import url_for_driver

from .models import Note

pytest.importorskip("greenlet", reason="async support needs sa_tenancy[asyncio] (greenlet)")

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.asyncio import async_scoped_session
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine

DRIVERS = ["psycopg", "asyncpg"]


@pytest.fixture(params=DRIVERS)
def async_url(request, pg_url):
    return url_for_driver(pg_url, request.param)


def run(coro):
    return asyncio.run(coro)


async def _bodies(factory, schema):
    async with factory(info={"schema": schema}) as session:
        return sorted((await session.scalars(select(Note.body))).all())


def test_async_isolation_and_no_leak(async_url, two_tenants, strategy):
    a, b = two_tenants

    async def main():
        engine = create_async_engine(async_url, pool_size=1, max_overflow=0)
        factory = async_sessionmaker(engine)
        sa_tenancy.install(factory, strategy=strategy)
        async with factory(info={"schema": a}) as session:
            session.add(Note(id=1, body="a"))
            await session.commit()
        async with factory(info={"schema": b}) as session:
            session.add(Note(id=1, body="b"))
            await session.commit()
            async with session.begin_nested():
                session.add(Note(id=2, body="b-savepoint"))
            await session.commit()
        assert await _bodies(factory, a) == ["a"]
        assert await _bodies(factory, b) == ["b", "b-savepoint"]
        async with factory(info={"schema": a}) as session:
            note = await session.get(Note, 1)
            assert note is not None
            note.body = "a2"
            await session.rollback()
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW search_path"))).scalar() == '"$user", public'
            assert (await conn.execute(select(Note.body))).scalars().all() == [DECOY]
        await engine.dispose()

    run(main())


def test_async_tasks_alternating_tenants(async_url, two_tenants, strategy):
    a, b = two_tenants

    async def main():
        engine = create_async_engine(async_url, pool_size=3, max_overflow=0)
        factory = async_sessionmaker(engine)
        sa_tenancy.install(factory, strategy=strategy)
        for schema in (a, b):
            async with factory(info={"schema": schema}) as session:
                session.add_all([Note(id=i, body=schema) for i in range(1, 4)])
                await session.commit()
        wrong = []

        async def worker(offset):
            for i in range(30):
                schema = (a, b)[(i + offset) % 2]
                async with factory(info={"schema": schema}) as session:
                    seen = set((await session.scalars(select(Note.body))).all())
                    await asyncio.sleep(0)
                    if seen != {schema}:
                        wrong.append((schema, seen))

        await asyncio.gather(*(worker(n) for n in range(12)))
        await engine.dispose()
        return wrong

    assert run(main()) == []


def test_async_fail_closed(async_url, two_tenants):
    async def main():
        engine = create_async_engine(async_url, pool_size=1, max_overflow=0)
        factory = async_sessionmaker(engine)
        sa_tenancy.install(factory, require=True)
        async with factory() as session:
            with pytest.raises(SchemaRequired):
                await session.execute(select(Note))
        async with factory(info={"schema": unique_name("missing")}) as session:
            with pytest.raises(UnknownSchema):
                await session.execute(select(Note))
        async with factory(info={"schema": two_tenants[0]}) as session:
            await session.execute(select(Note))
            with pytest.raises(SchemaSwitchError, match="middle of a transaction"):
                session.info["schema"] = two_tenants[1]
            assert session.info["schema"] == two_tenants[0]
        auto = create_async_engine(async_url, isolation_level="AUTOCOMMIT")
        auto_factory = async_sessionmaker(auto)
        sa_tenancy.install(auto_factory, strategy="search_path")
        async with auto_factory(info={"schema": two_tenants[0]}) as session:
            with pytest.raises(TenancyError, match="AUTOCOMMIT"):
                await session.execute(select(Note))
        await auto.dispose()
        await engine.dispose()

    run(main())


def test_async_install_is_scoped_and_reversible(async_url, two_tenants):
    async def main():
        engine = create_async_engine(async_url, pool_size=1, max_overflow=0)
        tenant_factory = async_sessionmaker(engine)
        plain_factory = async_sessionmaker(engine)
        installation = sa_tenancy.install(tenant_factory)
        # The listener is on a private sync class, never on the global Session.
        assert installation.session_class is not Session
        assert tenant_factory.kw["sync_session_class"] is installation.session_class
        assert "sync_session_class" not in plain_factory.kw
        async with plain_factory(info={"schema": two_tenants[0]}) as session:
            assert (await session.scalars(select(Note.body))).all() == [DECOY]
        async with tenant_factory(info={"schema": two_tenants[0]}) as session:
            assert (await session.scalars(select(Note.body))).all() == []
        with pytest.raises(TenancyError, match="already installed"):
            sa_tenancy.install(tenant_factory)
        assert sa_tenancy.uninstall(tenant_factory)
        assert "sync_session_class" not in tenant_factory.kw
        async with tenant_factory(info={"schema": two_tenants[0]}) as session:
            assert (await session.scalars(select(Note.body))).all() == [DECOY]

        registry = async_scoped_session(async_sessionmaker(engine), scopefunc=asyncio.current_task)
        sa_tenancy.install(registry, strategy="translate_map")
        session = registry(info={"schema": two_tenants[0]})
        assert (await session.scalars(select(Note.body))).all() == []
        await registry.remove()

        class TenantAsyncSession(AsyncSession):
            pass

        sa_tenancy.install(TenantAsyncSession)
        assert AsyncSession.sync_session_class is Session
        async with TenantAsyncSession(engine, info={"schema": two_tenants[0]}) as session:
            assert (await session.scalars(select(Note.body))).all() == []
        sa_tenancy.uninstall(TenantAsyncSession)
        assert TenantAsyncSession.sync_session_class is Session
        with pytest.raises(TenancyError, match="every async session"):
            sa_tenancy.install(AsyncSession)
        await engine.dispose()

    run(main())


def test_sync_sessionmaker_unaffected_by_async_install(pg_engine, async_url, two_tenants):
    async def main():
        engine = create_async_engine(async_url)
        sa_tenancy.install(async_sessionmaker(engine))
        await engine.dispose()

    run(main())
    with sessionmaker(pg_engine)(info={"schema": two_tenants[0]}) as session:
        assert session.scalars(select(Note.body)).all() == [DECOY]


@pytest.mark.parametrize("ending", ["db_error", "savepoint_rollback", "invalidated", "exception"])
def test_async_no_leak_after_each_ending(async_url, two_tenants, strategy, ending):
    """Invariant 2 for AsyncSession: the next checkout sees the server default."""
    from sqlalchemy.exc import IntegrityError

    async def main():
        engine = create_async_engine(async_url, pool_size=1, max_overflow=0)
        factory = async_sessionmaker(engine)
        sa_tenancy.install(factory, strategy=strategy)
        try:
            async with factory(info={"schema": two_tenants[0]}) as session:
                session.add(Note(id=1, body="x"))
                await session.commit()
                if ending == "db_error":
                    session.add(Note(id=1, body="duplicate"))
                    with pytest.raises(IntegrityError):
                        await session.commit()
                elif ending == "savepoint_rollback":
                    nested = await session.begin_nested()
                    session.add(Note(id=2, body="y"))
                    await session.flush()
                    await nested.rollback()
                    await session.commit()
                elif ending == "invalidated":
                    await session.execute(select(Note))
                    await (await session.connection()).invalidate()
                else:
                    await session.execute(select(Note))
                    raise RuntimeError("handler failed")
        except RuntimeError:
            pass
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW search_path"))).scalar() == '"$user", public'
            sync_conn = conn.sync_connection
            assert sync_conn is not None
            assert "schema_translate_map" not in sync_conn.get_execution_options()
            assert (await conn.execute(select(Note.body))).scalars().all() == [DECOY]
        await engine.dispose()

    run(main())
