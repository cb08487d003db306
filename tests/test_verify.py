"""The opt-in pool-leak detector (sa_tenancy.verify_checkin) on real servers.

Each leak test makes a real leak (a session-level ``SET search_path``, ``SET ROLE``, a ``TEMP``
table, a ``USE``, an SQLite ``ATTACH``, a translate map left on a ``Connection``) and checks what
a user sees: the error, the log line, and that the next checkout gets a clean connection. The
clean tests run sa_tenancy's strategies, and the transaction-scoped forms of the same commands,
through every way a transaction can end and expect no report, so the detector does not cry wolf.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
import uuid

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy import PoolLeak
from sa_tenancy import TenancyError
from sa_tenancy import TranslateMap
from sa_tenancy.testing import DECOY
from sa_tenancy.testing import url_for_driver

from .models import Note
from .models import tenant_metadata

DEFAULT_PATH = '"$user", public'


def _show_path(engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SHOW search_path")).scalar())


@pytest.fixture
def pg_role(pg_url):
    """A role the superuser test connection can SET ROLE to; dropped afterwards."""
    name = f"r_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url, poolclass=None)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{name}" NOLOGIN')
    yield name
    with admin.begin() as conn:
        conn.exec_driver_sql(f'DROP ROLE "{name}"')
    admin.dispose()


def test_no_report_for_sa_tenancy_strategies(pg_url, two_tenants, strategy, pg_role):
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
        # The transaction-scoped forms of what the detector reports are not leaks.
        with engine.begin() as conn:
            conn.exec_driver_sql(f'SET LOCAL ROLE "{pg_role}"')
            conn.exec_driver_sql("CREATE TEMP TABLE scratch (id int) ON COMMIT DROP")
            conn.exec_driver_sql("SET LOCAL search_path TO pg_catalog")
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TEMP TABLE scratch (id int)")
            conn.exec_driver_sql("DROP TABLE scratch")
            conn.commit()
        assert _show_path(engine) == DEFAULT_PATH
    finally:
        detector.remove()
        engine.dispose()
    assert detector.checked >= 7
    assert detector.leaks == []


def test_set_role_left_on_a_connection_is_caught(pg_url, pg_role):
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    detector = sa_tenancy.verify_checkin(engine)
    try:
        with engine.connect() as conn:
            login = conn.execute(text("SELECT current_user")).scalar()
            conn.exec_driver_sql(f'SET ROLE "{pg_role}"')
            conn.commit()
        assert len(detector.leaks) == 1
        (leak,) = detector.leaks
        assert f"current_user {pg_role!r} instead of the server default {login!r}" in leak
        with pytest.raises(PoolLeak, match="a SET ROLE not undone"):
            engine.connect()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == login
    finally:
        detector.remove()
        engine.dispose()


def test_temp_table_left_on_a_connection_is_caught(pg_url, two_tenants):
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    detector = sa_tenancy.verify_checkin(engine)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TEMP TABLE notes (id int PRIMARY KEY, body text)")
            conn.exec_driver_sql("INSERT INTO notes VALUES (1, 'temp-of-a-tenant')")
            conn.commit()
            # Why it matters: pg_temp is searched first, so the temp table answers for notes.
            assert conn.execute(select(Note.body)).scalars().all() == ["temp-of-a-tenant"]
        assert len(detector.leaks) == 1
        assert "temporary relations 2 instead of the server default 0" in detector.leaks[0]
        with pytest.raises(PoolLeak, match="TEMP tables outlive their transaction"):
            engine.connect()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT to_regclass('pg_temp.notes')")).scalar() is None
            assert conn.execute(select(Note.body)).scalars().all() == [DECOY]
    finally:
        detector.remove()
        engine.dispose()


def test_sqlite_attachment_left_on_a_connection_is_caught():
    with tempfile.TemporaryDirectory() as directory:
        tenant_file = f"{directory}/acme.db"
        with sqlite3.connect(tenant_file) as raw:
            raw.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, tenant TEXT)")
            raw.execute("INSERT INTO invoices VALUES (1, 'acme')")
        raw.close()
        engine = create_engine(f"sqlite:///{directory}/app.db", pool_size=1, max_overflow=0)
        detector = sa_tenancy.verify_checkin(engine)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("ATTACH DATABASE ? AS acme", (tenant_file,))
                # Why it matters: an unqualified name that main lacks resolves in the attachment.
                assert conn.exec_driver_sql("SELECT tenant FROM invoices").scalar() == "acme"
            (leak,) = detector.leaks
            assert "attached databases ['acme'] instead of the server default []" in leak
            with pytest.raises(PoolLeak, match="an ATTACH not undone"):
                engine.connect()
            with engine.connect() as conn:
                names = [row[1] for row in conn.exec_driver_sql("PRAGMA database_list")]
                assert names == ["main"]
                with pytest.raises(OperationalError, match="no such table: invoices"):
                    conn.exec_driver_sql("SELECT tenant FROM invoices")
        finally:
            detector.remove()
            engine.dispose()
        assert detector.checked >= 2


def _tenant_transaction_without_restore(conn, schema: str) -> None:
    """What a tenant session bound to ``conn`` does when nothing restores the Connection after
    it: the map is set in place at the transaction's begin and stays after the transaction."""
    with conn.begin():
        TranslateMap().apply(conn, schema)
        conn.execute(insert(Note).values(id=1, body=schema))


def test_translate_map_left_on_a_connection_is_caught_at_its_next_begin(pg_url, two_tenants):
    a = two_tenants[0]
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    detector = sa_tenancy.verify_checkin(engine)
    try:
        with engine.connect() as conn:
            _tenant_transaction_without_restore(conn, a)
            with conn.begin():
                # Without the detector this reads the tenant's row.
                assert conn.execute(select(Note.body)).scalars().all() == [DECOY]
            assert conn.get_execution_options().get("sa_tenancy_schema") is None
        assert len(detector.leaks) == 1
        assert f"carries the translate map of tenant {a!r}; it was removed" in detector.leaks[0]
        with pytest.raises(PoolLeak, match="a Connection beginning a new transaction"):
            engine.connect()
        with engine.connect() as conn:
            assert conn.execute(select(Note.body)).scalars().all() == [DECOY]
    finally:
        detector.remove()
        engine.dispose()


@pytest.mark.parametrize("on_leak", ["raise", "log"])
def test_a_statement_compiled_with_a_leftover_map_is_refused(pg_url, two_tenants, on_leak):
    """Autobegin: the statement is compiled with the Connection's options before ``begin``
    fires, so removing the map is too late for it; it is refused, never run for the tenant."""
    a = two_tenants[0]
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    detector = sa_tenancy.verify_checkin(engine, on_leak=on_leak)
    try:
        with engine.connect() as conn:
            _tenant_transaction_without_restore(conn, a)
            with pytest.raises(PoolLeak, match="was not run: run it again"):
                conn.execute(select(Note.body))
            assert conn.execute(select(Note.body)).scalars().all() == [DECOY]
            conn.rollback()
        assert len(detector.leaks) == 1
        with engine.connect() as conn:  # reported once, by the refusal
            assert conn.execute(select(Note.body)).scalars().all() == [DECOY]
    finally:
        detector.remove()
        engine.dispose()


def test_one_round_trip_per_checkin_on_psycopg(pg_url):
    """The state query runs alone in autocommit: no BEGIN, no ROLLBACK of its own."""
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    detector = sa_tenancy.verify_checkin(engine)
    try:
        with tempfile.TemporaryFile() as trace:
            conn = engine.connect()
            conn.execute(text("SELECT 1"))
            driver_connection = conn.connection.driver_connection
            assert driver_connection is not None
            pgconn = driver_connection.pgconn
            pgconn.trace(trace.fileno())
            pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            conn.close()  # check-in: the pool's ROLLBACK, then the detector's query
            pgconn.untrace()
            trace.seek(0)
            sent = [
                line.split("\t")[3].strip()
                for line in trace.read().decode().splitlines()
                if line.split("\t")[0] == "F" and line.split("\t")[2] in ("Query", "Sync")
            ]
    finally:
        detector.remove()
        engine.dispose()
    assert detector.checked == 1
    assert len(sent) == 2, sent  # one round trip each
    assert sent[0] == '"ROLLBACK"'
    assert "pg_my_temp_schema()" in sent[1]


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
