"""``install(..., max_tenants_per_connection=N)``: a pooled connection serves at most N tenants."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

import sa_tenancy
from sa_tenancy import TenancyError

from .models import Note
from .models import tenant_metadata

PID = text("SELECT pg_backend_pid()").execution_options(sa_tenancy_allow_raw_sql=True)


def test_connection_replaced_after_n_tenants(pg_url, pg_tenants, strategy):
    tenants = pg_tenants(tenant_metadata, 4)
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=strategy, max_tenants_per_connection=3)

    def backend(tenant):
        with factory(info={"schema": tenant}) as session:
            session.execute(select(Note)).all()
            return session.connection().execute(PID).scalar()

    first = backend(tenants[0])
    # Revisiting a tenant costs nothing; three distinct tenants fit on one connection.
    assert {backend(t) for t in (tenants[0], tenants[1], tenants[0], tenants[2])} == {first}
    fourth = backend(tenants[3])  # the connection served 3: replaced before serving a 4th
    assert fourth != first
    assert backend(tenants[0]) == fourth  # the new connection counts from zero
    engine.dispose()


def test_never_replaced_mid_transaction(pg_url, pg_tenants):
    a, b = pg_tenants(tenant_metadata, 2)
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, max_tenants_per_connection=1)
    with factory(info={"schema": a}) as session:
        pid = session.connection().execute(PID).scalar()
        session.add(Note(id=1, body=a))
        session.flush()
        with session.begin_nested():
            session.add(Note(id=2, body=a))
        session.commit()  # the transaction ran to its end on one backend
        assert session.connection().execute(PID).scalar() != pid  # next transaction: new one
        assert sorted(session.scalars(select(Note.body))) == [a, a]
    with factory(info={"schema": b}) as session:
        assert session.scalars(select(Note.body)).all() == []
    engine.dispose()


def test_null_pool_and_async(pg_url, pg_tenants):
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.ext.asyncio import create_async_engine

    a, b = pg_tenants(tenant_metadata, 2)
    plain = sessionmaker(create_engine(pg_url, poolclass=NullPool))
    sa_tenancy.install(plain, max_tenants_per_connection=1)
    for tenant in (a, b, a):
        with plain(info={"schema": tenant}) as session:
            assert session.scalars(select(Note.body)).all() == []

    async def main():
        engine = create_async_engine(pg_url, pool_size=1, max_overflow=0)
        factory = async_sessionmaker(engine)
        sa_tenancy.install(factory, max_tenants_per_connection=2)
        pids = []
        for tenant in (a, b, a, b):
            async with factory(info={"schema": tenant}) as session:
                await session.execute(select(Note))
                pids.append((await session.execute(PID)).scalar())
        await engine.dispose()
        return pids

    pids = asyncio.run(main())
    assert pids[0] == pids[1] and pids[2] != pids[1] and pids[2] == pids[3]


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", True])
def test_bad_limits_refused_before_anything_changes(pg_engine, bad):
    factory = sessionmaker(pg_engine)
    with pytest.raises(TenancyError, match="max_tenants_per_connection"):
        sa_tenancy.install(factory, max_tenants_per_connection=bad)
    assert sa_tenancy.installation_of(factory) is None
