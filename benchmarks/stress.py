"""Stress and fault run: isolation under load, killed backends, timeouts and a server restart.

``python -m benchmarks stress --ops 1000000`` (full size; ``--ops 50000`` is the CI size).

Many tenant schemas (default 200) hold the same tables with the same primary keys, and every
row carries its tenant's name. 32 threads and 200 asyncio tasks (psycopg 3, sync and async) do
mixed ORM work at the same time through pools smaller than the number of workers, each
operation through one of two session factories on the same engine: one installed with the
``search_path`` strategy, one with ``translate_map``, so both strategies share every pooled
connection. Operations: ``get``, ``select``, ``insert``, ``update``, ``delete``, a savepoint
whose inner part is rolled back, a deliberate rollback, a deliberate database error (duplicate
key) and a statement timeout.

Faults during the run: a fault thread terminates random backends *of this run*
(``pg_terminate_backend`` filtered on the run's ``application_name``), and once, half-way, the
whole server is restarted. The restart needs a server of the run's own: by default the run
starts a throwaway cluster (``initdb``; see ``sa_tenancy._cluster``); with ``--dburl`` it works
in a scratch database on that server and skips the restart (never restart a shared server).

Every worker keeps a ledger of the writes the database acknowledged (``COMMIT`` returned), of
the writes that must not exist (rolled back, savepoint rolled back, failed), and of the
writes whose ``COMMIT`` was cut by a fault (unknown outcome: either state is accepted, and
the key is not touched again). After the run, the database is read with a plain engine and:

* **cross-tenant reads**: rows a worker read whose tenant column was not its tenant (also
  counted during the run) — must be 0;
* **lost writes**: acknowledged writes missing or with another value — must be 0;
* **misplaced writes**: rows in a tenant schema that belong to another tenant or to no
  ledger entry, and rows written to ``public`` — must be 0;
* also reported: operations by kind, faults by kind, retries, unknown-outcome commits.

Exit status 0 when all the must-be-0 counts are 0 and no unexpected error occurred.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import psycopg.errors
from sqlalchemy import Integer
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import create_engine
from sqlalchemy import delete
from sqlalchemy import func
from sqlalchemy import insert
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import Session
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import sessionmaker

import sa_tenancy
from sa_tenancy._cluster import Cluster

from . import _harness

STRATEGIES = ("search_path", "translate_map")
DECOY = "public-decoy"
SEEDED = 10  # ids 1..SEEDED exist in every tenant (the same primary keys everywhere)
ABSENT = "absent"
MAX_RETRIES = 200
RETRY_SECONDS = 600.0  # an operation is abandoned (and the run fails) after this

# Operation mix (weights).
MIX = {
    "get": 25,
    "select": 20,
    "insert": 15,
    "update": 12,
    "delete": 5,
    "savepoint": 8,
    "rollback": 6,
    "db_error": 5,
    "timeout": 4,
}


class Base(DeclarativeBase):
    metadata = MetaData()


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tenant: Mapped[str] = mapped_column(String(63))
    value: Mapped[int] = mapped_column(Integer)


class Deliberate(Exception):
    """Raised by an operation to roll its transaction back on purpose."""


@dataclass
class Unknown:
    """A write whose COMMIT was cut by a fault: either state is correct."""

    states: tuple[object, ...]


@dataclass
class Stats:
    ops: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    unknown_commits: int = 0
    cross_tenant_reads: int = 0
    stale_reads: int = 0
    errors: list[str] = field(default_factory=list)

    def merge(self, other: Stats) -> None:
        self.ops.update(other.ops)
        self.faults.update(other.faults)
        self.retries += other.retries
        self.unknown_commits += other.unknown_commits
        self.cross_tenant_reads += other.cross_tenant_reads
        self.stale_reads += other.stale_reads
        self.errors.extend(other.errors[:5])


class Budget:
    """The shared count of operations still to start (threads and tasks draw from it)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.started >= self.total:
                return False
            self.started += 1
            return True


class Worker:
    """One thread or task: its own random stream, its own keys, its own ledger."""

    def __init__(self, number: int, tenants: list[str], seed: int) -> None:
        self.number = number
        self.tenants = tenants
        self.rng = random.Random(seed * 1_000_003 + number)
        self.base = 1000 + number * 1_000_000  # int4 keys: up to ~2,000 workers
        self.next_id: dict[str, int] = {}
        # (tenant, id) -> value | ABSENT | Unknown; only this worker writes these keys.
        self.ledger: dict[tuple[str, int], object] = {}
        self.live: dict[str, list[int]] = {}  # keys known to exist, safe to update/delete
        self.stats = Stats()

    def new_id(self, tenant: str) -> int:
        n = self.next_id.get(tenant, self.base)
        self.next_id[tenant] = n + 1
        return n

    def pick_live(self, tenant: str) -> int | None:
        keys = self.live.get(tenant)
        return self.rng.choice(keys) if keys else None

    def apply(self, tenant: str, effects: list[tuple[int, object]]) -> None:
        for key, state in effects:
            self.ledger[(tenant, key)] = state
            keys = self.live.setdefault(tenant, [])
            if state == ABSENT:
                if key in keys:
                    keys.remove(key)
            elif key not in keys:
                keys.append(key)

    def unknown(self, tenant: str, effects: list[tuple[int, object]]) -> None:
        self.stats.unknown_commits += 1
        for key, state in effects:
            before = self.ledger.get((tenant, key), ABSENT)
            self.ledger[(tenant, key)] = Unknown((before, state))
            keys = self.live.get(tenant, [])
            if key in keys:
                keys.remove(key)  # never touched again

    def check_rows(self, tenant: str, rows: list[Item]) -> None:
        for row in rows:
            if row.tenant != tenant:
                self.stats.cross_tenant_reads += 1
                self.stats.errors.append(f"{tenant} read a row of {row.tenant!r}")
            expected = self.ledger.get((tenant, row.id))
            if isinstance(expected, int) and row.value != expected:
                self.stats.stale_reads += 1
                self.stats.errors.append(f"{tenant}.{row.id}: read {row.value}, wrote {expected}")

    # -- operations: each runs in one session transaction and returns its ledger effects ----

    def op(self, kind: str, session: Session, tenant: str) -> list[tuple[int, object]]:
        method: Any = getattr(self, f"_op_{kind}")
        return list(method(session, tenant))

    def _op_get(self, session: Session, tenant: str) -> list[tuple[int, object]]:
        key = self.pick_live(tenant) if self.rng.random() < 0.5 else None
        key = key or self.rng.randint(1, SEEDED)
        row = session.get(Item, key)
        if row is None:
            if isinstance(self.ledger.get((tenant, key), 0), int):
                self.stats.errors.append(f"{tenant}.{key} missing on get")
                self.stats.stale_reads += 1
        else:
            self.check_rows(tenant, [row])
        return []

    def _op_select(self, session: Session, tenant: str) -> list[tuple[int, object]]:
        keys = self.live.get(tenant) or []
        chosen = [*self.rng.sample(keys, min(3, len(keys))), self.rng.randint(1, SEEDED)]
        rows = list(session.scalars(select(Item).where(Item.id.in_(chosen))))
        self.check_rows(tenant, rows)
        seen = {row.id for row in rows}
        for key in chosen:
            if key > SEEDED and key not in seen and isinstance(self.ledger.get((tenant, key)), int):
                self.stats.stale_reads += 1
                self.stats.errors.append(f"{tenant}.{key} missing on select")
        return []

    def _op_insert(self, session: Session, tenant: str) -> list[tuple[int, object]]:
        key, value = self.new_id(tenant), self.rng.randint(0, 1 << 30)
        session.add(Item(id=key, tenant=tenant, value=value))
        return [(key, value)]

    def _op_update(self, session: Session, tenant: str) -> list[tuple[int, object]]:
        key = self.pick_live(tenant)
        if key is None:
            return self._op_insert(session, tenant)
        row = session.get(Item, key)
        if row is None:
            self.stats.stale_reads += 1
            self.stats.errors.append(f"{tenant}.{key} missing on update")
            return []
        self.check_rows(tenant, [row])
        row.value = value = self.rng.randint(0, 1 << 30)
        return [(key, value)]

    def _op_delete(self, session: Session, tenant: str) -> list[tuple[int, object]]:
        key = self.pick_live(tenant)
        if key is None:
            return self._op_insert(session, tenant)
        if self.rng.random() < 0.5:
            row = session.get(Item, key)
            if row is None:
                self.stats.stale_reads += 1
                self.stats.errors.append(f"{tenant}.{key} missing on delete")
                return []
            session.delete(row)
        else:
            session.execute(delete(Item).where(Item.id == key))
        return [(key, ABSENT)]

    def _op_savepoint(self, session: Session, tenant: str) -> list[tuple[int, object]]:
        kept, dropped = self.new_id(tenant), self.new_id(tenant)
        session.add(Item(id=kept, tenant=tenant, value=1))
        nested = session.begin_nested()
        session.add(Item(id=dropped, tenant=tenant, value=2))
        session.flush()
        nested.rollback()
        with session.begin_nested():
            session.execute(update(Item).where(Item.id == kept).values(value=3))
        return [(kept, 3), (dropped, ABSENT)]

    def _op_rollback(self, session: Session, tenant: str) -> list[tuple[int, object]]:
        key = self.new_id(tenant)
        session.add(Item(id=key, tenant=tenant, value=4))
        session.flush()
        self.ledger[(tenant, key)] = ABSENT  # whatever happens next, it was never committed
        raise Deliberate

    def _op_db_error(self, session: Session, tenant: str) -> list[tuple[int, object]]:
        key = self.new_id(tenant)
        session.add(Item(id=key, tenant=tenant, value=5))
        session.flush()
        self.ledger[(tenant, key)] = ABSENT
        session.execute(insert(Item).values(id=self.rng.randint(1, SEEDED), tenant=tenant, value=0))
        raise AssertionError("a duplicate primary key was accepted")  # pragma: no cover

    def _op_timeout(self, session: Session, tenant: str) -> list[tuple[int, object]]:
        key = self.new_id(tenant)
        session.add(Item(id=key, tenant=tenant, value=6))
        session.flush()
        self.ledger[(tenant, key)] = ABSENT
        session.execute(select(func.set_config("statement_timeout", "1", True)))
        session.execute(select(func.pg_sleep(0.05)))
        raise AssertionError("the statement timeout did not fire")  # pragma: no cover


def _is_expected(kind: str, exc: BaseException) -> bool:
    if kind == "rollback":
        return isinstance(exc, Deliberate)
    if kind == "db_error":
        return isinstance(exc, IntegrityError)
    if kind == "timeout":
        return isinstance(exc, DBAPIError) and isinstance(exc.orig, psycopg.errors.QueryCanceled)
    return False


def _is_fault(exc: BaseException) -> bool:
    """A failure caused by an injected fault (killed backend, restart): retry the operation."""
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        return isinstance(
            exc.orig,
            psycopg.OperationalError | psycopg.InterfaceError,
        ) and not isinstance(exc.orig, psycopg.errors.QueryCanceled)
    return isinstance(exc, psycopg.OperationalError | ConnectionError | OSError)


def _describe(kind: str, exc: BaseException) -> str:
    first = (str(exc).splitlines() or [""])[0]
    return f"{kind}: {type(exc).__name__}: {first}"[:300]


def _choose(worker: Worker) -> tuple[str, str, int]:
    kind = worker.rng.choices(list(MIX), weights=list(MIX.values()))[0]
    tenant = worker.rng.choice(worker.tenants)
    return kind, tenant, worker.rng.randrange(len(STRATEGIES))


def _count_expected(worker: Any, kind: str) -> None:
    """An operation that failed on purpose (duplicate key, timeout) and was rolled back."""
    worker.stats.ops[kind] += 1
    if kind in _FAULT_OF:
        worker.stats.faults[_FAULT_OF[kind]] += 1


def _after_failure(
    worker: Any,
    kind: str,
    exc: Exception,
    committing: bool,
    tenant: str,
    effects: Any,
    attempt: int,
    deadline: float,
) -> float | None:
    """Book an operation that failed; return the pause before a retry, or None to give up.

    Shared by the thread and asyncio workers, which differ only in how they wait.
    """
    if not _is_fault(exc):
        worker.stats.errors.append(_describe(kind, exc))
        return None
    if committing:  # the COMMIT was cut: either outcome is acceptable
        worker.unknown(tenant, effects)
        worker.stats.ops[kind] += 1
        return None
    worker.stats.retries += 1
    if time.monotonic() > deadline or attempt == MAX_RETRIES - 1:
        worker.stats.errors.append(
            f"{kind}: abandoned after {attempt + 1} tries; last: {_describe(kind, exc)}"
        )
        return None
    return min(0.5, 0.01 * (attempt + 1))


def _sync_worker(
    worker: Worker, factories: list[sessionmaker[Session]], budget: Budget, stop: threading.Event
) -> None:
    while not stop.is_set() and budget.take():
        kind, tenant, strategy = _choose(worker)
        deadline = time.monotonic() + RETRY_SECONDS
        for attempt in range(MAX_RETRIES):
            effects: list[tuple[int, object]] = []
            committing = False
            try:
                with factories[strategy](info={"schema": tenant}) as session:
                    try:
                        effects = worker.op(kind, session, tenant)
                        committing = True
                        session.commit()
                    except Exception as exc:
                        if not committing and _is_expected(kind, exc):
                            session.rollback()
                            _count_expected(worker, kind)
                            break
                        raise
                worker.apply(tenant, effects)
                worker.stats.ops[kind] += 1
                break
            except Exception as exc:
                delay = _after_failure(
                    worker, kind, exc, committing, tenant, effects, attempt, deadline
                )
                if delay is None:
                    break
                time.sleep(delay)


_FAULT_OF = {"timeout": "statement_timeout"}


async def _async_worker(
    worker: Worker, factories: list[Any], budget: Budget, stop: threading.Event
) -> None:
    while not stop.is_set() and budget.take():
        kind, tenant, strategy = _choose(worker)
        deadline = time.monotonic() + RETRY_SECONDS
        for attempt in range(MAX_RETRIES):
            effects: list[tuple[int, object]] = []
            committing = False
            try:
                async with factories[strategy](info={"schema": tenant}) as session:
                    try:
                        effects = await session.run_sync(
                            lambda s, k=kind, t=tenant: worker.op(k, s, t)
                        )
                        committing = True
                        await session.commit()
                    except Exception as exc:
                        if not committing and _is_expected(kind, exc):
                            await session.rollback()
                            _count_expected(worker, kind)
                            break
                        raise
                worker.apply(tenant, effects)
                worker.stats.ops[kind] += 1
                break
            except Exception as exc:
                delay = _after_failure(
                    worker, kind, exc, committing, tenant, effects, attempt, deadline
                )
                if delay is None:
                    break
                await asyncio.sleep(delay)


# -- set-up, faults, verification -----------------------------------------------------------


class _FirstTenantPerConnection:
    """Negative control (``--control``): a common bug, the tenant bound to the connection.

    A session-level ``SET search_path`` for the first tenant a pooled connection serves, never
    changed afterwards. The run must report cross-tenant reads and misplaced writes with it.
    """

    def apply(self, connection: Any, schema: str | None) -> None:
        info = connection.connection.info
        if schema is not None and "control_tenant" not in info:
            connection.exec_driver_sql(f'SET search_path TO "{schema}"')
            info["control_tenant"] = schema


def _tenant_names(count: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"stress_{run}_{n:04d}" for n in range(count)]


def _setup(url: str, tenants: list[str]) -> None:
    engine = create_engine(url, poolclass=None)
    try:
        for schema in tenants:
            sa_tenancy.create_tenant(engine, schema, metadata=Base.metadata)
        with engine.begin() as conn:
            Base.metadata.create_all(conn)  # the decoy table in public
            conn.execute(insert(Item), [{"id": i, "tenant": DECOY, "value": 0} for i in (1, 2)])
            for schema in tenants:
                mapped = conn.execution_options(schema_translate_map={None: schema})
                rows = [{"id": i, "tenant": schema, "value": i} for i in range(1, SEEDED + 1)]
                mapped.execute(insert(Item), rows)
            conn.execution_options(schema_translate_map=None)
    finally:
        engine.dispose()


def _drop(url: str, tenants: list[str]) -> None:
    engine = create_engine(url, poolclass=None)
    try:
        for schema in tenants:
            sa_tenancy.drop_tenant(engine, schema)
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
    finally:
        engine.dispose()


class Faults(threading.Thread):
    """Terminates random backends of this run; restarts the server once, half-way."""

    def __init__(
        self,
        *,
        url: str,
        app: str,
        budget: Budget,
        interval: float,
        cluster: Cluster | None,
        stop: threading.Event,
        progress: float = 0.0,
    ) -> None:
        super().__init__(name="faults", daemon=True)
        self.url, self.app, self.budget, self.interval = url, app, budget, interval
        self.cluster, self.stop = cluster, stop
        self.progress = progress
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.rng = random.Random(7)

    def run(self) -> None:
        engine = create_engine(
            self.url, poolclass=None, connect_args={"application_name": "stress-faults"}
        )
        restarted = self.cluster is None
        try:
            started = last = time.monotonic()
            while not self.stop.wait(self.interval):
                now = time.monotonic()
                if self.progress and now - last >= self.progress:
                    last = now
                    print(
                        f"[{now - started:7.0f} s] {self.budget.started:,} of "
                        f"{self.budget.total:,} ops started; faults {dict(self.counts)}",
                        file=sys.stderr,
                        flush=True,
                    )
                if not restarted and self.budget.started >= self.budget.total // 2:
                    assert self.cluster is not None
                    self.cluster.restart("fast")
                    self.counts["server_restart"] += 1
                    restarted = True
                    continue
                try:
                    with engine.connect() as conn:
                        pids: list[int] = list(
                            conn.execute(
                                text(
                                    "SELECT pid FROM pg_stat_activity WHERE application_name = :a"
                                ),
                                {"a": self.app},
                            ).scalars()
                        )
                        if pids:
                            victim = self.rng.choice(pids)
                            if conn.execute(
                                text("SELECT pg_terminate_backend(CAST(:p AS integer))"),
                                {"p": victim},
                            ).scalar():
                                self.counts["backend_terminated"] += 1
                except Exception as exc:  # the server may be restarting
                    self.errors.append(str(exc)[:200])
        finally:
            engine.dispose()


def _verify(url: str, tenants: list[str], workers: list[Worker]) -> dict[str, Any]:
    ledger: dict[tuple[str, int], object] = {}
    by_tenant: dict[str, list[tuple[int, object]]] = {}
    for worker in workers:
        ledger.update(worker.ledger)
    for (tenant, key), state in ledger.items():
        by_tenant.setdefault(tenant, []).append((key, state))
    engine = create_engine(url, poolclass=None)
    lost: list[str] = []
    misplaced: list[str] = []
    unknown_resolved: Counter[str] = Counter()
    try:
        with engine.connect() as conn:
            for schema in tenants:
                mapped = conn.execution_options(schema_translate_map={None: schema})
                rows = {
                    r.id: (r.tenant, r.value)
                    for r in mapped.execute(select(Item.id, Item.tenant, Item.value))
                }
                for key, (owner, _) in rows.items():
                    if owner != schema:
                        misplaced.append(f"{schema}.{key} holds a row of {owner!r}")
                    elif key > SEEDED and (schema, key) not in ledger:
                        misplaced.append(f"{schema}.{key} was never written to this tenant")
                for key, state in by_tenant.get(schema, []):
                    found: object = rows[key][1] if key in rows else ABSENT
                    if isinstance(state, Unknown):
                        unknown_resolved["new" if found == state.states[-1] else "old"] += 1
                        if found not in state.states:
                            lost.append(f"{schema}.{key}: {found!r} not in {state.states!r}")
                    elif found != state:
                        lost.append(f"{schema}.{key}: expected {state!r}, found {found!r}")
            conn.execution_options(schema_translate_map=None)
            public = conn.execute(select(Item.tenant).where(Item.tenant != DECOY)).scalars().all()
            public_count = conn.execute(select(func.count()).select_from(Item)).scalar_one()
    finally:
        engine.dispose()
    return {
        "lost": lost,
        "misplaced": misplaced,
        "public_writes": len(public) + max(0, public_count - 2 - len(public)),
        "ledger_entries": len(ledger),
        "unknown_resolved": dict(unknown_resolved),
    }


def run(args: argparse.Namespace, url: str, cluster: Cluster | None) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.ext.asyncio import create_async_engine

    tenants = _tenant_names(args.tenants)
    started = time.monotonic()
    _setup(url, tenants)
    setup_seconds = time.monotonic() - started
    app = f"stress-{uuid.uuid4().hex[:8]}"
    connect_args = {"application_name": app}
    engine: Engine = create_engine(
        url,
        pool_size=args.pool_size,
        max_overflow=0,
        pool_timeout=300,
        connect_args=connect_args,
    )
    async_engine = create_async_engine(
        url, pool_size=args.pool_size, max_overflow=0, pool_timeout=300, connect_args=connect_args
    )
    factories: list[sessionmaker[Session]] = []
    async_factories: list[Any] = []
    for name in STRATEGIES:
        strategy: Any = _FirstTenantPerConnection() if args.control else name
        factory = sessionmaker(engine, expire_on_commit=False)
        sa_tenancy.install(factory, strategy=strategy, require=True)
        factories.append(factory)
        async_factory = async_sessionmaker(async_engine, expire_on_commit=False)
        sa_tenancy.install(async_factory, strategy=strategy, require=True)
        async_factories.append(async_factory)

    budget = Budget(args.ops)
    stop = threading.Event()
    workers = [Worker(n, tenants, args.seed) for n in range(args.threads + args.tasks)]
    sync_workers, async_workers = workers[: args.threads], workers[args.threads :]
    faults = Faults(
        url=url,
        app=app,
        budget=budget,
        interval=args.kill_interval,
        cluster=cluster,
        stop=stop,
        progress=args.progress,
    )

    def async_main() -> None:
        async def body() -> None:
            try:
                await asyncio.gather(
                    *(_async_worker(w, async_factories, budget, stop) for w in async_workers)
                )
            finally:
                await async_engine.dispose()

        asyncio.run(body())

    threads = [
        threading.Thread(target=_sync_worker, args=(w, factories, budget, stop), daemon=True)
        for w in sync_workers
    ]
    threads.append(threading.Thread(target=async_main, name="asyncio", daemon=True))
    run_started = time.monotonic()
    faults.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, args.max_seconds - (time.monotonic() - run_started)))
    timed_out = any(thread.is_alive() for thread in threads)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    faults.join(timeout=60)
    run_seconds = time.monotonic() - run_started
    engine.dispose()

    stats = Stats()
    for worker in workers:
        stats.merge(worker.stats)
    stats.faults.update(faults.counts)
    verdict = _verify(url, tenants, workers)
    if not args.keep:
        _drop(url, tenants)
    total_ops = sum(stats.ops.values())
    return {
        "ops": total_ops,
        "ops_requested": args.ops,
        "ops_per_second": round(total_ops / run_seconds, 1),
        "threads": args.threads,
        "tasks": args.tasks,
        "pool_size": {"sync": args.pool_size, "async": args.pool_size},
        "tenants": args.tenants,
        "strategies": list(STRATEGIES),
        "ops_by_kind": dict(sorted(stats.ops.items())),
        "faults": dict(sorted(stats.faults.items())),
        "retries": stats.retries,
        "unknown_outcome_commits": stats.unknown_commits,
        "unknown_resolved": verdict["unknown_resolved"],
        "cross_tenant_reads": stats.cross_tenant_reads,
        "stale_reads": stats.stale_reads,
        "lost_writes": len(verdict["lost"]),
        "misplaced_writes": len(verdict["misplaced"]),
        "public_writes": verdict["public_writes"],
        "ledger_entries": verdict["ledger_entries"],
        "unexpected_errors": len(stats.errors),
        "examples": (stats.errors + verdict["lost"] + verdict["misplaced"])[:10],
        "timed_out": timed_out,
        "setup_seconds": round(setup_seconds, 1),
        "run_seconds": round(run_seconds, 1),
        "server_restart": cluster is not None,
        "control": args.control,
    }


def passed(result: dict[str, Any]) -> bool:
    """The verdict: every must-be-0 count is 0 and every requested operation ran."""
    return (
        result["cross_tenant_reads"] == 0
        and result["stale_reads"] == 0
        and result["lost_writes"] == 0
        and result["misplaced_writes"] == 0
        and result["public_writes"] == 0
        and result["unexpected_errors"] == 0
        and not result["timed_out"]
        and result["ops"] == result["ops_requested"]
    )


def _report(result: dict[str, Any]) -> str:
    lines = [
        f"ops {result['ops']:,} ({result['ops_per_second']:,}/s over {result['run_seconds']} s)"
        f"; {result['threads']} threads + {result['tasks']} asyncio tasks; pools of "
        f"{result['pool_size']['sync']} (sync) and {result['pool_size']['async']} (async); "
        f"{result['tenants']} tenants; strategies {', '.join(result['strategies'])}",
        "ops by kind: " + ", ".join(f"{k} {v:,}" for k, v in result["ops_by_kind"].items()),
        "faults: " + ", ".join(f"{k} {v:,}" for k, v in result["faults"].items()),
        f"retries {result['retries']:,}; unknown-outcome commits "
        f"{result['unknown_outcome_commits']} {result['unknown_resolved']}",
        f"cross-tenant reads {result['cross_tenant_reads']}, stale reads "
        f"{result['stale_reads']}, lost writes {result['lost_writes']}, misplaced writes "
        f"{result['misplaced_writes']}, writes in public {result['public_writes']} "
        f"(ledger: {result['ledger_entries']:,} keys); unexpected errors "
        f"{result['unexpected_errors']}",
    ]
    if result["examples"]:
        lines.append("examples: " + "; ".join(result["examples"]))
    lines.append("PASS" if passed(result) else "FAIL")
    return "\n".join(lines)


def verify_cost(url: str, *, n: int, repeat: int) -> list[_harness.Measurement]:
    """Cost of :func:`sa_tenancy.verify_checkin`: tenant session transactions (one primary-key
    read each) on a plain engine and on an engine with the leak detector, interleaved."""
    tenant = f"verify_{uuid.uuid4().hex[:8]}"
    setup = create_engine(url, poolclass=None)
    sa_tenancy.create_tenant(setup, tenant, metadata=Base.metadata)
    with setup.begin() as conn:
        mapped = conn.execution_options(schema_translate_map={None: tenant})
        mapped.execute(insert(Item), [{"id": 1, "tenant": tenant, "value": 1}])
        conn.execution_options(schema_translate_map=None)
    engines = {
        "plain": create_engine(url, pool_size=1, max_overflow=0),
        "verify_checkin": create_engine(url, pool_size=1, max_overflow=0),
    }
    detector = sa_tenancy.verify_checkin(engines["verify_checkin"])
    candidates: dict[str, Callable[[int], object]] = {}
    for name, engine in engines.items():
        factory = sessionmaker(engine)
        sa_tenancy.install(factory, strategy="search_path")

        def one_run(count: int, factory: sessionmaker[Session] = factory) -> None:
            for _ in range(count):
                with factory(info={"schema": tenant}) as session:
                    session.get(Item, 1)
                    session.commit()

        candidates[name] = one_run
    try:
        measured = _harness.compare(candidates, baseline="plain", n=n, repeat=repeat)
        measured[-1].extra = {"checked_in": detector.checked, "leaks": len(detector.leaks)}
        return measured
    finally:
        for engine in engines.values():
            engine.dispose()
        sa_tenancy.drop_tenant(setup, tenant)
        setup.dispose()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks stress", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dburl",
        default=None,
        help="use this PostgreSQL server (a scratch database; no restart fault) instead of a "
        "throwaway cluster started by the run",
    )
    parser.add_argument("--ops", type=int, default=50_000, help="operations (default 50,000)")
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=200, help="asyncio tasks")
    parser.add_argument("--pool-size", type=int, default=8, help="per engine (sync and async)")
    parser.add_argument(
        "--kill-interval", type=float, default=0.25, help="seconds between backend kills"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--progress", type=float, default=0.0, metavar="SECONDS", help="print progress to stderr"
    )
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--keep", action="store_true", help="keep the tenant schemas")
    parser.add_argument(
        "--control",
        action="store_true",
        help="negative control: a broken strategy (tenant bound to the pooled connection) "
        "instead of sa_tenancy's; the run must FAIL",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    parser.add_argument(
        "--verify-cost",
        action="store_true",
        help="instead of the stress run: time session transactions with and without "
        "sa_tenancy.verify_checkin (on --dburl, default the local server)",
    )
    parser.add_argument("--verify-n", type=int, default=500, help="transactions per sample")
    args = parser.parse_args(argv)
    if args.verify_cost:
        env = _harness.environment(args.dburl or _harness.DEFAULT_URL)
        with _harness.scratch_database(args.dburl or _harness.DEFAULT_URL) as scratch:
            measured = verify_cost(scratch, n=args.verify_n, repeat=7)
        print(_harness.format_environment(env))
        print(_harness.format_table("verify_checkin cost per session transaction", measured))
        print(f"verified check-ins: {measured[-1].extra}")
        if args.json:
            _harness.write_json(args.json, env=env, results=measured)
        return 0
    if args.ops < 1 or args.tenants < 2 or args.threads < 1 or args.tasks < 1:
        parser.error("--ops >= 1, --tenants >= 2, --threads >= 1, --tasks >= 1")

    cluster: Cluster | None = None
    try:
        if args.dburl is None:
            cluster = Cluster(settings={"max_connections": "100"}).start()
            url = cluster.url
            result = run(args, url, cluster)
        else:
            url = args.dburl
            with _harness.scratch_database(url, prefix="sa_tenancy_stress") as scratch:
                result = run(args, scratch, None)
        env = _harness.environment(url)
    finally:
        if cluster is not None:
            cluster.stop()
    print(_harness.format_environment(env))
    print(_report(result))
    if args.json:
        _harness.write_json(args.json, env=env, results=result)
    return 0 if passed(result) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
