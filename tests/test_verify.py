"""The opt-in pool-leak detector (sa_tenancy.verify_checkin) on real servers.

Each leak test makes a real leak (a session-level ``SET search_path`` or ``USE``) and checks
what a user sees: the error, the log line, and that the next checkout gets a clean connection.
The clean tests run sa_tenancy's strategies through every way a transaction can end and expect
no report, so the detector does not cry wolf.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import PoolLeak
from sa_tenancy import TenancyError
from sa_tenancy.testing import DECOY
from sa_tenancy.testing import url_for_driver

from .models import Note
from .models import tenant_metadata

DEFAULT_PATH = '"$user", public'


def _show_path(engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SHOW search_path")).scalar())


def test_no_report_for_sa_tenancy_strategies(pg_url, two_tenants, strategy):
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    detector = sa_tenancy.verify_checkin(engine)
    factory = sessionmaker(engine)
    sa_tenancy.install(factory, strategy=strategy)
    a, b = two_tenants
    try:
        with factory(info={"schema": a}) as session:
            session.add(Note(id=1, body=a))
            session.commit()
        with factory(info={"schema": b}) as session:
            session.add(Note(id=1, body=b))
            with session.begin_nested():
                session.add(Note(id=2, body=b))
            session.rollback()
        with factory(info={"schema": a}) as session:
            session.add(Note(id=1, body="duplicate"))
            with pytest.raises(IntegrityError):
                session.commit()
        with factory(info={"schema": b}) as session:
            assert session.scalars(select(Note.body)).all() == []
        assert _show_path(engine) == DEFAULT_PATH
    finally:
        detector.remove()
        engine.dispose()
    assert detector.checked >= 5
    assert detector.leaks == []


def test_session_level_set_search_path_is_caught(pg_url, two_tenants):
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    detector = sa_tenancy.verify_checkin(engine, on_leak="raise")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'SET search_path TO "{two_tenants[0]}"')
            conn.commit()
        assert len(detector.leaks) == 1
        assert two_tenants[0] in detector.leaks[0]
        with pytest.raises(PoolLeak, match="instead of the server default"):
            engine.connect()
        # The leaked connection was discarded: the next user gets the default path.
        assert _show_path(engine) == DEFAULT_PATH
        with sessionmaker(engine)() as session:
            assert session.scalars(select(Note.body)).all() == [DECOY]
    finally:
        detector.remove()
        engine.dispose()


def test_log_mode_logs_and_discards(pg_url, two_tenants, caplog):
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    detector = sa_tenancy.verify_checkin(engine, on_leak="log")
    try:
        with caplog.at_level(logging.ERROR, logger="sa_tenancy.verify"):
            with engine.connect() as conn:
                conn.exec_driver_sql(f'SET search_path TO "{two_tenants[1]}"')
                conn.commit()
        assert any("pool leak" in r.getMessage() for r in caplog.records)
        assert _show_path(engine) == DEFAULT_PATH  # no raise, and nothing leaked
    finally:
        detector.remove()
        engine.dispose()
    assert len(detector.leaks) == 1


def test_leaked_translate_map_is_caught(pg_url, two_tenants):
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    detector = sa_tenancy.verify_checkin(engine)
    # A tenant map set on the engine, not on one transaction's connection, reaches every user.
    leaky = engine.execution_options(
        schema_translate_map={None: two_tenants[0]}, sa_tenancy_schema=two_tenants[0]
    )
    try:
        with pytest.raises(PoolLeak, match="translate map of tenant"):
            leaky.connect()
        with engine.connect() as conn:
            assert conn.execute(select(Note.body)).scalars().all() == [DECOY]
    finally:
        detector.remove()
        engine.dispose()


def test_async_engine(pg_url, two_tenants, strategy):
    pytest.importorskip("greenlet", reason="async needs sa_tenancy[asyncio]")
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main():
        engine = create_async_engine(url_for_driver(pg_url, "psycopg"), pool_size=1)
        detector = sa_tenancy.verify_checkin(engine)
        factory = async_sessionmaker(engine)
        sa_tenancy.install(factory, strategy=strategy)
        try:
            async with factory(info={"schema": two_tenants[0]}) as session:
                session.add(Note(id=1, body="a"))
                await session.commit()
            assert detector.leaks == []
            async with engine.connect() as conn:
                await conn.exec_driver_sql(f'SET search_path TO "{two_tenants[0]}"')
                await conn.commit()
            with pytest.raises(PoolLeak):
                async with engine.connect():
                    pass
            async with engine.connect() as conn:
                assert (await conn.execute(text("SHOW search_path"))).scalar() == DEFAULT_PATH
        finally:
            detector.remove()
            await engine.dispose()
        return detector

    assert len(asyncio.run(main()).leaks) == 1


def test_mysql_use_is_caught(mysql_url, mysql_tenants):
    (schema,) = mysql_tenants(tenant_metadata, 1)
    engine = create_engine(mysql_url, pool_size=1, max_overflow=0)
    default = engine.url.database
    detector = sa_tenancy.verify_checkin(engine)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"USE `{schema}`")
        with pytest.raises(PoolLeak, match=schema):
            engine.connect()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT DATABASE()")).scalar() == default
    finally:
        detector.remove()
        engine.dispose()


def test_options_are_checked(pg_url):
    engine = create_engine(pg_url)
    try:
        with pytest.raises(TenancyError, match="on_leak"):
            sa_tenancy.verify_checkin(engine, on_leak="ignore")  # type: ignore[arg-type]
        detector = sa_tenancy.verify_checkin(engine)
        with pytest.raises(TenancyError, match="already has a leak detector"):
            sa_tenancy.verify_checkin(engine)
        detector.remove()
        detector.remove()  # idempotent
        sa_tenancy.verify_checkin(engine).remove()
    finally:
        engine.dispose()
