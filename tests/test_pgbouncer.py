"""Through PgBouncer 1.18 in transaction pooling mode: both strategies, sync and async.

PgBouncer hands each transaction to whichever backend is free, so transactions of several
clients interleave on few backends. A tenant applied for one transaction (``set_config(...,
true)`` or the translate map) must not reach the next client's transaction on that backend.

Each test counts the *interleavings* it produced: transactions that ran on a backend right
after a transaction for another tenant (found from ``pg_backend_pid()`` and
``clock_timestamp()``), so a pass means something. The negative control runs a naive
"session-level ``SET search_path``, only when it changed" listener through the same PgBouncer
and must see leaks: proof that the check can fail.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy._pgbouncer import PgBouncer
from sa_tenancy._pgbouncer import engine_options
from sa_tenancy._pgbouncer import find_pgbouncer
from sa_tenancy.testing import url_for_driver

from .models import Note
from .models import tenant_metadata

TENANTS = 4
SYNC_CLIENTS = 6
SYNC_TRANSACTIONS = 250  # per client
ASYNC_TASKS = 8
ASYNC_TRANSACTIONS = 120  # per task


@pytest.fixture(scope="module")
def pgbouncer(pg_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer (transaction mode, 2 backends) in front of the test server, module-wide."""
    if find_pgbouncer() is None:
        message = "pgbouncer is not installed (apt-get install pgbouncer)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true: the PgBouncer tests must not be skipped")
        pytest.skip(message)
    bouncer = PgBouncer(pg_url, pool_size=2, pool_mode="transaction").start()
    yield bouncer
    bouncer.stop()


@pytest.fixture
def tenants(pg_tenants) -> list[str]:
    schemas = pg_tenants(tenant_metadata, TENANTS)
    engine = pg_tenants.engine
    with engine.begin() as conn:
        for schema in schemas:
            mapped = conn.execution_options(schema_translate_map={None: schema})
            mapped.execute(insert(Note), [{"id": i, "body": schema} for i in (1, 2)])
            conn.execution_options(schema_translate_map=None)
    return schemas


class Tally:
    """What every transaction saw: tenant, backend pid, server time, and any foreign rows."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[tuple[int, datetime, str]] = []
        self.wrong: list[tuple[str, list[str]]] = []

    def add(self, schema: str, bodies: list[str], pid: int, at: datetime) -> None:
        with self.lock:
            self.records.append((pid, at, schema))
            if set(bodies) != {schema}:
                self.wrong.append((schema, sorted(set(bodies))))

    def interleavings(self) -> int:
        """Transactions that ran on a backend right after another tenant's transaction."""
        count = 0
        ordered = sorted(self.records, key=lambda r: (r[0], r[1]))
        for (pid1, _, s1), (pid2, _, s2) in itertools.pairwise(ordered):
            count += pid1 == pid2 and s1 != s2
        return count


def _observe():
    return select(func.pg_backend_pid(), func.clock_timestamp())


def _run_clients(factories, tenants: list[str], transactions: int) -> Tally:
    """Each factory is one client thread; client ``n`` serves a tenant for five transactions in
    a row, then the next one."""
    tally = Tally()
    errors: list[BaseException] = []

    def client(factory, n: int) -> None:
        try:
            for i in range(transactions):
                schema = tenants[(n + i // 5) % len(tenants)]
                with factory(info={"schema": schema}) as session:
                    bodies = list(session.scalars(select(Note.body)))
                    pid, at = session.execute(_observe()).one()
                    session.commit()
                tally.add(schema, bodies, pid, at)
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(f, n)) for n, f in enumerate(factories)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[0]
    return tally


def _sync_clients(bouncer: PgBouncer, pg_url: str):
    """Several independent client engines (one connection each), all through PgBouncer."""
    return [
        create_engine(bouncer.url(pg_url), pool_size=1, max_overflow=0, **engine_options("psycopg"))
        for _ in range(SYNC_CLIENTS)
    ]


def _naive_factory(engine):
    """The bug to catch: a session-level ``SET search_path``, skipped when this client
    connection already set it (correct on a plain pool, where a client connection is a
    backend; wrong behind PgBouncer, where it is not)."""
    factory = sessionmaker(engine)

    @event.listens_for(factory, "after_begin")
    def naive(session, transaction, connection):
        schema = session.info["schema"]
        record = connection.connection.info
        if record.get("naive_path") != schema:
            connection.exec_driver_sql(f'SET search_path TO "{schema}"')
            record["naive_path"] = schema

    return factory


def test_sync_strategies_do_not_leak_through_pgbouncer(pgbouncer, pg_url, tenants, strategy):
    """0 foreign rows with sa_tenancy; the naive control on the same PgBouncer leaks."""
    engines = _sync_clients(pgbouncer, pg_url)
    try:
        factories = []
        for engine in engines:
            factory = sessionmaker(engine)
            sa_tenancy.install(factory, strategy=strategy)
            factories.append(factory)
        tally = _run_clients(factories, tenants, SYNC_TRANSACTIONS)
    finally:
        for engine in engines:
            engine.dispose()
    total = len(tally.records)
    interleavings = tally.interleavings()
    print(f"\n{strategy} sync: {total} transactions, {interleavings} interleavings, 0 leaks")
    assert total == SYNC_CLIENTS * SYNC_TRANSACTIONS
    assert interleavings > total // 4, "too few interleavings for the test to mean anything"
    assert tally.wrong == []

    # Negative control: same PgBouncer, same clients and load, naive SET search_path.
    engines = _sync_clients(pgbouncer, pg_url)
    try:
        control = _run_clients([_naive_factory(e) for e in engines], tenants, SYNC_TRANSACTIONS)
    finally:
        for engine in engines:
            engine.dispose()
    print(f"naive SET search_path: {len(control.wrong)} of {len(control.records)} reads leaked")
    assert len(control.wrong) > 0, "the naive listener did not leak: this test cannot fail"


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_async_strategies_do_not_leak_through_pgbouncer(
    pgbouncer, pg_url, tenants, strategy, driver
):
    pytest.importorskip("greenlet", reason="async needs sa_tenancy[asyncio]")
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.ext.asyncio import create_async_engine

    tally = Tally()

    async def main() -> None:
        url = pgbouncer.url(url_for_driver(pg_url, driver))
        engine = create_async_engine(url, pool_size=4, max_overflow=0, **engine_options(driver))
        factory = async_sessionmaker(engine)
        sa_tenancy.install(factory, strategy=strategy)

        async def task(n: int) -> None:
            for i in range(ASYNC_TRANSACTIONS):
                schema = tenants[(n + i) % len(tenants)]
                async with factory(info={"schema": schema}) as session:
                    bodies = list(await session.scalars(select(Note.body)))
                    await asyncio.sleep(0)
                    pid, at = (await session.execute(_observe())).one()
                    await session.commit()
                tally.add(schema, bodies, pid, at)

        try:
            await asyncio.gather(*(task(n) for n in range(ASYNC_TASKS)))
        finally:
            await engine.dispose()

    asyncio.run(main())
    total = len(tally.records)
    interleavings = tally.interleavings()
    print(f"\n{strategy} {driver}: {total} transactions, {interleavings} interleavings, 0 leaks")
    assert total == ASYNC_TASKS * ASYNC_TRANSACTIONS
    assert interleavings > total // 4
    assert tally.wrong == []
