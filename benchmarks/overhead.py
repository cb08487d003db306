"""overhead: what tenancy adds to one small transaction.

Each unit of work is one whole session transaction, as a web request would run it:

``select_pk``
    ``session.get(Item, pk)``, then close (rollback).
``insert``
    ``session.add(Item(...))``, commit.
``update``
    ``session.get(Item, pk)``, change a column, commit.
``lazy_load``
    ``session.get(Parent, pk)``, then ``parent.children`` (a second SELECT), close.

Candidates, each on its own engine with one pooled connection, same code, same data:

``plain``
    a session without sa_tenancy, tables in ``public``: the baseline.
``translate_map`` / ``search_path``
    ``sa_tenancy.install(SessionLocal, strategy=...)``; each transaction names the next tenant
    round-robin over 1, 10 or 1,000 tenant schemas.

``search_path_roles`` / ``translate_map_roles`` (``--tenant-roles``)
    the same with ``tenant_roles=True``: each transaction also runs as the tenant's role. All
    candidates then connect as a non-superuser login role made for the run.

Drivers: psycopg 3 (sync), psycopg 3 async and asyncpg. Candidates run interleaved in the same
process (see :mod:`benchmarks._harness`), so the ratio to ``plain`` is the result.

Run::

    python -m benchmarks overhead --dburl postgresql+psycopg://postgres@127.0.0.1/postgres
    python -m benchmarks overhead --ops select_pk --drivers psycopg --tenants 1 --n 2000
    python -m benchmarks overhead --ops select_pk --drivers psycopg --tenants 10 --tenant-roles
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ForeignKey
from sqlalchemy import MetaData
from sqlalchemy import String
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship
from sqlalchemy.orm import sessionmaker
from sqlalchemy.schema import CreateIndex
from sqlalchemy.schema import CreateTable

import sa_tenancy
from sa_tenancy._pgpath import _SET_TENANT_PATH
from sa_tenancy.lifecycle import TENANT_MARK
from sa_tenancy.testing import url_for_driver

from . import _harness

ROWS = 100  # items per schema
PARENTS = 20  # parents per schema, CHILDREN children each
CHILDREN = 5

OPS = ("select_pk", "insert", "update", "lazy_load")
DRIVERS = ("psycopg", "psycopg_async", "asyncpg")
TENANT_COUNTS = (1, 10, 1000)
CANDIDATES = ("plain", "translate_map", "search_path")
#: ``--tenant-roles``: the strategies with ``tenant_roles=True``.
ROLE_CANDIDATES = ("search_path_roles", "translate_map_roles")


class SetConfigStatement:
    """``search_path`` as its own statement after psycopg's BEGIN: one more round trip.

    How :class:`sa_tenancy.SearchPath` works on drivers other than psycopg, and how it worked
    on psycopg before the path travelled with ``BEGIN``: ``--set-config`` adds it as the
    candidate ``set_config``, to show what the shared round trip saves in the same run.
    """

    name = "set_config"

    def __init__(self) -> None:
        self.inner = sa_tenancy.SearchPath()

    def apply(self, connection: Any, schema: str | None) -> None:
        if schema is None:
            return
        path = self.inner.search_path(connection, schema)
        params = {"path": path, "schema": f'"{schema}"', "name": schema}
        row = connection.execute(_SET_TENANT_PATH, params).one()
        if not (row[1] and row[2]):
            raise sa_tenancy.UnknownSchema(schema)


#: ``--floor``: the least each strategy's mechanism can cost, without sa_tenancy's checks.
FLOORS = ("bare_map", "bare_map_path", "bare_path")


def bare_factory(engine: Engine, kind: str) -> Any:
    """A session factory whose ``after_begin`` does only the mechanism, no sa_tenancy.

    ``bare_map``: the translate map set in place (what SQLAlchemy's per-statement rendering of
    the map costs); ``bare_map_path``: that, plus the empty transaction-scoped path in psycopg's
    ``BEGIN`` message (the floor of ``translate_map``); ``bare_path``: ``BEGIN``, ``DISCARD
    TEMP`` and ``SET LOCAL search_path`` in one message, no existence check (the floor of
    ``search_path`` on a connection that already checked the tenant). No validation, no claim,
    no guard: the difference to the real strategy is sa_tenancy's own work.
    """
    from sa_tenancy import _psycopg

    factory = sessionmaker(engine, expire_on_commit=False)

    def after_begin(session: Any, transaction: Any, connection: Any) -> None:
        if transaction.nested:
            return
        schema = session.info["schema"]
        driver_connection = connection.connection.driver_connection
        if kind in ("bare_map", "bare_map_path"):
            connection.execution_options(schema_translate_map={None: schema})
        if kind == "bare_map_path":
            _psycopg.begin_with_path(connection, driver_connection, "", check=False)
        elif kind == "bare_path":
            path = f'"{schema}", pg_temp'
            _psycopg.begin_with_path(
                connection, driver_connection, path, check=False, discard_temp=True
            )

    event.listen(factory.class_, "after_begin", after_begin)
    return factory


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData()


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    value: Mapped[int]


class Parent(Base):
    __tablename__ = "parents"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    children: Mapped[list[Child]] = relationship(back_populates="parent")


class Child(Base):
    __tablename__ = "children"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("parents.id"), index=True)
    name: Mapped[str] = mapped_column(String(50))
    parent: Mapped[Parent] = relationship(back_populates="children")


def schema_script(engine: Engine, metadata: MetaData = Base.metadata) -> str:
    """DDL and seed rows for one schema, run under ``SET LOCAL search_path`` to that schema."""
    dialect = engine.dialect
    parts: list[str] = []
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        parts.extend(str(CreateIndex(ix).compile(dialect=dialect)) for ix in table.indexes)
    parts.append(
        f"INSERT INTO items (id, name, value) "
        f"SELECT g, 'item ' || g, g FROM generate_series(1, {ROWS}) AS g"
    )
    parts.append(
        f"INSERT INTO parents (id, name) SELECT g, 'parent ' || g "
        f"FROM generate_series(1, {PARENTS}) AS g"
    )
    parts.append(
        f"INSERT INTO children (id, parent_id, name) SELECT g, 1 + (g - 1) / {CHILDREN}, "
        f"'child ' || g FROM generate_series(1, {PARENTS * CHILDREN}) AS g"
    )
    for name in ("items", "parents", "children"):
        parts.append(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), 1000000)")
    return ";\n".join(parts)


def create_schemas(
    engine: Engine,
    schemas: Sequence[str],
    *,
    metadata: MetaData = Base.metadata,
    batch: int = 50,
    mark: bool = True,
) -> None:
    """Create ``schemas`` with ``metadata``'s tables and seed rows, ``batch`` per round trip.

    Fast set-up, not the thing measured: one multi-statement script per batch. Names come from
    the benchmark itself and are quoted with the dialect's identifier preparer. ``public`` is
    filled without being created.
    """
    script = schema_script(engine, metadata)
    quote = engine.dialect.identifier_preparer.quote_identifier
    with engine.connect() as conn:
        for start in range(0, len(schemas), batch):
            pieces = []
            for schema in schemas[start : start + batch]:
                q = quote(schema)
                if schema != "public":
                    pieces.append(f"CREATE SCHEMA {q}")
                    if mark:
                        pieces.append(f"COMMENT ON SCHEMA {q} IS '{TENANT_MARK}'")
                pieces.append(f"SET LOCAL search_path TO {q}")
                pieces.append(script)
            conn.exec_driver_sql(";\n".join(pieces))
            conn.commit()


# -- units of work -------------------------------------------------------------------------------


def select_pk(session: Any, i: int) -> None:
    session.get(Item, 1 + i % ROWS)


def insert(session: Any, i: int) -> None:
    session.add(Item(name="new", value=i))
    session.commit()


def update(session: Any, i: int) -> None:
    item = session.get(Item, 1 + i % ROWS)
    item.value = i
    session.commit()


def lazy_load(session: Any, i: int) -> None:
    parent = session.get(Parent, 1 + i % PARENTS)
    assert len(parent.children) == CHILDREN


async def aselect_pk(session: Any, i: int) -> None:
    await session.get(Item, 1 + i % ROWS)


async def ainsert(session: Any, i: int) -> None:
    session.add(Item(name="new", value=i))
    await session.commit()


async def aupdate(session: Any, i: int) -> None:
    item = await session.get(Item, 1 + i % ROWS)
    item.value = i
    await session.commit()


async def alazy_load(session: Any, i: int) -> None:
    parent = await session.get(Parent, 1 + i % PARENTS)
    children = await parent.awaitable_attrs.children
    assert len(children) == CHILDREN


SYNC_OPS: dict[str, Callable[[Any, int], None]] = {
    "select_pk": select_pk,
    "insert": insert,
    "update": update,
    "lazy_load": lazy_load,
}
ASYNC_OPS = {"select_pk": aselect_pk, "insert": ainsert, "update": aupdate, "lazy_load": alazy_load}


# -- candidates ----------------------------------------------------------------------------------


def sync_runner(
    factory: Any, op: Callable[[Any, int], None], tenants: Sequence[str]
) -> Callable[[int], None]:
    counter = itertools.count()
    count = len(tenants)

    def run(n: int) -> None:
        for _ in range(n):
            i = next(counter)
            with factory(info={"schema": tenants[i % count]}) as session:
                op(session, i)

    return run


def async_runner(
    loop: asyncio.AbstractEventLoop, factory: Any, op: Any, tenants: Sequence[str]
) -> Callable[[int], None]:
    counter = itertools.count()
    count = len(tenants)

    async def batch(n: int) -> None:
        for _ in range(n):
            i = next(counter)
            async with factory(info={"schema": tenants[i % count]}) as session:
                await op(session, i)

    def run(n: int) -> None:
        loop.run_until_complete(batch(n))

    return run


class Candidates:
    """One engine and session factory per candidate, for one driver."""

    def __init__(
        self,
        url: str,
        driver: str,
        loop: asyncio.AbstractEventLoop,
        names: Sequence[str] = CANDIDATES,
        roles: sa_tenancy.TenantRoles | None = None,
    ) -> None:
        self.driver = driver
        self.loop = loop
        self.is_async = driver != "psycopg"
        self.engines: list[Any] = []
        self.factories: dict[str, Any] = {}
        for name in names:
            if self.is_async:
                from sqlalchemy.ext.asyncio import async_sessionmaker
                from sqlalchemy.ext.asyncio import create_async_engine

                engine: Any = create_async_engine(
                    url_for_driver(url, driver), pool_size=1, max_overflow=0
                )
                factory: Any = async_sessionmaker(engine, expire_on_commit=False)
            else:
                engine = create_engine(url, pool_size=1, max_overflow=0)
                factory = sessionmaker(engine, expire_on_commit=False)
            if name in FLOORS:
                factory = bare_factory(engine, name)
            elif name in ROLE_CANDIDATES:
                base = name.removesuffix("_roles")
                sa_tenancy.install(factory, strategy=base, tenant_roles=roles or True)
            elif name != "plain":
                strategy = SetConfigStatement() if name == "set_config" else name
                sa_tenancy.install(factory, strategy=strategy)
            self.engines.append(engine)
            self.factories[name] = factory

    def runners(self, op: str, tenants: Sequence[str]) -> dict[str, Callable[[int], None]]:
        result = {}
        for name, factory in self.factories.items():
            names = ["public"] if name == "plain" else tenants
            if self.is_async:
                result[name] = async_runner(self.loop, factory, ASYNC_OPS[op], names)
            else:
                result[name] = sync_runner(factory, SYNC_OPS[op], names)
        return result

    def dispose(self) -> None:
        for engine in self.engines:
            if self.is_async:
                self.loop.run_until_complete(engine.dispose())
            else:
                engine.dispose()


def _csv(kind: Callable[[str], Any], choices: Sequence[Any]) -> Callable[[str], list[Any]]:
    def parse(value: str) -> list[Any]:
        items = [kind(v) for v in value.split(",") if v]
        bad = [v for v in items if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(choices)}")
        return items

    return parse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks overhead", description=__doc__.split("\n")[0]
    )
    _harness.add_common_args(parser, n=10, repeat=100)
    parser.add_argument("--ops", type=_csv(str, OPS), default=list(OPS))
    parser.add_argument("--drivers", type=_csv(str, DRIVERS), default=list(DRIVERS))
    parser.add_argument(
        "--tenants", type=_csv(int, (1, 10, 100, 1000)), default=list(TENANT_COUNTS)
    )
    parser.add_argument(
        "--set-config",
        action="store_true",
        help="add the candidate set_config: search_path as a statement of its own",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="add the candidates " + ", ".join(FLOORS) + ": each strategy's mechanism alone, "
        "without sa_tenancy's checks (psycopg only)",
    )
    parser.add_argument(
        "--tenant-roles",
        action="store_true",
        help="add the candidates " + ", ".join(ROLE_CANDIDATES) + " (tenant_roles=True); every "
        "candidate then connects as a non-superuser login role made for the run",
    )
    parser.add_argument(
        "--budget", type=float, default=60.0, help="seconds per comparison, at most (default 60)"
    )
    args = _harness.parse(parser, argv)

    env = _harness.environment(args.dburl)
    print(f"# overhead — {_harness.format_environment(env)}")
    print(f"# n={args.n} transactions per sample, repeat={args.repeat}")
    results: list[dict[str, Any]] = []
    with _harness.scratch_database(args.dburl) as url:
        setup = create_engine(url)
        tenants = [f"bench_{i:05d}" for i in range(max(args.tenants))]
        create_schemas(setup, ["public", *tenants])
        # autocommit: one transaction per table, not every table locked at once
        with setup.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text("ANALYZE"))
        setup.dispose()
        login = contextlib.ExitStack()
        roles = None
        if args.tenant_roles:
            from ._tenant_roles import login_with_roles

            url, roles = login.enter_context(login_with_roles(url, tenants))
        loop = asyncio.new_event_loop()
        try:
            for driver in args.drivers:
                names: tuple[str, ...] = CANDIDATES
                if args.set_config:
                    names = (*names, "set_config")
                if args.floor and driver == "psycopg":
                    names = (*names, *FLOORS)
                if args.tenant_roles:
                    names = (*names, *ROLE_CANDIDATES)
                candidates = Candidates(url, driver, loop, names, roles)
                try:
                    for count in args.tenants:
                        for op in args.ops:
                            measured = _harness.compare(
                                candidates.runners(op, tenants[:count]),
                                baseline="plain",
                                n=args.n,
                                repeat=args.repeat,
                                budget=args.budget,
                            )
                            title = f"{driver}, {op}, {count} tenant(s)"
                            print()
                            print(_harness.format_table(title, measured))
                            results.append(
                                {"driver": driver, "op": op, "tenants": count, "rows": measured}
                            )
                finally:
                    candidates.dispose()
        finally:
            loop.close()
            login.close()
    print()
    print(summary(results))
    if args.json:
        _harness.write_json(args.json, env=env, results=results)
    return 0


def summary(results: list[dict[str, Any]]) -> str:
    """One line per (driver, tenants, op): each strategy's ratios to the plain session.

    ``ratio`` is median ÷ plain median, ``paired`` the median of same-round ratios (steadier
    when the machine's load changes during the run), ``p10`` the ratio of 10th percentiles,
    ``cpu`` the client CPU time ratio.
    """
    names = [m.name for m in results[0]["rows"] if m.name != "plain"] if results else []
    lines = [
        "**Summary: time per transaction ÷ plain session (ratio / paired / p10 / cpu)**",
        "",
        "| driver | tenants | op | " + " | ".join(names) + " |",
        "|---|---:|---|" + "---:|" * len(names),
    ]
    for r in results:
        cells = []
        for name in names:
            m = next(m for m in r["rows"] if m.name == name)
            cells.append(f"{m.ratio:.3f} / {m.paired:.3f} / {m.p10_ratio:.3f} / {m.cpu_ratio:.3f}")
        lines.append(f"| {r['driver']} | {r['tenants']} | {r['op']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
